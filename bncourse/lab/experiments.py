"""Named experiments of the variance-shift chapters, with results cached on disk.

The unit of work is a *trial*: build one model, train it, then measure it -- accuracies in both
modes, the per-layer variance shift, and the same after recalibrating BN with dropout off. A
trial is fully described by a JSON configuration (see :data:`BASE_TRIAL`) and cached under that
configuration (see :mod:`bncourse.lab.cache`), so experiments that share a trial train it once.

A *named experiment* is a grid of trials (or of Monte Carlo estimates) plus its aggregation;
:func:`run_experiment` runs it and caches the aggregate as well::

    from bncourse.lab.experiments import run_experiment
    result = run_experiment("drop_rate_sweep")      # trains on first use, reads the cache after
    result.data["rows"]

Override any part of an experiment's configuration with ``overrides`` (for example
``{"trial": {"epochs": 5}, "seeds": [0]}``); a different configuration is a different cache entry.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm

from bncourse import theory
from bncourse.lab.cache import CachedResult, cached
from bncourse.lab.data import load_dataset
from bncourse.lab.models import build_model
from bncourse.lab.probes import measure_variance_shift, predicted_first_layer_shift
from bncourse.lab.recalibrate import recalibrate_bn
from bncourse.lab.simulate import simulate_shift
from bncourse.lab.train import default_device, evaluate, train

__all__ = [
    "BASE_TRIAL",
    "EXPERIMENTS",
    "MANY_SEEDS",
    "run_trial",
    "run_experiment",
    "experiment_names",
    "mean_std",
]

#: The trial every experiment starts from: a 6-block MLP on the digits, trained for 15 epochs.
BASE_TRIAL: dict = {
    "dataset": "digits",
    "dataset_seed": 0,
    "model": "mlp",
    "depth": 6,
    "width": 128,
    "placement": "before_bn",
    "p": 0.3,
    "beta": 0.1,
    "epochs": 15,
    "batch_size": 64,
    "lr": 0.02,
    "momentum": 0.9,
    "shuffle": True,
    "seed": 0,
}


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit PyTorch's CPU threads for tiny models, where more threads only add overhead."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute_trial(config: dict) -> dict:
    data = load_dataset(config["dataset"], seed=config["dataset_seed"])
    model = build_model(
        config["model"],
        data.input_shape,
        data.num_classes,
        depth=config["depth"],
        width=config["width"],
        placement=config["placement"],
        p=config["p"],
        beta=config["beta"],
        seed=config["seed"],
    )
    history = train(
        model,
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        momentum=config["momentum"],
        seed=config["seed"],
        shuffle=config["shuffle"],
        progress=False,
    )
    acc = {
        "test": evaluate(model, data, split="test"),
        "train": evaluate(model, data, split="train"),
        "train_trainmode": evaluate(
            model, data, split="train", mode="train", batch_size=config["batch_size"]
        ),
    }
    shift = [row.to_dict() for row in measure_variance_shift(model, data, split="train")]
    first = None
    if config["placement"] in ("before_bn", "uout") and (config["p"] > 0 or config["beta"] > 0):
        first = predicted_first_layer_shift(model, data, split="train")
    start = time.perf_counter()
    recalibrate_bn(model, data, split="train")
    recal_seconds = time.perf_counter() - start
    acc["test_recal"] = evaluate(model, data, split="test")
    acc["train_recal"] = evaluate(model, data, split="train")
    shift_recal = [row.to_dict() for row in measure_variance_shift(model, data, split="train")]
    return {
        "acc": acc,
        "shift": shift,
        "shift_recal": shift_recal,
        "first_layer_theory": first,
        "history": history.to_dict(),
        "train_seconds": history.seconds,
        "train_cpu_seconds": history.cpu_seconds,
        "recal_seconds": recal_seconds,
    }


def trial_config(**changes) -> dict:
    """:data:`BASE_TRIAL` with ``changes`` applied; unknown keys are a ValueError."""
    unknown = set(changes) - set(BASE_TRIAL)
    if unknown:
        raise ValueError(f"unknown trial settings {sorted(unknown)}; known: {sorted(BASE_TRIAL)}")
    return {**BASE_TRIAL, **changes}


def run_trial(
    config: dict,
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    threads: int | None = 1,
) -> CachedResult:
    """Train and measure one configuration (see :data:`BASE_TRIAL`), or read it from the cache."""
    config = trial_config(**config)
    device_type = default_device().type
    with _threads(threads if device_type == "cpu" else None):
        return cached(
            "trial",
            config,
            _compute_trial,
            cache_dir=cache_dir,
            refresh=refresh,
            device_type=device_type,
        )


def mean_std(values: list[float]) -> dict:
    """``{"mean", "std", "n", "values"}``; ``std`` is the sample standard deviation (0 for n=1)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must not be empty")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values), "values": values}


# --- named experiments ----------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """A named experiment: its default configuration and the function that runs it."""

    name: str
    description: str
    defaults: dict
    run: Callable[[dict, Callable[[dict], dict], bool], dict]


def _trials(grid: list[dict], run: Callable[[dict], dict], progress: bool, desc: str) -> list[dict]:
    out = []
    for changes in tqdm(grid, desc=desc, disable=not progress, leave=False):
        out.append({"config": changes, **run(changes)})
    return out


def _summarize(trials: list[dict]) -> dict:
    """Mean/std over seeds of every accuracy and of every layer's statistic."""
    accs = {k: mean_std([t["acc"][k] for t in trials]) for k in trials[0]["acc"]}
    layers = len(trials[0]["shift"])
    shift = [mean_std([t["shift"][i]["statistic"] for t in trials]) for i in range(layers)]
    shift_recal = [
        mean_std([t["shift_recal"][i]["statistic"] for t in trials]) for i in range(layers)
    ]
    first = None
    if all(t.get("first_layer_theory") for t in trials):
        first = mean_std([t["first_layer_theory"]["statistic"] for t in trials])
    return {
        "acc": accs,
        "shift": shift,
        "shift_recal": shift_recal,
        "first_layer_theory": first,
        "train_seconds": mean_std([t["train_seconds"] for t in trials]),
        "train_cpu_seconds": mean_std([t["train_cpu_seconds"] for t in trials]),
    }


def _grid_experiment(cases_key: str) -> Callable[[dict, Callable[[dict], dict], bool], dict]:
    """An experiment that runs every case of ``config[cases_key]`` for every seed."""

    def run(config: dict, trial: Callable[[dict], dict], progress: bool) -> dict:
        rows = []
        for case in config[cases_key]:
            label = case.get("label")
            changes = {k: v for k, v in case.items() if k != "label"}
            grid = [{**config["trial"], **changes, "seed": s} for s in config["seeds"]]
            trials = _trials(grid, trial, progress, desc=label or str(changes))
            rows.append({"label": label, "case": changes, **_summarize(trials), "trials": trials})
        return {"rows": rows}

    return run


def _monte_carlo(config: dict, trial: Callable[[dict], dict], progress: bool) -> dict:
    """Monte Carlo estimates next to the closed forms of :mod:`bncourse.theory`."""
    n, seed = config["n_samples"], config["seed"]
    points = []
    jobs = []
    for noise in ("dropout", "gaussian"):
        for mean in config["means"]:
            for p in config["drop_rates"]:
                jobs.append({"noise": noise, "strength": p, "mean": mean})
    for mean in config["means"]:
        for beta in config["betas"]:
            jobs.append({"noise": "uout", "strength": beta, "mean": mean})
    for rho in config["rhos"]:
        for k in config["d_cos2"]:
            jobs.append(
                {
                    "noise": "dropout",
                    "strength": config["weight_layer_p"],
                    "mean": config["weight_layer_mean"],
                    "rho": rho,
                    "d": config["d"],
                    "d_cos2": k,
                }
            )
    for i, job in enumerate(tqdm(jobs, desc="Monte Carlo", disable=not progress, leave=False)):
        samples = config["weight_layer_n_samples"] if "d" in job else n
        est = simulate_shift(**job, n_samples=samples, seed=seed + i)
        k = job.get("d_cos2", 1.0) if job.get("d", 1) > 1 else 1.0
        args = (job["mean"], 1.0, job.get("rho", 0.0), k)
        if job["noise"] == "uout":
            exact = theory.uout_shift(job["strength"], *args)
        else:
            exact = theory.dropout_shift(job["strength"], *args)
        points.append({**job, "ratio": est.ratio, "ratio_se": est.ratio_se, "theory": exact})
    return {"points": points}


EXPERIMENTS: dict[str, Experiment] = {}


def _register(name: str, description: str, defaults: dict, run) -> None:
    EXPERIMENTS[name] = Experiment(name, description, defaults, run)


_SEEDS = [0, 1, 2]
#: Seeds of the experiments whose comparisons the book tests (see bncourse.lab.stats): a run of
#: the base network costs about a second, so ten seeds give t intervals that answer the question.
MANY_SEEDS = list(range(10))

_register(
    "monte_carlo_shift",
    "Simulated variance shift of dropout, Gaussian dropout and Uout, with and without a weight layer",
    {
        "n_samples": 50_000,
        "seed": 0,
        "drop_rates": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "means": [0.0, 1.0],
        "betas": [0.1, 0.5, 1.0, 1.5, 2.0],
        "weight_layer_p": 0.5,
        "weight_layer_mean": 0.0,
        "rhos": [0.0, 0.1, 0.3],
        "d": 32,
        "d_cos2": [1.0, 3.0, 10.0, 30.0],
        "weight_layer_n_samples": 20_000,
    },
    _monte_carlo,
)

_register(
    "shift_by_layer",
    "Per-layer variance-shift statistic for several drop rates and placements",
    {
        "trial": {},
        "seeds": _SEEDS,
        "cases": [
            {"label": "no dropout", "placement": "none", "p": 0.0},
            *[
                {"label": f"{placement}, p={p}", "placement": placement, "p": p}
                for placement in ("before_bn", "before_weight", "after_bn")
                for p in (0.1, 0.3, 0.5)
            ],
        ],
    },
    _grid_experiment("cases"),
)

_register(
    "depth_accumulation",
    "How the shift and the accuracy loss grow with the number of dropout-BN blocks",
    {
        "trial": {"placement": "before_bn", "p": 0.3},
        "seeds": _SEEDS,
        "cases": [{"label": f"depth {d}", "depth": d} for d in (2, 4, 6, 8)],
    },
    _grid_experiment("cases"),
)

_register(
    "drop_rate_sweep",
    "Test accuracy against drop rate with dropout directly before BN vs after all BN layers",
    {
        "trial": {},
        "seeds": _SEEDS,
        # p = 0 is the same network for both placements: one shared "no dropout" case.
        "cases": [
            {"label": "no dropout", "placement": "none", "p": 0.0},
            *[
                {"label": f"{placement}, p={p}", "placement": placement, "p": p}
                for placement in ("before_bn", "after_bn")
                for p in (0.1, 0.2, 0.3, 0.4, 0.5)
            ],
        ],
    },
    _grid_experiment("cases"),
)

_register(
    "remedies",
    "Remedies for the variance shift, each over ten seeds shared by every configuration",
    {
        "trial": {},
        "seeds": MANY_SEEDS,
        "cases": [
            {"label": "no dropout", "placement": "none", "p": 0.0},
            {"label": "dropout before every BN (the problem)", "placement": "before_bn", "p": 0.3},
            {"label": "dropout after all BN layers", "placement": "after_bn", "p": 0.3},
            {"label": "Uout (beta = 0.1) before every BN", "placement": "uout", "beta": 0.1},
            {"label": "Uout (beta = 0.5) before every BN", "placement": "uout", "beta": 0.5},
            {
                "label": "lower drop rate (p = 0.1) before every BN",
                "placement": "before_bn",
                "p": 0.1,
            },
            {
                "label": "dropout before every BN, 4x wider",
                "placement": "before_bn",
                "p": 0.3,
                "width": 512,
            },
            {"label": "dropout before every weight layer", "placement": "before_weight", "p": 0.3},
            {
                "label": "dropout before every weight layer, 4x wider",
                "placement": "before_weight",
                "p": 0.3,
                "width": 512,
            },
        ],
    },
    _grid_experiment("cases"),
)


def experiment_names() -> list[str]:
    """Names accepted by :func:`run_experiment`."""
    return sorted(EXPERIMENTS)


def _merge(defaults: dict, overrides: dict) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if key not in out:
            raise ValueError(f"unknown setting {key!r}; this experiment has {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_experiment(
    name: str,
    overrides: dict | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    progress: bool = False,
    threads: int | None = 1,
) -> CachedResult:
    """Run the named experiment (or read it from the cache) and return its aggregated result.

    ``refresh=True`` recomputes the experiment and its trials. ``threads`` caps PyTorch's CPU
    threads during training (tiny models run fastest on one); ``None`` leaves the setting alone.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(experiment_names())}")
    exp = EXPERIMENTS[name]
    config = _merge(exp.defaults, overrides or {})
    if "trial" in config:
        config["trial"] = trial_config(**config["trial"])

    def trial(changes: dict) -> dict:
        result = run_trial(changes, cache_dir=cache_dir, refresh=refresh, threads=threads)
        return result.data

    device_type = default_device().type

    def compute(cfg: dict) -> dict:
        with _threads(threads if device_type == "cpu" else None):
            return exp.run(cfg, trial, progress)

    return cached(
        name, config, compute, cache_dir=cache_dir, refresh=refresh, device_type=device_type
    )
