"""bncourse.lab: data, models, training, probes, recalibration and cached experiments."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import bncourse.nn as bnn
from bncourse.lab import cache
from bncourse.lab.data import Dataset, load_dataset, register_dataset
from bncourse.lab.experiments import run_experiment, run_trial
from bncourse.lab.models import PLACEMENTS, bn_layers, build_model, cnn, mlp
from bncourse.lab.probes import input_moments, measure_variance_shift, predicted_first_layer_shift
from bncourse.lab.recalibrate import recalibrate_bn
from bncourse.lab.train import batches, evaluate, train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one CPU thread is faster, and much faster when other programs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- data -----------------------------------------------------------------------------------


def test_digits_are_embedded_split_and_standardized():
    data = load_dataset("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.num_train + data.num_test == 1797
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert abs(float(data.x_train.mean())) < 1e-4 and float(data.x_train.std()) == pytest.approx(
        1, abs=1e-3
    )
    again, other = load_dataset("digits"), load_dataset("digits", seed=1)
    assert torch.equal(again.y_test, data.y_test)
    assert not torch.equal(other.y_test, data.y_test)


def test_digits_are_scikit_learns_images_and_labels_without_importing_it():
    from sklearn.datasets import load_digits as sklearn_digits

    data = load_dataset("digits", seed=2)
    images = torch.cat([data.x_train, data.x_test]).flatten(1)
    labels = torch.cat([data.y_train, data.y_test])
    # standardized pixels are an affine map of the 0..16 ones (both 0 and 16 occur): undo it
    raw = (images - images.min()) / (images.max() - images.min()) * 16
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    ours = sorted(zip(labels.tolist(), map(tuple, raw.round().int().tolist()), strict=True))
    bunch = sklearn_digits()
    rows = map(tuple, bunch.data.astype(int).tolist())
    assert ours == sorted(zip(bunch.target.tolist(), rows, strict=True))
    code = "import sys, bncourse.lab.data as d; d.load_digits(); print('sklearn' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr


def test_synthetic_generator_is_seeded():
    a = load_dataset("synthetic", num_samples=400, num_features=5, num_classes=3, seed=2)
    b = load_dataset("synthetic", num_samples=400, num_features=5, num_classes=3, seed=2)
    assert a.input_shape == (5,) and a.num_classes == 3 and a.num_train == 300
    assert torch.equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


def test_unknown_dataset_and_registering_a_new_one():
    with pytest.raises(ValueError, match="unknown data set 'nope'.*digits"):
        load_dataset("nope")

    def tiny(seed: int = 0) -> Dataset:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(20, 3, generator=g)
        y = torch.arange(20) % 2
        return Dataset("tiny", x[:16], y[:16], x[16:], y[16:], 2)

    register_dataset("tiny-test", tiny)
    data = load_dataset("tiny-test", seed=1)
    model = mlp(data.input_shape, data.num_classes, depth=1, width=4, seed=0)
    assert model(data.x_test).shape == (4, 2)


def _write_fake_cifar(folder, n_per_batch=6):
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, size=n_per_batch)),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_loads_from_a_local_copy(tmp_path):
    _write_fake_cifar(tmp_path)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.input_shape == (3, 32, 32) and data.num_train == 30 and data.num_test == 6
    per_channel = data.x_train.mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel, torch.zeros(3), atol=1e-5)
    # The rest of the lab takes it unchanged.
    model = cnn(data.input_shape, data.num_classes, depth=1, width=4, seed=0)
    assert evaluate(model, data) >= 0
    with pytest.raises(ValueError, match="lacks the CIFAR-10 files"):
        load_dataset("cifar10", root=tmp_path / "missing")


# --- models ---------------------------------------------------------------------------------

EXPECTED_BLOCK = {
    "none": ["{w}1", "bn1", "relu1", "{w}2", "bn2", "relu2"],
    "before_bn": ["{w}1", "drop1", "bn1", "relu1", "{w}2", "drop2", "bn2", "relu2"],
    "before_weight": ["drop1", "{w}1", "bn1", "relu1", "drop2", "{w}2", "bn2", "relu2"],
    "after_bn": ["{w}1", "bn1", "relu1", "{w}2", "bn2", "relu2"],
    "uout": ["{w}1", "uout1", "bn1", "relu1", "{w}2", "uout2", "bn2", "relu2"],
}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_placements_give_the_documented_layer_order(placement):
    m = mlp((1, 8, 8), 10, depth=2, width=8, placement=placement, p=0.3)
    blocks = [n.format(w="linear") for n in EXPECTED_BLOCK[placement]]
    tail = ["drop", "head"] if placement == "after_bn" else ["head"]
    assert [name for name, _ in m.named_children()] == ["flatten", *blocks, *tail]

    c = cnn((1, 8, 8), 10, depth=2, width=8, placement=placement, p=0.3)
    blocks = [n.format(w="conv") for n in EXPECTED_BLOCK[placement]]
    tail = (
        ["pool", "flatten", "drop", "head"]
        if placement == "after_bn"
        else ["pool", "flatten", "head"]
    )
    assert [name for name, _ in c.named_children()] == [*blocks, *tail]

    for model in (m, c):
        for name, module in model.named_children():
            if name.startswith("drop"):
                assert isinstance(module, nn.Dropout) and module.p == 0.3
            if name.startswith("uout"):
                assert isinstance(module, bnn.Uout) and module.beta == 0.1
        assert len(bn_layers(model)) == 2


def test_models_can_use_the_course_layers_and_are_seeded():
    m = mlp(64, 10, depth=2, width=8, placement="before_bn", impl="bncourse", seed=3)
    assert isinstance(m.bn1, bnn.BatchNorm1d) and isinstance(m.drop1, bnn.Dropout)
    same = mlp(64, 10, depth=2, width=8, placement="before_bn", impl="bncourse", seed=3)
    assert torch.equal(m.linear1.weight, same.linear1.weight)
    state = torch.random.get_rng_state()
    mlp(64, 10, seed=5)
    assert torch.equal(state, torch.random.get_rng_state()), "seeded init must not touch global RNG"
    with pytest.raises(ValueError, match="placement"):
        mlp(64, 10, placement="middle")
    with pytest.raises(ValueError, match="drop probability"):
        mlp(64, 10, p=1.0)
    with pytest.raises(ValueError, match="kind"):
        build_model("rnn", (64,), 10)


# --- training -------------------------------------------------------------------------------


def test_batches_shuffle_and_never_leave_a_single_sample():
    g = torch.Generator().manual_seed(0)
    chunks = batches(11, 5, shuffle=True, generator=g)
    assert [len(c) for c in chunks] == [5, 5]  # the lone 11th sample is dropped
    assert [len(c) for c in batches(12, 5, shuffle=False)] == [5, 5, 2]
    assert torch.equal(torch.cat(batches(12, 5, shuffle=False)), torch.arange(12))
    with pytest.raises(ValueError, match="batch_size"):
        batches(10, 1, shuffle=False)


def test_training_learns_and_runs_on_the_device(device):
    data = load_dataset("synthetic", num_samples=600, num_features=10, num_classes=3, seed=0)
    model = mlp(data.input_shape, 3, depth=2, width=32, placement="before_bn", p=0.1, seed=0)
    history = train(
        model, data, epochs=5, batch_size=32, lr=0.05, seed=0, device=device, progress=False
    )
    assert len(history.train_loss) == len(history.test_acc) == 5
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_acc[-1] > 0.8  # the classes are well separated (class_sep = 1, 10 dims)
    assert history.device.startswith(device.type)
    assert not model.training


def test_evaluate_in_train_mode_leaves_the_model_untouched():
    data = load_dataset("synthetic", num_samples=300, num_features=6, num_classes=3, seed=1)
    model = mlp(data.input_shape, 3, depth=2, width=16, placement="before_bn", p=0.3, seed=0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, data, mode="train", split="train", batch_size=64)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in model.modules())
    with pytest.raises(ValueError, match="mode"):
        evaluate(model, data, mode="test")


# --- probes and recalibration ---------------------------------------------------------------


def test_dropout_directly_before_bn_shifts_by_the_retain_probability():
    """One Dropout(p) -> BatchNorm1d(momentum=None) on zero-mean, unit-variance input.

    Tolerance: the moving variance averages unbiased batch variances of X = m x over N values per
    channel (m the dropout multiplier, retain q = 1 - p); its standard error is
    sqrt((E[X^4] - Var[X]^2) / N) with E[X^4] = 3 / q^3 and Var[X] = 1 / q. The real variance
    of Gaussian x has standard error sqrt(2 / N). Averaging over C independent channels divides
    both variances of the estimates by C; the relative errors add in quadrature for the ratio.
    We allow 5 standard errors (two-sided normal tail ~6e-7).
    """
    p, channels, batch, steps = 0.3, 8, 256, 200
    q = 1 - p
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, generator=gen)
    data = Dataset(
        "zero-mean",
        x,
        torch.zeros(n, dtype=torch.long),
        x[:10],
        torch.zeros(10, dtype=torch.long),
        1,
    )
    model = nn.Sequential(bnn.Dropout(p), bnn.BatchNorm1d(channels, momentum=None))
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        for idx in torch.arange(n).split(batch):
            model(x[idx])
    (row,) = measure_variance_shift(model, data, split="train")
    shift = row.real_var / row.moving_var
    rel_se_moving = math.sqrt((3 / q**3 - 1 / q**2) / (n * channels)) / (1 / q)
    rel_se_real = math.sqrt(2 / (n * channels))
    tolerance = 5 * q * math.hypot(rel_se_moving, rel_se_real)
    assert abs(shift - q) <= tolerance, (
        f"shift {shift:.4f}, retain probability {q}, tol {tolerance:.4f}"
    )
    assert row.statistic == pytest.approx(1 / shift)
    assert abs(shift - p) > 20 * tolerance  # not the drop probability


def _shifted_model(placement="before_bn", p=0.3, depth=3):
    data = load_dataset("digits")
    model = mlp(data.input_shape, 10, depth=depth, width=32, placement=placement, p=p, seed=0)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():  # fill the running statistics with dropout on (as during training)
        for idx in torch.arange(data.num_train).split(64):
            model(data.x_train[idx])
    model.eval()
    return model, data


def test_recalibration_brings_running_var_to_the_test_mode_variance():
    model, data = _shifted_model()
    before = measure_variance_shift(model, data)
    assert before[0].statistic > 1.3  # dropout p = 0.3 before BN: clearly shifted
    weights = {k: v.clone() for k, v in model.named_parameters()}
    momenta = [bn.momentum for _, bn in bn_layers(model)]

    # One batch of the whole training set: running_var is then the unbiased variance of each BN
    # layer's input with dropout off. In test mode the earlier BN layers divide by
    # sqrt(running_var) (unbiased), during recalibration by the biased batch variance: the two
    # differ by a factor n/(n-1) per earlier layer, 1 + 3/1348 at most here.
    recalibrate_bn(model, data, batch_size=data.num_train)
    moments = input_moments(model, [bn for _, bn in bn_layers(model)], data)
    for (_, bn), m in zip(bn_layers(model), moments, strict=True):
        torch.testing.assert_close(bn.running_var.double(), m.variance(), rtol=3e-3, atol=1e-6)
        torch.testing.assert_close(bn.running_mean.double(), m.sum / m.count, rtol=3e-3, atol=1e-4)
    after = measure_variance_shift(model, data)
    assert all(row.statistic < 1.005 for row in after)
    assert not any(mod.training for mod in model.modules())
    assert [bn.momentum for _, bn in bn_layers(model)] == momenta
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())


def test_recalibration_keeps_dropout_off_unlike_update_bn():
    model, data = _shifted_model()
    recalibrate_bn(model, data, batch_size=256)
    ours = bn_layers(model)[0][1].running_var.mean().item()

    # torch.optim.swa_utils.update_bn calls model.train(): dropout is on while it re-estimates.
    loader = [data.x_train[idx] for idx in torch.arange(data.num_train).split(256)]
    torch.manual_seed(0)
    torch.optim.swa_utils.update_bn(loader, model)
    theirs = bn_layers(model)[0][1].running_var.mean().item()
    assert theirs > 1.3 * ours  # the dropout noise is back in the statistics


def test_first_layer_prediction_matches_the_probe_after_filling_statistics():
    model, data = _shifted_model(depth=2)
    predicted = predicted_first_layer_shift(model, data)
    measured = measure_variance_shift(model, data)[0]
    assert predicted["real_var"] == pytest.approx(measured.real_var, rel=1e-9)
    # The running variance is an exponential average over the last batches (momentum 0.1, ~10
    # batches of 64), so it scatters around the prediction by a few percent.
    assert predicted["moving_var"] == pytest.approx(measured.moving_var, rel=0.15)
    with pytest.raises(ValueError, match="not directly preceded"):
        predicted_first_layer_shift(mlp(data.input_shape, 10, depth=1, placement="after_bn"), data)


# --- cached experiments ---------------------------------------------------------------------


def test_cache_reuses_and_invalidates(tmp_path):
    calls = []

    def compute(config):
        calls.append(config)
        return {"twice": 2 * config["x"]}

    first = cache.cached("demo", {"x": 1}, compute, cache_dir=tmp_path)
    again = cache.cached("demo", {"x": 1}, compute, cache_dir=tmp_path)
    assert (first.cached, again.cached) == (False, True) and again.data == {"twice": 2}
    assert len(calls) == 1
    changed_config = cache.cached("demo", {"x": 2}, compute, cache_dir=tmp_path)
    assert not changed_config.cached and changed_config.data == {"twice": 4}
    changed_package = cache.cached("demo", {"x": 1}, compute, cache_dir=tmp_path, package="edited")
    assert not changed_package.cached
    other_device = cache.cached("demo", {"x": 1}, compute, cache_dir=tmp_path, device_type="cuda")
    assert not other_device.cached
    refreshed = cache.cached("demo", {"x": 1}, compute, cache_dir=tmp_path, refresh=True)
    assert not refreshed.cached
    assert len(calls) == 5
    with pytest.raises(TypeError, match="JSON"):
        cache.cached("demo", {"x": object()}, compute, cache_dir=tmp_path)


def test_package_hash_follows_the_code_the_experiments_import(tmp_path):
    pkg = tmp_path / "bncourse"
    for folder in ("lab", "nn", "grading"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "lab" / "experiments.py").write_text(
        "from bncourse import theory\nfrom .data import load\n\n"
        "def f():\n    from bncourse.nn import functional\n"
    )
    (pkg / "lab" / "data.py").write_text("load = 1\n")
    (pkg / "theory.py").write_text("A = 1\n")
    (pkg / "nn" / "functional.py").write_text("F = 1\n")
    (pkg / "grading" / "checks.py").write_text("from bncourse import theory\n")

    names = {p.relative_to(pkg).as_posix() for p in cache.source_files(pkg)}
    assert names == {
        "__init__.py",
        "lab/__init__.py",
        "lab/experiments.py",
        "lab/data.py",
        "theory.py",
        "nn/__init__.py",
        "nn/functional.py",
    }

    def digest():
        cache._package_hash.cache_clear()
        return cache.package_hash(pkg)

    hashes = [digest()]
    for name, text in [
        ("theory.py", "A = 2\n"),
        ("lab/data.py", "load = 2\n"),
        ("nn/functional.py", "F = 2\n"),
    ]:
        (pkg / name).write_text(text)
        hashes.append(digest())
    assert len(set(hashes)) == 4, "each imported file must change the hash"
    (pkg / "grading" / "checks.py").write_text("from bncourse import theory  # edited\n")
    assert digest() == hashes[-1], "code the experiments never import must not change the hash"

    real = {p.relative_to(cache._PACKAGE_DIR).as_posix() for p in cache.source_files()}
    assert {"lab/experiments.py", "lab/train.py", "theory.py", "nn/functional.py"} <= real
    assert not any(name.startswith(("grading/", "instructor/")) for name in real)
    assert "lab/plots.py" not in real


TINY = {"depth": 2, "width": 16, "epochs": 2, "batch_size": 128, "placement": "before_bn", "p": 0.3}


def test_a_trial_is_reproducible_from_its_seed(tmp_path):
    a = run_trial({**TINY, "seed": 4}, cache_dir=tmp_path / "a").data
    b = run_trial({**TINY, "seed": 4}, cache_dir=tmp_path / "b").data
    c = run_trial({**TINY, "seed": 5}, cache_dir=tmp_path / "a").data
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["acc"] == b["acc"] and a["shift"] == b["shift"]
    assert a["history"]["train_loss"] != c["history"]["train_loss"]


def test_named_experiment_is_cached_and_recomputed_on_change(tmp_path):
    small = {"trial": TINY, "seeds": [0], "cases": [{"label": "tiny", "p": 0.3}]}
    first = run_experiment("drop_rate_sweep", small, cache_dir=tmp_path)
    again = run_experiment("drop_rate_sweep", small, cache_dir=tmp_path)
    assert not first.cached and again.cached and again.data == first.data
    (row,) = again.data["rows"]
    assert row["acc"]["test"]["n"] == 1 and len(row["shift"]) == 2
    other = run_experiment("drop_rate_sweep", {**small, "seeds": [1]}, cache_dir=tmp_path)
    assert not other.cached
    with pytest.raises(ValueError, match="unknown setting"):
        run_experiment("drop_rate_sweep", {"sedes": [0]}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiment("nope", cache_dir=tmp_path)
