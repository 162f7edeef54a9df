"""The cooperation chapter's trials and verdicts: subsets, fixed budgets, caching, and sentences
that follow the data (synthetic results, flipped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bncourse.lab import cooperate as co
from bncourse.lab.coop_trials import (
    build_network,
    run_trials,
    subsample,
    train_steps,
    trial,
)
from bncourse.lab.data import load_dataset, make_synthetic
from bncourse.nn import GaussianDropout, Uout

# --- trials ---------------------------------------------------------------------------------


def test_subsample_is_stratified_seeded_and_keeps_the_test_set():
    data = load_dataset("digits")
    small = subsample(data, 20, seed=3)
    assert small.num_train == 20
    assert np.bincount(small.y_train.numpy(), minlength=10).tolist() == [2] * 10
    assert torch.equal(small.x_test, data.x_test)
    assert torch.equal(subsample(data, 20, seed=3).x_train, small.x_train)
    assert not torch.equal(subsample(data, 20, seed=4).x_train, small.x_train)
    for bad in (1, data.num_train + 1, 2.5):
        with pytest.raises(ValueError, match="n must be an int"):
            subsample(data, bad, seed=0)


@pytest.mark.parametrize(
    ("noise", "kind", "count"),
    [("gaussian", GaussianDropout, 3), ("uout", Uout, 3), ("bernoulli", torch.nn.Dropout, 3)],
)
def test_the_noise_kind_replaces_every_dropout_layer(noise, kind, count):
    data = make_synthetic(num_samples=40)
    config = trial(placement="before_bn", noise=noise, p=0.3, beta=0.4)
    model = build_network(config, data)
    assert sum(isinstance(m, kind) for m in model.modules()) == count
    if noise != "bernoulli":
        assert not any(type(m) is torch.nn.Dropout for m in model.modules())


def test_unknown_settings_and_noises_are_refused():
    with pytest.raises(ValueError, match="unknown trial settings"):
        trial(epochs=3)
    with pytest.raises(ValueError, match="noise must be one of"):
        trial(noise="alpha")


def test_train_steps_takes_exactly_the_budget_whatever_the_data_size():
    for n in (10, 200):
        data = make_synthetic(num_samples=n * 4 // 3 + 1)
        model = build_network(trial(width=8, depth=2), data)
        train_steps(model, data, steps=7, batch_size=32)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
        assert int(bn.num_batches_tracked) == 7
        assert not model.training


def test_run_trials_caches_each_configuration(tmp_path):
    configs = [trial(n_train=30, width=8, depth=2, steps=3, seed=s) for s in (0, 1, 0)]
    first = run_trials(configs, cache_dir=tmp_path, workers=1)
    assert len(list(tmp_path.glob("coop-trial-*.json"))) == 2
    assert first[0] == first[2] and first[0] != first[1]
    assert first[0]["n_train"] == 30
    assert run_trials(configs, cache_dir=tmp_path, workers=1) == first


# --- verdicts from synthetic results ----------------------------------------------------------


def _fake(effect, train_effect=lambda c: 0.0) -> co.Results:
    """Results for every trial: test accuracy 90 + effect(config) + seed noise, train 99 + ..."""
    configs = co.configs()
    rng = np.random.default_rng(0)
    seed_noise = rng.normal(0, 1.0, size=len(co.SEEDS))
    results = []
    for c in configs:
        acc = 90 + effect(c) + seed_noise[c["seed"]] + rng.normal(0, 0.2)
        widthish = c["width"] / 16
        geometry = [
            {
                "index": i,
                "d": 64 if i == 1 else c["width"],
                "d_cos2": 1.0 if i == 1 else widthish**0.5 * (1 + 0.01 * c["seed"]),
                "rho": 0.01,
                "gain": 2.0 * widthish**0.5,
                "gain_shared": 1.0,
                "predicted": 1.5 + 0.001 * c["seed"],
                "predicted_exact": 1 + 0.3 / widthish**0.5 + 0.001 * c["seed"],
                "measured": 1 + 0.35 / widthish**0.5 + 0.002 * c["seed"],
            }
            for i in (1, 2, 3)
        ]
        results.append(
            {
                "acc": {
                    "test": acc / 100,
                    "train": (99 + train_effect(c) + rng.normal(0, 0.2)) / 100,
                },
                "shift": [{"statistic": 1.1}],
                "n_train": c["n_train"] or 1348,
                "n_test": 449,
                "geometry": geometry if c["geometry"] else [],
                "train_seconds": 0.1,
            }
        )
    return co.Results(configs, results)


def _weight_helps_small(c: dict) -> float:
    if c["placement"] == "before_weight":
        return 4.0 if 0 < c["n_train"] <= 100 else -4.0
    return 0.0


def test_the_sweep_says_where_dropout_helps_and_hurts():
    sweep = co.SizeSweep(_fake(_weight_helps_small))
    assert sweep.verdicts(2) == {
        50: "better",
        100: "better",
        200: "worse",
        400: "worse",
        0: "worse",
    }
    assert set(sweep.verdicts(1).values()) == {"equivalent"}
    assert (
        sweep.sentence(2)
        == "helps with 50 and 100 training images and hurts with 200, 400 and 1,348 training images"
    )
    assert sweep.trend(2).verdict == "decreasing"
    remark = sweep.remark_verdict()
    assert remark.startswith("the data support the remark for dropout p = 0.3 before every weight")
    assert "not for dropout p = 0.5 after the last BN" in remark


def test_the_budget_sentence_says_whether_dropout_lags_in_training_where_it_hurts():
    steps, batch = co.COOP_TRIAL["steps"], co.COOP_TRIAL["batch_size"]
    fitted = co.SizeSweep(_fake(_weight_helps_small)).budget_sentence()
    assert fitted.startswith(f"every network gets the same {steps} steps of {batch} images, ")
    assert f"{steps * batch / 1348:.1f} epochs on the whole split of 1,348 images" in fitted
    assert (
        "gives no sign of slower convergence" in fitted
        and "slower convergence within" not in fitted
    )

    def lags(c: dict) -> float:
        return -3.0 if c["placement"] == "before_weight" else 0.0

    slower = co.SizeSweep(_fake(_weight_helps_small, lags)).budget_sentence()
    assert "also fits its own training images less well" in slower
    assert "dropout p = 0.3 before every weight layer with 200, 400 and 1,348 images (" in slower
    assert "gives no sign" not in slower
    no_loss = co.SizeSweep(_fake(lambda c: 0.0)).budget_sentence()
    assert "where dropout hurts" not in no_loss


def test_the_remark_is_rejected_when_no_placement_helps():
    sweep = co.SizeSweep(_fake(lambda c: -3.0 if c["placement"] != "none" else 0.0))
    assert sweep.remark_verdict().startswith("the data do not support the remark")
    assert set(sweep.verdicts(2).values()) == {"worse"}


def test_the_width_verdict_follows_the_measured_trend():
    width = co.WidthStudy(_fake(lambda c: 0.0))
    assert width.wide_layers == [2, 3]
    assert width.shrinks("measured") and width.shrinks("predicted_exact")
    assert not width.shrinks("predicted")
    verdict = width.verdict()
    assert verdict.startswith("the measured shift shrinks with width;")
    assert "paper's mechanism predicts" not in verdict
    shared, exact = verdict.split(", while ")  # the paper's formula first, then the extension
    assert "shared correlation ρ predicts no shrinking, against the measurement" in shared
    assert "full covariance predicts a shrinking shift, in agreement with the" in exact
    assert width.closer().startswith("the prediction from the inputs' full covariance")
    assert width.gain_sentence().startswith(f"at width {co.WIDTHS[-1]} the measured gain is")


def test_the_placement_table_marks_each_row_against_no_dropout():
    def effect(c: dict) -> float:
        return {"before_bn": -5.0, "before_weight": 3.0}.get(c["placement"], 0.0)

    table = co.PlacementTable(_fake(effect))
    lines = table.table().splitlines()[2:]
    verdicts = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[5] for line in lines}
    assert verdicts["none"] == "(reference)"
    assert verdicts["before every weight layer"] == "better"
    assert verdicts["before every BN"] == "worse"
    assert table.advice().startswith("more accurate than no dropout: dropout p = 0.3 before every")
    assert table.best().case["placement"] == "before_weight"
    assert "; less accurate: dropout p = 0.3 before every BN" in table.advice()
    assert "; equivalent within ±1.0 points: dropout p = 0.1 after the last BN" in table.advice()
    assert "Gaussian dropout p = 0.3 before every BN against dropout p = 0.3 before every BN" in (
        co._pair_sentences(table.rows[1:], "noise")
    )


def test_results_refuse_a_configuration_that_was_not_run():
    results = _fake(lambda c: 0.0)
    with pytest.raises(ValueError, match="no result for"):
        results.runs("x", {"n_train": 7})


def test_the_best_row_is_named_only_when_it_is_not_the_reference():
    table = co.PlacementTable(_fake(lambda c: -2.0 if c["placement"] != "none" else 0.0))
    assert table.best() is table.baseline
    assert table.best_sentence().startswith("none has a higher mean test accuracy")
    table = co.PlacementTable(_fake(lambda c: 2.0 if c["placement"] == "after_bn" else 0.0))
    assert "after the last BN" in table.best_sentence()
