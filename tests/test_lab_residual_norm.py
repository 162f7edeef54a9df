"""The transformer-style residual block of the practice chapter: BN carries the variance shift,
layer norm keeps much less of it, and nothing shifts without dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bncourse.lab.residual_norm import (
    ResidualBlock,
    output_variance_ratio,
    sample_scale_ratio,
    shift_ratios,
)
from bncourse.lab.stats import compare_ratio, trend_test

SEEDS = range(10)


def _ratios(norm: str, **kw: float) -> np.ndarray:
    return np.array([output_variance_ratio(norm, seed=s, **kw) for s in SEEDS])


def test_without_dropout_layer_norm_computes_the_same_in_both_modes():
    assert output_variance_ratio("ln", p=0.0, seed=3) == pytest.approx(1.0, abs=1e-6)


def test_without_dropout_bn_differs_only_by_its_estimated_statistics():
    # Running statistics from 8 x 256 samples: the relative error of a variance estimate from
    # N samples has standard deviation sqrt(2 / N); allow five of them.
    tolerance = 5 * (2 / (8 * 256)) ** 0.5
    assert np.all(np.abs(_ratios("bn", p=0.0) - 1) < tolerance)


def test_dropout_shrinks_the_bn_blocks_test_time_variance_about_as_the_variances_predict():
    # The branch has the input's standard deviation: train-time variance of the sum is about
    # 1 + 1/(1 - p) (inverted dropout scales the kept values by 1/(1 - p)) against 2 at test time.
    p = 0.3
    predicted = 2 / (1 + 1 / (1 - p))
    ratios = _ratios("bn", p=p, branch=1.0)
    assert np.all(ratios < 1)
    assert abs(np.exp(np.log(ratios).mean()) - predicted) < 0.05  # the branch's mean adds a little


def test_layer_norm_keeps_a_smaller_shift_than_bn_seed_by_seed():
    bn, ln = _ratios("bn", p=0.3), _ratios("ln", p=0.3)
    comparison = compare_ratio(np.abs(np.log(ln)), np.abs(np.log(bn)))
    assert comparison.verdict == "smaller" and comparison.high < 0.5


def test_layer_norm_keeps_each_samples_scale_and_bn_does_not():
    # Layer norm divides each sample by its own spread: the mean square over the features is
    # 1 - eps / (var + eps) in both modes, whatever dropout did.
    for seed in range(3):
        assert sample_scale_ratio("ln", p=0.3, branch=2.0, seed=seed) == pytest.approx(1, abs=1e-4)
        assert sample_scale_ratio("bn", p=0.3, branch=2.0, seed=seed) < 0.9
    assert shift_ratios("bn", seed=5) == (
        output_variance_ratio("bn", seed=5),
        sample_scale_ratio("bn", seed=5),
    )


def test_the_bn_shift_grows_with_the_size_of_the_branch():
    sizes = [0.5, 1.0, 2.0]
    shift = [np.abs(np.log(_ratios("bn", p=0.3, branch=b))) for b in sizes]
    assert trend_test(np.repeat(sizes, len(SEEDS)), np.concatenate(shift)).verdict == "increasing"


def test_the_block_is_the_post_norm_residual_block():
    torch.manual_seed(0)
    block = ResidualBlock(8, 0.3, "ln").eval()
    x = torch.randn(5, 8)
    expected = torch.nn.functional.layer_norm(
        x + block.ff(x), (8,), block.norm.weight, block.norm.bias
    )
    torch.testing.assert_close(block(x), expected)
    assert output_variance_ratio("bn", seed=4) == output_variance_ratio("bn", seed=4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ResidualBlock(8, 0.3, "gn"), "norm must be 'bn' or 'ln'"),
        (lambda: output_variance_ratio("bn", p=1.0), "p must be in"),
        (lambda: output_variance_ratio("bn", branch=0), "branch must be positive"),
        (lambda: output_variance_ratio("bn", batch_size=1), "batch_size"),
    ],
)
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
