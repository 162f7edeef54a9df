"""Trials of the cooperation chapter: a BN network on a training set of chosen size, one kind of
noise in one place, trained for a fixed number of SGD steps, measured, and cached.

A trial is a JSON configuration (see :data:`COOP_TRIAL`). ``n_train`` keeps a class-stratified
subset of the training split (drawn from the trial's seed, so paired configurations share it);
``steps`` fixes the optimisation budget, so that a network trained on 50 images gets as many
updates as one trained on all of them. ``placement`` is one of the placements of
:mod:`bncourse.lab.models`; ``noise`` swaps every dropout layer for Gaussian dropout of the same
``p`` or for Uout of half-width ``beta``. With ``geometry`` the trial also measures the case-(b)
width mechanism (:func:`bncourse.lab.geometry.measure_geometry`).

:func:`run_trials` trains the missing trials of a list on every CPU core, then reads all of them
from the cache (:mod:`bncourse.lab.cache`), keyed by this module's code and what it imports::

    from bncourse.lab.coop_trials import run_trials, trial
    results = run_trials([trial(n_train=100, seed=s) for s in range(10)])
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bncourse import nn as bnn
from bncourse.lab.cache import cache_key, cached, default_cache_dir, package_hash
from bncourse.lab.data import Dataset, load_dataset
from bncourse.lab.geometry import measure_geometry
from bncourse.lab.models import mlp
from bncourse.lab.probes import measure_variance_shift
from bncourse.lab.train import batches, default_device, evaluate

__all__ = [
    "COOP_TRIAL",
    "NOISES",
    "trial",
    "subsample",
    "build_network",
    "train_steps",
    "run_trial",
    "run_trials",
]

#: The trial every configuration of the chapter starts from. ``n_train = 0``: the whole split.
COOP_TRIAL: dict = {
    "dataset": "digits",
    "dataset_seed": 0,
    "n_train": 0,
    "depth": 3,
    "width": 128,
    "placement": "none",
    "noise": "bernoulli",
    "p": 0.0,
    "beta": 0.0,
    "steps": 120,
    "batch_size": 32,
    "lr": 0.05,
    "momentum": 0.9,
    "geometry": False,
    "seed": 0,
}

#: Kinds of noise a trial can use in place of (Bernoulli) dropout.
NOISES = ("bernoulli", "gaussian", "uout")

_NAME = "coop-trial"
_ENTRY = ("bncourse.lab.coop_trials",)


def trial(**changes) -> dict:
    """:data:`COOP_TRIAL` with ``changes``; unknown keys and unknown noises are a ValueError."""
    unknown = set(changes) - set(COOP_TRIAL)
    if unknown:
        raise ValueError(f"unknown trial settings {sorted(unknown)}; known: {sorted(COOP_TRIAL)}")
    config = {**COOP_TRIAL, **changes}
    if config["noise"] not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {config['noise']!r}")
    return config


def subsample(data: Dataset, n: int, seed: int) -> Dataset:
    """The first ``n`` images of a class-stratified random order of the training split.

    Classes take turns (one image of each class, then the next of each, ...), so every class is
    present as soon as ``n`` reaches the number of classes. The test split is kept whole.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= data.num_train:
        raise ValueError(f"n must be an int in [2, {data.num_train}], got {n!r}")
    rng = np.random.default_rng(seed)
    labels = data.y_train.cpu().numpy()
    per_class = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    rank = np.empty(len(labels))
    for members in per_class:
        rank[members] = np.arange(len(members)) + rng.random(len(members)) * 0.5
    keep = torch.from_numpy(np.sort(np.argsort(rank, kind="stable")[:n]))
    return Dataset(
        data.name,
        data.x_train[keep],
        data.y_train[keep],
        data.x_test,
        data.y_test,
        data.num_classes,
    )


def build_network(config: dict, data: Dataset) -> nn.Sequential:
    """The MLP of ``config`` with every dropout layer replaced by the configured kind of noise."""
    model = mlp(
        data.input_shape,
        data.num_classes,
        depth=config["depth"],
        width=config["width"],
        placement=config["placement"],
        p=config["p"],
        beta=config["beta"],
        seed=config["seed"],
    )
    if config["noise"] == "bernoulli":
        return model
    for name, module in list(model.named_children()):
        if isinstance(module, nn.Dropout):
            noise = (
                bnn.GaussianDropout(config["p"])
                if config["noise"] == "gaussian"
                else bnn.Uout(config["beta"])
            )
            setattr(model, name, noise)
    return model


def train_steps(
    model: nn.Module,
    data: Dataset,
    steps: int,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
) -> float:
    """Train ``model`` in place for ``steps`` SGD steps (cross-entropy); return the seconds taken.

    Batches come from reshuffled passes over the training split, full batches only (the rest of
    a pass waits for the next shuffle); ``seed`` fixes the order and the noise. The model is left in evaluation mode.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    start, done = time.perf_counter(), 0
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        while done < steps:
            size = min(batch_size, data.num_train)
            # full batches only: a small remainder batch would give BN noisy statistics
            for idx in batches(data.num_train, size, True, order, drop_last=True):
                idx = idx.to(device)
                loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                if done == steps:
                    break
    model.eval()
    return time.perf_counter() - start


def _compute(config: dict) -> dict:
    data = load_dataset(config["dataset"], seed=config["dataset_seed"])
    if config["n_train"]:
        data = subsample(data, config["n_train"], config["seed"])
    data = data.to(default_device())
    model = build_network(config, data).to(default_device())
    seconds = train_steps(
        model,
        data,
        config["steps"],
        config["batch_size"],
        config["lr"],
        config["momentum"],
        config["seed"],
    )
    out = {
        "acc": {
            "test": evaluate(model, data, split="test"),
            "train": evaluate(model, data, split="train"),
        },
        "shift": [row.to_dict() for row in measure_variance_shift(model, data, split="train")],
        "train_seconds": seconds,
        "n_train": data.num_train,
        "n_test": data.num_test,
    }
    if config["geometry"]:
        out["geometry"] = [row.to_dict() for row in measure_geometry(model, data, split="train")]
    return out


def _package() -> str:
    return package_hash(entry_modules=_ENTRY)


def _path(config: dict, cache_dir: str | os.PathLike | None) -> Path:
    key = cache_key(_NAME, config, package=_package(), device_type=default_device().type)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{_NAME}-{key[:20]}.json"


def run_trial(config: dict, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """Train and measure one configuration (on one CPU thread), or read it from the cache."""
    config = trial(**config)
    device_type = default_device().type
    threads = torch.get_num_threads()
    if device_type == "cpu":
        torch.set_num_threads(1)  # tiny models: more threads only add overhead
    try:
        result = cached(
            _NAME,
            config,
            _compute,
            cache_dir=cache_dir,
            device_type=device_type,
            package=_package(),
        )
    finally:
        torch.set_num_threads(threads)
    return result.data


def _run(args: tuple[dict, str | None]) -> None:
    run_trial(args[0], cache_dir=args[1])


def run_trials(
    configs: list[dict],
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> list[dict]:
    """Results of ``configs`` in order; uncached ones are trained first on ``workers`` processes.

    ``workers`` defaults to :func:`bncourse.lab.parallel.default_workers` (every CPU core, or
    ``BNCOURSE_WORKERS``); on a GPU, or with one worker, trials run one after the other.
    """
    from bncourse.lab.parallel import in_processes, resolve_workers, uncached

    configs = [trial(**c) for c in configs]
    workers = resolve_workers(workers)
    todo = uncached(configs, lambda c: _path(c, cache_dir))
    if workers > 1 and len(todo) > 1 and default_device().type == "cpu":
        folder = None if cache_dir is None else str(cache_dir)
        in_processes(_run, [(c, folder) for c in todo], workers, chunksize=4)
    return [run_trial(c, cache_dir=cache_dir) for c in configs]
