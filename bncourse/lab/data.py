"""Data sets for the lab: scikit-learn's digits (embedded, no download), a synthetic generator,
and a registry through which larger data (for example CIFAR-10 from your own copy) plugs in.

Every loader returns a :class:`Dataset`: train and test tensors, nothing else. Models, training,
probes and experiments only ever see a :class:`Dataset`, so a new data set needs one loader and
one call to :func:`register_dataset`, and no change anywhere else::

    from bncourse.lab.data import Dataset, register_dataset

    def my_loader(seed: int = 0, **options) -> Dataset:
        ...  # read your files, return Dataset(name="mine", x_train=..., ...)

    register_dataset("mine", my_loader)
    data = load_dataset("mine")
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "load_dataset",
    "register_dataset",
    "available_datasets",
    "load_digits",
    "make_synthetic",
    "load_cifar10",
]


@dataclass(frozen=True)
class Dataset:
    """A classification data set as four tensors.

    ``x_train``/``x_test`` are float32 with shape ``(N, *input_shape)``: ``(N, C, H, W)`` for
    images, ``(N, F)`` for feature vectors. ``y_train``/``y_test`` are int64 labels in
    ``[0, num_classes)``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(f"x_{split} and y_{split} must be torch.Tensors")
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has {x.shape[0]} samples but y_{split} has {y.shape[0]} labels"
                )
            if y.dim() != 1:
                raise ValueError(
                    f"y_{split} must be a 1-D tensor of labels, got shape {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train and test inputs differ in shape: {tuple(self.x_train.shape[1:])} vs "
                f"{tuple(self.x_test.shape[1:])}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with all four tensors on ``device``."""
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
        )

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the ``"train"`` or ``"test"`` split."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset]) -> None:
    """Make ``load_dataset(name, **options)`` call ``loader(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    _LOADERS[name] = loader


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(_LOADERS)


def load_dataset(name: str = "digits", **options) -> Dataset:
    """Load a registered data set by name (``"digits"``, ``"synthetic"``, ``"cifar10"``, ...).

    Keyword options go to the loader, for example ``load_dataset("digits", seed=1)`` or
    ``load_dataset("cifar10", root="~/data/cifar-10-batches-py")``.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(available_datasets())}")
    return _LOADERS[name](**options)


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    return order[n_test:], order[:n_test]


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits by the training set's overall mean and standard deviation."""
    mean, std = train.mean(), train.std()
    return (train - mean) / std, (test - mean) / std


def digits_file() -> Path:
    """The CSV of scikit-learn's digits (64 pixels and the label per row), as scikit-learn ships it.

    Found without importing scikit-learn, whose ``sklearn.datasets`` takes about a second to
    import: each graded notebook loads the digits in a fresh kernel.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the digits data set ships with scikit-learn: pip install scikit-learn"
        )
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shape ``(N, 1, 8, 8)``.

    The images ship inside the scikit-learn package, so nothing is downloaded. ``seed`` fixes the
    random train/test split; pixels are standardized with the training split's mean and std.
    """
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    train, test = _split_indices(len(labels), test_fraction, seed)
    x_train, x_test = _standardize(images[train], images[test])
    return Dataset(
        "digits",
        torch.from_numpy(np.ascontiguousarray(x_train)),
        torch.from_numpy(labels[train]),
        torch.from_numpy(np.ascontiguousarray(x_test)),
        torch.from_numpy(labels[test]),
        10,
    )


def make_synthetic(
    num_samples: int = 2000,
    num_features: int = 20,
    num_classes: int = 4,
    seed: int = 0,
    test_fraction: float = 0.25,
    class_sep: float = 1.0,
) -> Dataset:
    """Gaussian classes around random centres in ``num_features`` dimensions, shape ``(N, F)``.

    Class ``k`` is ``N(class_sep * m_k, I)`` with centres ``m_k ~ N(0, I)``; a larger
    ``class_sep`` makes the problem easier. Fully determined by ``seed``.
    """
    for arg, value, low in (
        ("num_samples", num_samples, 4),
        ("num_features", num_features, 1),
        ("num_classes", num_classes, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, num_features)) * class_sep
    labels = rng.integers(0, num_classes, size=num_samples)
    points = centres[labels] + rng.standard_normal((num_samples, num_features))
    train, test = _split_indices(num_samples, test_fraction, seed)
    x_train, x_test = _standardize(points[train], points[test])
    return Dataset(
        "synthetic",
        torch.from_numpy(x_train.astype(np.float32)),
        torch.from_numpy(labels[train].astype(np.int64)),
        torch.from_numpy(x_test.astype(np.float32)),
        torch.from_numpy(labels[test].astype(np.int64)),
        num_classes,
    )


def load_cifar10(root: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    """CIFAR-10 from your own copy of the "python version" (``cifar-10-batches-py``).

    ``root`` is the folder holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``; it
    defaults to the ``BNCOURSE_CIFAR10`` environment variable. Nothing is downloaded. Images come
    as ``(N, 3, 32, 32)``, standardized per channel with the training set's statistics.
    ``limit`` keeps only the first ``limit`` training and test images (handy on a CPU).
    """
    root = root if root is not None else os.environ.get("BNCOURSE_CIFAR10")
    if root is None:
        raise ValueError(
            "root must name your cifar-10-batches-py folder (or set BNCOURSE_CIFAR10); "
            "the course does not download data"
        )
    folder = Path(root).expanduser()
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"root={str(folder)!r} lacks the CIFAR-10 files {missing}")

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in files:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="latin1")
            xs.append(np.asarray(batch["data"], dtype=np.float32).reshape(-1, 3, 32, 32) / 255)
            ys.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]

    x_train, y_train = read(names)
    x_test, y_test = read(["test_batch"])
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    return Dataset(
        "cifar10",
        torch.from_numpy((x_train - mean) / std),
        torch.from_numpy(y_train),
        torch.from_numpy((x_test - mean) / std),
        torch.from_numpy(y_test),
        10,
    )


register_dataset("digits", load_digits)
register_dataset("synthetic", make_synthetic)
register_dataset("cifar10", load_cifar10)
