"""The ablation MLPs, the landscape/saturation/drift probes and the why-BN experiments' helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bncourse.lab.ablations import ShiftingNoise, ablation_mlp
from bncourse.lab.activations import input_drift, saturation, weight_gradient_norms
from bncourse.lab.landscape import probe_gradient_direction
from bncourse.lab.why_bn import (
    bias_before_bn,
    ghost_conclusion,
    ghost_verdict,
    largest_stable_lr,
    subset,
)
from bncourse.nn import GhostBatchNorm1d


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_children()]


def test_blocks_put_bn_before_or_after_the_activation_and_drop_the_redundant_bias():
    before = ablation_mlp(8, 3, depth=2, order="bn_act")
    after = ablation_mlp(8, 3, depth=2, order="act_bn", noise=(0.5, 1.5))
    plain = ablation_mlp(8, 3, depth=2, norm=False, activation="tanh")
    assert _names(before) == ["flatten", "linear1", "bn1", "act1", "linear2", "bn2", "act2", "head"]
    assert _names(after)[1:5] == ["linear1", "act1", "bn1", "noise1"]
    assert _names(plain)[1:3] == ["linear1", "act1"] and isinstance(plain.act1, nn.Tanh)
    assert before.linear1.bias is None and plain.linear1.bias is not None
    assert ablation_mlp(8, 3, bias=True).linear1.bias is not None
    assert isinstance(ablation_mlp(8, 3, ghost_batch_size=4).bn1, GhostBatchNorm1d)


def test_init_scale_sets_the_weight_standard_deviation_and_seed_fixes_the_weights():
    model = ablation_mlp(400, 3, width=400, init_scale=3.0, seed=1)
    assert model.linear2.weight.std().item() == pytest.approx(3.0 / math.sqrt(400), rel=0.02)
    again = ablation_mlp(400, 3, width=400, init_scale=3.0, seed=1)
    torch.testing.assert_close(model.linear1.weight, again.linear1.weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"depth": 0},
        {"activation": "gelu"},
        {"order": "sideways"},
        {"init_scale": -1.0},
        {"norm": False, "ghost_batch_size": 4},
        {"norm": False, "noise": (1.0, 2.0)},
    ],
)
def test_bad_ablations_are_refused(options):
    with pytest.raises(ValueError):
        ablation_mlp(8, 3, **options)


def test_shifting_noise_is_one_affine_map_per_unit_and_step_and_off_in_eval():
    noise = ShiftingNoise(shift=0.5, scale=1.5)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = noise(x)
    # the same scale s_j and shift m_j for every sample: y_ij - y_kj = s_j (x_ij - x_kj)
    s = (y[0] - y[1]) / (x[0] - x[1])
    torch.testing.assert_close((y[2] - y[3]) / (x[2] - x[3]), s)
    assert bool(((s >= 1 / 1.5 - 1e-6) & (s <= 1.5 + 1e-6)).all())
    m = y[0] - s * x[0]
    assert bool((m.abs() <= 0.5 + 1e-6).all())
    assert not torch.equal(noise(x), y)  # redrawn at the next step
    noise.eval()
    assert torch.equal(noise(x), x)
    with pytest.raises(ValueError):
        ShiftingNoise(scale=0.5)


def test_the_direction_probe_matches_a_hand_computed_step_and_restores_the_model():
    gen = torch.Generator().manual_seed(0)
    model = ablation_mlp(5, 3, depth=1, width=4, seed=0)
    x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    probe = probe_gradient_direction(model, x, y, etas=[0.5])
    assert not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # by hand, on a copy in training mode
    twin = ablation_mlp(5, 3, depth=1, width=4, seed=0).train()
    loss = nn.functional.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, list(twin.parameters()))
    with torch.no_grad():
        for p, g in zip(twin.parameters(), grads, strict=True):
            p -= 0.5 * g
    loss2 = nn.functional.cross_entropy(twin(x), y)
    grads2 = torch.autograd.grad(loss2, list(twin.parameters()))
    g, g2 = (torch.cat([t.reshape(-1) for t in gs]) for gs in (grads, grads2))
    assert probe.losses == pytest.approx([loss.item(), loss2.item()], rel=1e-5)
    assert probe.gradient_change == pytest.approx((g2 - g).norm().item(), rel=1e-4)
    assert probe.beta == pytest.approx((g2 - g).norm().item() / (0.5 * g.norm().item()), rel=1e-4)
    assert probe.loss_range == pytest.approx(abs(loss.item() - loss2.item()), rel=1e-4, abs=1e-7)


def test_the_probe_draws_the_same_noise_at_every_point():
    model = ablation_mlp(5, 3, depth=2, width=4, noise=(1.0, 2.0), seed=0)
    # Data of its own seed, not of the tests run before: on about 3% of draws a step of 1e-3
    # crosses a ReLU's kink and changes the gradient by more than 1% (new noise would change it
    # by about 100%).
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=data), torch.randint(0, 3, (16,), generator=data)
    first = probe_gradient_direction(model, x, y, etas=[1e-3], seed=3)
    again = probe_gradient_direction(model, x, y, etas=[1e-3], seed=3)
    assert first == again
    assert first.gradient_change < 0.01 * first.gradient_norm  # a tiny step, no new noise
    with pytest.raises(ValueError):
        probe_gradient_direction(model, x, y, etas=[0.0])


def test_saturation_counts_tanh_inputs_beyond_the_slope_threshold():
    model = nn.Sequential(nn.Identity(), nn.Tanh())
    z = torch.linspace(-4, 4, 801).reshape(-1, 1)
    edge = math.atanh(math.sqrt(0.9))  # 1 - tanh(z)^2 = 0.1
    assert saturation(model, z) == [pytest.approx((z.abs() > edge).float().mean().item())]
    with pytest.raises(ValueError, match="tanh or sigmoid"):
        saturation(nn.Sequential(nn.ReLU()), z)


def test_bn_keeps_tanh_units_out_of_saturation_that_large_weights_cause():
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    plain = ablation_mlp(64, 10, activation="tanh", norm=False, init_scale=3.0, seed=0)
    normed = ablation_mlp(64, 10, activation="tanh", init_scale=3.0, seed=0)
    assert min(saturation(plain, x)) > 0.3
    assert max(saturation(normed, x)) < 0.1


def test_weight_gradient_norms_are_those_of_autograd():
    model = ablation_mlp(5, 3, depth=2, width=4, seed=0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    norms = weight_gradient_norms(model, x, y)
    loss = nn.functional.cross_entropy(model.train()(x), y)
    loss.backward()
    assert norms == pytest.approx(
        [model.linear1.weight.grad.norm().item(), model.linear2.weight.grad.norm().item()]
    )


def test_injected_noise_makes_the_next_layer_input_drift():
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    calm = input_drift(ablation_mlp(16, 3, seed=0), x, batch_size=64, batches=8)
    moved = input_drift(ablation_mlp(16, 3, noise=(1.0, 2.0), seed=0), x, 64, 8)
    assert len(calm) == 2 and min(m / c for m, c in zip(moved, calm, strict=True)) > 3


def test_largest_stable_lr_takes_the_largest_rate_reaching_the_threshold():
    acc = np.array([[[90, 10], [95, 80], [20, 85]]])  # 1 scale x 3 lrs x 2 seeds
    out = largest_stable_lr(acc, [0.1, 1.0, 10.0], threshold=80)
    np.testing.assert_array_equal(out, [[1.0, 10.0]])
    assert np.isnan(largest_stable_lr(acc, [0.1, 1.0, 10.0], threshold=99)).all()


def test_subset_keeps_the_test_set_and_draws_the_training_samples_by_seed():
    from bncourse.lab.data import make_synthetic

    data = make_synthetic(num_samples=200)
    small = subset(data, 50, seed=1)
    assert small.num_train == 50 and torch.equal(small.x_test, data.x_test)
    assert torch.equal(subset(data, 50, seed=1).x_train, small.x_train)


def test_a_bias_before_bn_changes_nothing_and_gets_no_gradient():
    b = bias_before_bn(epochs=1)
    assert b["output_difference"] < 1e-4 * b["output_scale"]
    assert b["bias_grad"] < 1e-4 * b["weight_grad"]
    assert b["bias_moved"] < 1e-4 * b["bias_size"]


def test_the_experiments_return_one_value_per_seed_and_score_a_diverged_run_as_chance():
    from bncourse.lab import why_bn

    ics = why_bn.noise_and_smoothness({"BN": {}, "no BN": {"norm": False}}, seeds=[0, 1], epochs=1)
    assert set(ics) == {"BN", "no BN"}
    assert all(v.shape == (2,) for r in ics.values() for v in r.values())
    sat = why_bn.saturation_experiment(seeds=[0], depth=2, epochs=1)
    assert sat["no BN"]["sat_init"].shape == (1, 2)
    sweep = why_bn.stability_sweep([1.0], [1e30], seeds=[0], epochs=1, depth=1)
    assert sweep["no BN"].shape == (1, 1, 1)
    assert sweep["no BN"][0, 0, 0] == pytest.approx(10.0)  # loss overflowed: chance, not NaN
    gaps = why_bn.ghost_gap([4], 32, seeds=[0], n_train=64, epochs=1)
    r = gaps[4]
    np.testing.assert_allclose(r["gap"], r["train"] - r["test"])


def _ghosts(gap_shift: dict[int, float], test_shift: dict[int, float]) -> dict[int, dict]:
    """Per-seed gap and test accuracy of plain BN (key 64) plus a shift for each ghost size."""
    rng = np.random.default_rng(0)
    gap, test = 8 + rng.normal(0, 1, 10), 92 + rng.normal(0, 1, 10)
    out = {64: {"gap": gap, "test": test}}
    for g in gap_shift:
        out[g] = {
            "gap": gap + gap_shift[g] + rng.normal(0, 0.1, 10),
            "test": test + test_shift[g] + rng.normal(0, 0.1, 10),
        }
    return out


def test_the_ghost_verdict_tests_every_ghost_size_against_plain_bn():
    # ghost 4: smaller gap, no higher accuracy; ghost 16: smaller gap and higher accuracy
    runs = _ghosts({4: -3.0, 16: -2.0}, {4: 0.0, 16: 1.5})
    text = ghost_verdict(runs, 64, 1.0)
    assert (
        "ghost batches of 4 gave a smaller train-test gap (-3.0 points) and the same test" in text
    )
    assert "ghost batches of 16 gave a smaller train-test gap (-" in text
    assert "points) and a higher test accuracy (+1.5 points)" in text
    assert ghost_conclusion(runs, 64, 1.0).startswith("with ghost batches of 16 the extra noise")
    assert "did not rise" not in text

    no_gain = _ghosts({4: -3.0, 16: -2.0}, {4: 0.0, 16: 0.0})
    assert "the test accuracy did not rise" in ghost_conclusion(no_gain, 64, 1.0)
    no_gap = _ghosts({4: 0.0, 16: 3.0}, {4: 0.0, 16: 0.0})
    assert ghost_conclusion(no_gap, 64, 1.0).startswith("no ghost batch size tried narrowed")
    assert "a larger train-test gap" in ghost_verdict(no_gap, 64, 1.0)
