"""Train the missing trials of a grid experiment on several CPU cores before the experiment runs.

:func:`bncourse.lab.experiments.run_experiment` trains its trials one after the other. On a cold
cache, :func:`prefetch` first lists the trials the experiment will ask for, and trains those not
cached yet in worker processes (each on one thread, as ``run_trial`` does by default), writing
them to the same cache; the experiment then reads every trial back. Results are the same as a
sequential run: each trial is seeded by its own configuration and computed with the same code.
This module is not imported by the experiments, so it does not enter the cache key.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bncourse.lab.cache import cache_key, default_cache_dir
from bncourse.lab.experiments import EXPERIMENTS, _merge, run_trial, trial_config
from bncourse.lab.train import default_device

__all__ = [
    "grid_trials",
    "missing_trials",
    "prefetch",
    "default_workers",
    "resolve_workers",
    "in_processes",
]


def default_workers() -> int:
    """``BNCOURSE_WORKERS`` if set, else the number of CPU cores this process may use."""
    env = os.environ.get("BNCOURSE_WORKERS")
    if env:
        value = int(env)
        if value < 1:
            raise ValueError(f"BNCOURSE_WORKERS must be a positive integer, got {env!r}")
        return value
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def resolve_workers(workers: int | None) -> int:
    """``workers``, or :func:`default_workers` for None; a ValueError unless a positive int."""
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return workers


def in_processes(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None, chunksize: int = 1
) -> list[Any]:
    """``[fn(item) for item in items]``, on ``workers`` spawned processes where there are several.

    ``workers`` defaults to :func:`default_workers`; with one worker, or fewer than two items,
    everything runs here. ``fn`` must be importable (a module-level function).
    """
    workers = resolve_workers(workers)
    if workers == 1 or len(items) < 2:
        return [fn(item) for item in items]
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=context) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def grid_trials(name: str, overrides: dict | None = None) -> list[dict]:
    """The trial configurations the grid experiment ``name`` runs, in its order."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}")
    config = _merge(EXPERIMENTS[name].defaults, overrides or {})
    if "cases" not in config or "seeds" not in config:
        raise ValueError(f"experiment {name!r} is not a grid of cases and seeds")
    base = trial_config(**config["trial"])
    out = []
    for case in config["cases"]:
        changes = {k: v for k, v in case.items() if k != "label"}
        out += [trial_config(**{**base, **changes, "seed": s}) for s in config["seeds"]]
    return out


def _cache_path(config: dict, cache_dir: str | os.PathLike | None) -> Path:
    key = cache_key("trial", config, device_type=default_device().type)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"trial-{key[:20]}.json"


def uncached(configs: list[dict], path: Callable[[dict], Path]) -> list[dict]:
    """The configurations whose cache file ``path(config)`` does not exist yet (duplicates once)."""
    seen, out = set(), []
    for config in configs:
        where = path(config)
        if where not in seen and not where.is_file():
            seen.add(where)
            out.append(config)
    return out


def missing_trials(configs: list[dict], cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """The configurations among ``configs`` that have no cached result yet (duplicates once)."""
    return uncached(configs, lambda config: _cache_path(config, cache_dir))


def _train(args: tuple[dict, str | None]) -> None:
    config, cache_dir = args
    run_trial(config, cache_dir=cache_dir)


def prefetch(
    name: str,
    overrides: dict | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> int:
    """Train the uncached trials of ``name`` on ``workers`` processes; return how many ran.

    With one worker, or nothing missing, nothing is started: the experiment trains what it needs.
    Only CPU runs are spread over processes (one GPU is better used by one process).
    """
    workers = resolve_workers(workers)
    todo = missing_trials(grid_trials(name, overrides), cache_dir)
    if workers == 1 or len(todo) < 2 or default_device().type != "cpu":
        return 0
    folder = None if cache_dir is None else str(cache_dir)
    in_processes(_train, [(c, folder) for c in todo], workers)
    return len(todo)
