"""Training and evaluation loops for the lab's small models.

Data sets are small enough to sit on the device as whole tensors, so batches are plain index
slices (no ``DataLoader``). Everything random -- weight init aside, which the model builders
seed -- is driven by ``seed``: the shuffling order by a CPU ``torch.Generator``, dropout masks
by the global generators, reseeded inside :func:`torch.random.fork_rng` so the caller's random
state is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bncourse.lab.data import Dataset

__all__ = ["History", "default_device", "train", "evaluate", "batches"]


def default_device() -> torch.device:
    """CUDA when PyTorch sees a GPU, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class History:
    """What :func:`train` records, one entry per epoch.

    ``train_loss`` and ``train_acc`` are averaged over the epoch's batches in training mode
    (dropout on, batch statistics); ``test_acc`` is measured in evaluation mode after the epoch.
    ``seconds`` is the wall-clock time of the whole run, ``cpu_seconds`` the CPU time of this
    process (less sensitive to other programs competing for the CPU).
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> History:
        return cls(**data)


@contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def batches(
    n: int,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> list[Tensor]:
    """Index tensors (on the CPU) of one epoch's mini-batches.

    A final batch of a single sample is always dropped, because batch norm cannot train on it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(
            f"batch_size must be an int >= 2 (batch norm needs 2+), got {batch_size!r}"
        )
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    chunks = list(order.split(batch_size))
    if chunks and (len(chunks[-1]) < 2 or (drop_last and len(chunks[-1]) < batch_size)):
        chunks.pop()
    return chunks


def train(
    model: nn.Module,
    data: Dataset,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    shuffle: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    drop_last: bool = False,
) -> History:
    """Train ``model`` in place with SGD (``momentum``, ``weight_decay``) and cross-entropy.

    ``seed`` fixes the shuffling order and the dropout/noise masks (on a CPU the run is then
    exactly reproducible); ``shuffle=False`` visits the training set in the same fixed order every
    epoch. ``device=None`` picks CUDA when available. ``progress`` shows a tqdm bar over epochs.
    Returns a :class:`History`; the model is left in evaluation mode on ``device``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    data = data.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(seed)
    history = History(device=str(device))
    start, cpu_start = time.perf_counter(), time.process_time()
    with _seeded_rng(seed, device):
        bar = tqdm(range(epochs), desc="training", disable=not progress, leave=False)
        for _ in bar:
            model.train()
            total_loss, correct, seen = 0.0, 0, 0
            for idx in batches(data.num_train, batch_size, shuffle, order_rng, drop_last):
                idx = idx.to(device)
                x, y = data.x_train[idx], data.y_train[idx]
                logits = model(x)
                loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            history.train_loss.append(total_loss / seen)
            history.train_acc.append(correct / seen)
            history.test_acc.append(evaluate(model, data, split="test"))
            bar.set_postfix(
                loss=f"{history.train_loss[-1]:.3f}", test=f"{history.test_acc[-1]:.3f}"
            )
    model.eval()
    history.seconds = time.perf_counter() - start
    history.cpu_seconds = time.process_time() - cpu_start
    return history


@contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN running statistics) and the train/eval flags on exit."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        for name, m in model.named_modules():
            m.training = modes[name]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    mode: str = "eval",
    split: str = "test",
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """Accuracy of ``model`` on the ``"train"`` or ``"test"`` split of ``data``.

    ``mode="eval"`` is ordinary inference: dropout off, BN uses its running statistics.
    ``mode="train"`` evaluates as the network behaved while training: dropout on (masks drawn from
    ``seed``) and BN normalizing each batch of ``batch_size`` with that batch's own statistics.
    The model's BN running statistics and its train/eval flags are left exactly as they were.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else default_device()
    device = torch.device(device)
    x_all, y_all = data.split(split)
    correct = 0
    with _buffers_kept(model), _seeded_rng(seed, device):
        model.train(mode == "train")
        # In train mode batches must keep >= 2 samples for BN; shuffle=False keeps it deterministic.
        chunks = batches(len(y_all), batch_size, shuffle=False) if mode == "train" else None
        if chunks is None:
            chunks = list(torch.arange(len(y_all)).split(batch_size))
        seen = 0
        for idx in chunks:
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    return correct / seen
