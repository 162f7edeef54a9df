"""Trials trained ahead on several processes are the trials the experiment would train itself."""

from __future__ import annotations

import pytest

from bncourse.lab.experiments import EXPERIMENTS, MANY_SEEDS, run_experiment
from bncourse.lab.parallel import grid_trials, missing_trials, prefetch

TINY = {"depth": 2, "width": 16, "epochs": 2, "batch_size": 128, "placement": "before_bn", "p": 0.3}
SMALL = {"trial": TINY, "seeds": [0, 1], "cases": [{"label": "tiny", "p": 0.3}]}


def test_grid_trials_are_every_case_at_every_seed():
    trials = grid_trials("remedies")
    assert {t["seed"] for t in trials} == set(MANY_SEEDS)
    cases = EXPERIMENTS["remedies"].defaults["cases"]
    assert len(trials) == len(cases) * len(MANY_SEEDS)
    with pytest.raises(ValueError, match="not a grid"):
        grid_trials("monte_carlo_shift")


def test_prefetched_trials_equal_sequential_ones_and_the_experiment_reuses_them(tmp_path):
    ahead, alone = tmp_path / "ahead", tmp_path / "alone"
    assert prefetch("drop_rate_sweep", SMALL, cache_dir=ahead, workers=2) == 2
    assert missing_trials(grid_trials("drop_rate_sweep", SMALL), ahead) == []
    assert prefetch("drop_rate_sweep", SMALL, cache_dir=ahead, workers=2) == 0
    parallel = run_experiment("drop_rate_sweep", SMALL, cache_dir=ahead).data
    sequential = run_experiment("drop_rate_sweep", SMALL, cache_dir=alone).data
    for a, b in zip(parallel["rows"][0]["trials"], sequential["rows"][0]["trials"], strict=True):
        assert a["acc"] == b["acc"] and a["shift"] == b["shift"]
        assert a["history"]["train_loss"] == b["history"]["train_loss"]


def test_one_worker_starts_nothing_and_bad_counts_are_refused(tmp_path):
    assert prefetch("drop_rate_sweep", SMALL, cache_dir=tmp_path, workers=1) == 0
    assert len(missing_trials(grid_trials("drop_rate_sweep", SMALL), tmp_path)) == 2
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        prefetch("drop_rate_sweep", SMALL, cache_dir=tmp_path, workers=0)
