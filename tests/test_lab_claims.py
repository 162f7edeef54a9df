"""The claims of the misconceptions chapter: each check's verdict and the evidence behind it.

Each judge is also fed evidence for which the claim *would* hold, so that a verdict is shown to
follow from the numbers rather than being fixed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bncourse import theory
from bncourse.lab import claims

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture(scope="module")
def evidence() -> dict[str, claims.Evidence]:
    torch.set_num_threads(1)
    return claims.run_all()


EXPECTED = {
    "bn_range": "false",
    "no_sqrt": "false",
    "dropout_weights": "false",
    "sample_level": "false",
    "backprop": "partly true",
    "fraction": "partly true",
    "selective": "false",
    "inverted_scaling": "true",
    "mean_and_variance": "true",
    "loss_multiplier": "false",
    "finetune": "false",
    "test_p": "false",
    "dropout_vanishing": "false",
    "bn_vanishing": "true",
    "resnet": "partly true",
    "test_stats": "partly true",
    "gaussian": "false",
    "lr_tuning": "false",
}


def test_every_claim_has_an_expected_verdict():
    assert set(EXPECTED) == set(claims.CLAIMS)


def test_registry_follows_the_chapter():
    text = (BOOK / "misconceptions.md").read_text(encoding="utf-8")
    order = [m.replace("-", "_")[3:] for m in re.findall(r"^\((mc-[a-z-]+)\)=", text, flags=re.M)]
    assert order == list(claims.CLAIMS)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_verdict(evidence, key):
    ev = evidence[key]
    assert ev.verdict == EXPECTED[key], f"{key}: {ev}"
    assert ev.because and all(isinstance(v, int | float) for v in ev.numbers.values())


def test_bn_output_is_standardized_not_bounded(evidence):
    n = evidence["bn_range"].numbers
    assert n["min"] < 0 and n["max"] > 1 and n["below"] > 0 and n["above"] > 0
    assert n["max_abs_mean"] < 1e-4 and n["max_var_error"] < 1e-2
    scaled = torch.rand(64, 4)  # min-max scaled data: the claim would hold
    assert claims.judge_bn_range(scaled).verdict == "true"


def test_no_sqrt_gives_inverse_variance_except_at_one(evidence):
    ev = evidence["no_sqrt"]
    v, out = ev.details["input_var"], ev.details["no_sqrt_var"]
    for var, got in zip(v, out, strict=True):
        assert got == pytest.approx(1 / var, rel=1e-3)
    assert ev.numbers["unit_error"] < ev.numbers["tol"]  # the formulas agree where var = 1
    x = torch.randn(256, 3, dtype=torch.float64) * torch.tensor(
        [0.5, 2.0, 3.0], dtype=torch.float64
    )
    bn = nn.BatchNorm1d(3).double()
    right = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    assert (
        claims.judge_no_sqrt(x.var(0, unbiased=False).tolist(), right, bn(x), bn.eps).verdict
        == "true"
    )


def test_dropout_zeroes_activations_not_weights(evidence):
    n = evidence["dropout_weights"].numbers
    assert n["weight_change"] == 0 and 0 < n["zero"] < 100 and n["distinct"] == n["batch"]
    w = torch.randn(4, 3)
    zeroed = w.clone()
    zeroed[1] = 0  # what the claim describes
    assert claims.judge_dropout_weights(w, zeroed, torch.ones(2, 4)).verdict == "true"


def test_dropout_gradient_is_zero_exactly_at_dropped_units(evidence):
    n = evidence["backprop"].numbers
    assert n["at_dropped"] == 0 and n["at_kept"] == 100 and n["rows"] == 100
    torch.manual_seed(0)
    x = torch.randn(16, 8, requires_grad=True)
    out = nn.Dropout(0.4)(x)
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.all(x.grad[~kept] == 0) and torch.allclose(x.grad[kept], torch.tensor(1 / 0.6))


def test_dropout_masks_units_not_examples(evidence):
    assert evidence["sample_level"].numbers["mixed"] == 100
    rows = torch.ones(8, 5)
    rows[[1, 4]] = 0  # sample-level dropping, as the claim describes
    assert claims.judge_sample_level(rows).verdict == "true"


def test_dropped_fraction_is_p(evidence):
    n = evidence["fraction"].numbers
    assert n["default_p"] == nn.Dropout().p
    assert n["low"] <= 100 * n["default_p"] <= n["high"]
    for p in claims.FRACTION_PS:
        assert n[f"mean_{round(100 * p)}"] == pytest.approx(100 * p, abs=n["margin"])
    assert n["half_count"] == sum(p == 0.5 for p in claims.FRACTION_PS)
    torch.manual_seed(1)
    halves = {p: [0.5 + 0.001 * float(torch.randn(1)) for _ in range(20)] for p in (0.1, 0.5)}
    assert claims.judge_fraction(halves, 0.5).verdict == "true"  # half whatever p: the claim
    ps = {p: [p + 0.001 * float(torch.randn(1)) for _ in range(20)] for p in (0.1, 0.3)}
    assert claims.judge_fraction(ps, 0.5).verdict == "false"  # p, never half


def test_drop_rate_ignores_the_activation(evidence):
    n = evidence["selective"].numbers
    assert abs(n["weak"] - n["strong"]) < n["margin"]
    act = torch.exp(torch.randn(10, 64, 32))
    selective = act * (act < act.quantile(0.9))  # drops exactly the strongest tenth
    assert claims.judge_selective(act, selective).verdict != "false"


def test_inverted_scaling_and_loss_multiplier(evidence):
    inv, loss = evidence["inverted_scaling"].numbers, evidence["loss_multiplier"].numbers
    assert inv["low"] <= 1 <= inv["high"]
    assert inv["raw"] == pytest.approx(1 - inv["p"], abs=0.01)
    assert loss["grad_ratio"] == pytest.approx(loss["p"] / (1 - loss["p"]), rel=1e-5)
    assert loss["output_change"] == 0 and loss["factor_half"] == 1
    assert loss["raw"] == pytest.approx(1 - loss["p"], abs=0.01)


def test_dropout_keeps_the_mean_and_raises_the_variance(evidence):
    n = evidence["mean_and_variance"].numbers
    assert n["mean"] == pytest.approx(1, abs=0.01)
    assert n["var_low"] <= n["predicted"] <= n["var_high"]
    train_var, test_var = theory.dropout_variances(0.3, mean=1.0, var=1.0)
    assert n["predicted"] == pytest.approx(train_var / test_var)
    same = [1.0, 1.001, 0.999]  # a noise that left the variance alone
    assert claims.judge_mean_and_variance(same, same, 1.0).verdict == "partly true"


def test_dropout_is_identity_in_eval_mode(evidence):
    assert evidence["test_p"].numbers["worst"] == 0
    assert claims.judge_eval_identity({0.5: 0.1}).verdict == "true"


def test_dropout_leaves_no_unit_untrained_and_eval_changes_nothing(evidence):
    n = evidence["finetune"].numbers
    assert n["left"] == 0 and n["changed"] == 0
    c = evidence["finetune"].details["comparison"]
    assert n["gap"] == pytest.approx(n["acc_plain"] - n["acc_dropout"])  # reported, as it is
    assert n["gap_low"] <= n["gap"] <= n["gap_high"] and n["confidence"] == 100 * c.confidence
    assert claims.judge_finetune(0, 3).verdict != "false"  # a repair step would change entries
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    assert claims._changed_by_eval(model, torch.randn(8, 4)) == 0


def test_bn_not_dropout_lifts_vanishing_gradients(evidence):
    bn, do = evidence["bn_vanishing"].numbers, evidence["dropout_vanishing"].numbers
    assert bn["plain"] < 1e-3  # the plain deep sigmoid network's gradient vanishes
    assert bn["ratio"] > 1e3 * bn["plain"]
    assert evidence["dropout_vanishing"].details["comparison"].verdict != "larger"
    assert evidence["dropout_vanishing"].details["equivalence"].verdict == "equivalent"
    assert do["plain"] == bn["plain"]


def test_plain_gradient_vanishes_without_saturation(evidence):
    n = evidence["bn_vanishing"].numbers
    assert n["plain_slope"] > 0.9 * 0.25  # sigmoid' near its maximum: nothing saturates
    assert n["plain_std_max"] < 1
    # per layer: slope times the default init's weight scale, 1/sqrt(3)
    assert n["plain_gain"] == pytest.approx(n["plain_slope"] / 3**0.5, rel=0.1)
    assert n["plain_gain"] ** (n["depth"] - 1) < 1e-6 and n["bn_gain"] > 5 * n["plain_gain"]
    assert n["deep_ratio"] > n["ratio"] > 1  # with BN, gradients grow towards the input
    # with BN the batch std divides the gradient: slope x weight scale / batch std per layer
    expected = n["bn_slope"] / 3**0.5 / n["bn_batch_std"]
    assert n["bn_gain"] == pytest.approx(expected, rel=0.25)


def test_resnet_blocks_have_batch_norm_and_no_dropout(evidence):
    n = evidence["resnet"].numbers
    assert n["basic_batch_norm"] == n["basic_conv"] == 2 and n["basic_dropout"] == 0
    assert n["bottleneck_batch_norm"] == n["bottleneck_conv"] == 3 and n["bottleneck_dropout"] == 0
    x = torch.randn(2, 16, 6, 6)
    assert claims.basic_block()(x).shape == x.shape
    wide = nn.Sequential(claims.basic_block(), nn.Dropout(0.3))  # a block with dropout
    counts = {"wide": claims.layer_counts(wide)}
    assert claims.judge_resnet_block(counts).verdict == "true"
    assert "He et al." in evidence["resnet"].because  # the count displays a transcription


def test_eval_bn_uses_running_buffers_not_the_whole_training_set(evidence):
    n = evidence["test_stats"].numbers
    assert n["eval_error"] < n["tol"] and n["ema_error"] < n["tol"]  # the buffers are the EMA
    assert n["whole"] > n["recal"] > 0  # a pass with frozen weights comes closer
    assert claims.judge_running_statistics(0.0, 0.0, 0.0).verdict == "true"  # whole-set buffers
    assert claims.judge_running_statistics(0.1, 0.0, 0.05).verdict == "false"


def test_ema_is_pytorchs_update():
    bn = nn.BatchNorm1d(3, momentum=0.3)
    batches = [torch.randn(5, 3) * (i + 1) for i in range(4)]
    for b in batches:
        bn(b)
    ema = claims._ema([b.var(0) for b in batches], 1.0, 0.3)
    assert torch.allclose(bn.running_var, ema, rtol=1e-6)


def test_gaussian_dropout_shifts_as_much_as_dropout(evidence):
    n = evidence["gaussian"].numbers
    assert n["dropout"] == pytest.approx(theory.dropout_shift(0.3), abs=0.01)
    assert n["gaussian"] == pytest.approx(theory.gaussian_dropout_shift(0.3), abs=0.01)
    assert n["uout"] == pytest.approx(theory.uout_shift(0.1), abs=0.01)


def test_bn_trains_at_more_learning_rates(evidence):
    n = evidence["lr_tuning"].numbers
    assert n["bn"] > n["plain"]
    assert n["plain_fail_large"] > n["bn_fail_large"]  # the large rates: stability
    assert n["epochs"] == claims.LR_EPOCHS
    assert n["small_min_acc"] > n["chance"]  # the small rates are slow, not diverging


def test_claims_link_to_existing_sections():
    labels = set()
    for md in BOOK.glob("*.md"):
        labels |= set(re.findall(r"^\(([a-z-]+)\)=", md.read_text(encoding="utf-8"), flags=re.M))
    chapter = (BOOK / "misconceptions.md").read_text(encoding="utf-8")
    for key, claim in claims.CLAIMS.items():
        assert claim.label in labels, f"{key}: no section labelled {claim.label!r}"
        assert f"({claims.anchor(key)})=" in chapter, f"{key} has no section in the chapter"
        assert f"mc_{key}_verdict" in chapter and f"mc_{key}_because" in chapter


def test_summary_table_has_a_row_per_claim(evidence):
    table = claims.summary_table(evidence)
    assert len(table.splitlines()) == 2 + len(claims.CLAIMS)
    for key, ev in evidence.items():
        assert f"(#{claims.anchor(key)})" in table and f"**{ev.verdict}**" in table
    assert sum(claims.verdict_counts(evidence).values()) == len(claims.CLAIMS)


def test_the_chapters_visible_tests_agree_with_the_registry(evidence):
    """The short tests the chapter shows compute what the registry's checks compute."""
    text = (BOOK / "misconceptions.md").read_text(encoding="utf-8")
    cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", text, flags=re.S)
    shown = [c for c in cells if "claims.judge_" in c]
    assert shown, "the chapter shows no test of its own"
    namespace: dict = {"results": {}}
    exec("import torch\nfrom torch import nn\nfrom bncourse.lab import claims", namespace)
    for cell in shown:
        exec(cell, namespace)
    assert len(namespace["results"]) == len(shown)
    for key, ev in namespace["results"].items():
        assert ev.verdict == evidence[key].verdict, key
        assert ev.numbers == pytest.approx(evidence[key].numbers), key
