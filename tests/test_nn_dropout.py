"""Statistical tests of dropout, Gaussian dropout and Uout (functional and modules).

All three multiply the input by independent noise z with E[z] = 1 in training:

    dropout            z = m / (1 - p),  m ~ Bernoulli(1 - p)     Var z = p / (1 - p)
    gaussian_dropout   z ~ N(1, p / (1 - p))                      Var z = p / (1 - p)
    uout               z = 1 + r,        r ~ U(-beta, beta)       Var z = beta**2 / 3

Tolerances come from these distributions. For a fixed input x of n elements and out_i = x_i z_i:

    mean(out)    has expectation mean(x)             and standard deviation sqrt(v * sum x_i**2) / n
    mean(out**2) has expectation (1 + v) * mean(x**2) and standard deviation sqrt(w * sum x_i**4) / n

with v = Var z and w = Var z**2 (derived in ``NOISES``). Every sample statistic is checked within
5 standard deviations (a two-sided normal tail of 5.7e-7 per check; the seeds are fixed, so the
outcome is deterministic, and 5 sigma is still far tighter than any convention error: with
p = 0.3, keeping with probability p instead of dropping with it changes Var z from 0.43 to 2.33).
The train-time variance then follows: var(out) = mean(out**2) - mean(out)**2, whose expectation
(to O(1/n)) is the closed form Var[x] + v * E[x**2].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as TF

from bncourse import nn as bnn
from bncourse.nn import functional as F

SIGMAS = 5.0
P = 0.3  # asymmetric: a flipped keep/drop convention gives 0.7 and fails every check
BETA = 0.3
N_ROWS, N_COLS = 400, 500  # n = 200,000 elements per draw


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """One intra-op thread: these tensors are too small to gain from more, and it avoids stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Noise:
    """A multiplicative noise z with E[z] = 1, Var z = v and Var z**2 = w."""

    name: str
    functional: Callable
    module: Callable[[], torch.nn.Module]
    v: float
    w: float


def _bernoulli_noise(p: float) -> tuple[float, float]:
    # z = m / q with q = 1 - p: z**2 = m / q**2, Var m = p q, so Var z**2 = p q / q**4 = p / q**3.
    q = 1 - p
    return p / q, p / q**3


def _gaussian_noise(p: float) -> tuple[float, float]:
    # z ~ N(1, v): E z**4 = 1 + 6 v + 3 v**2, (E z**2)**2 = (1 + v)**2, so Var z**2 = 4 v + 2 v**2.
    v = p / (1 - p)
    return v, 4 * v + 2 * v**2


def _uniform_noise(beta: float) -> tuple[float, float]:
    # z = 1 + r, E r**2 = beta**2 / 3, E r**4 = beta**4 / 5, odd moments 0:
    # Var z**2 = Var(2 r + r**2) = 4 beta**2 / 3 + beta**4 / 5 - beta**4 / 9.
    return beta**2 / 3, 4 * beta**2 / 3 + beta**4 / 5 - beta**4 / 9


NOISES = {
    "dropout": Noise(
        "dropout",
        lambda x, g: F.dropout(x, P, training=True, generator=g),
        lambda: bnn.Dropout(P),
        *_bernoulli_noise(P),
    ),
    "gaussian_dropout": Noise(
        "gaussian_dropout",
        lambda x, g: F.gaussian_dropout(x, P, training=True, generator=g),
        lambda: bnn.GaussianDropout(P),
        *_gaussian_noise(P),
    ),
    "uout": Noise(
        "uout",
        lambda x, g: F.uout(x, BETA, training=True, generator=g),
        lambda: bnn.Uout(BETA),
        *_uniform_noise(BETA),
    ),
}


def draw_input(device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """x = 1 + 0.5 * N(0, 1), float64, drawn on CPU and moved; no exact zeros."""
    generator = torch.Generator().manual_seed(seed)
    x = 1 + 0.5 * torch.randn(N_ROWS, N_COLS, generator=generator, dtype=torch.float64)
    assert bool((x != 0).all())
    return x.to(device)


def noise_generator(device: torch.device | str, seed: int = 1) -> torch.Generator:
    """The noise is drawn on the input's device, so its generator lives there too."""
    return torch.Generator(device=device).manual_seed(seed)


def apply(noise: Noise, api: str, x: torch.Tensor, device) -> torch.Tensor:
    """Train-mode output through the functional form (explicit generator) or the module."""
    if api == "functional":
        return noise.functional(x, noise_generator(device))
    module = noise.module()
    assert module.training
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(1)
        return module(x)


def assert_within(value: float, expected: float, sd: float, what: str) -> None:
    assert abs(value - expected) <= SIGMAS * sd, (
        f"{what}: {value:.6g}, expected {expected:.6g} +- {SIGMAS:g} * {sd:.3g}"
    )


@pytest.mark.parametrize("api", ["functional", "module", "torch"])
def test_drop_fraction_within_binomial_bound(device, api):
    # Each element is dropped independently with probability p, so the number dropped is
    # Binomial(n, p): the fraction has mean p and standard deviation sqrt(p (1 - p) / n).
    x = draw_input(device)
    if api == "torch":  # the reference: torch.nn.functional.dropout obeys the same bound
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(1)
            out = TF.dropout(x, P, training=True)
    else:
        out = apply(NOISES["dropout"], api, x, device)
    n = x.numel()
    fraction = (out == 0).double().mean().item()
    assert_within(fraction, P, math.sqrt(P * (1 - P) / n), "fraction of dropped elements")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_kept_values_are_exactly_scaled_by_one_over_keep_probability(device, dtype):
    x = draw_input(device).to(dtype)
    out = F.dropout(x, P, training=True, generator=noise_generator(device))
    kept = out != 0
    assert torch.equal(out[kept], x[kept] / (1 - P))
    assert 0 < kept.sum() < x.numel()


def test_module_scales_like_the_functional(device):
    x = draw_input(device)
    out = apply(NOISES["dropout"], "module", x, device)
    kept = out != 0
    assert torch.equal(out[kept], x[kept] / (1 - P))


def test_dropout_gradient_goes_through_the_same_mask(device):
    x = draw_input(device).requires_grad_(True)
    upstream = draw_input("cpu", seed=5).to(device)
    out = F.dropout(x, P, training=True, generator=noise_generator(device))
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    mask = (out != 0).to(x.dtype)
    assert torch.equal(grad, mask * upstream / (1 - P))


@pytest.mark.parametrize("name", ["gaussian_dropout", "uout"])
def test_noise_gradient_is_the_same_multiplier(device, name):
    """d sum(out * g) / dx = z * g with the z of the forward pass (redrawn with the same seed)."""
    noise = NOISES[name]
    x = draw_input(device).requires_grad_(True)
    upstream = draw_input("cpu", seed=5).to(device)
    out = noise.functional(x, noise_generator(device))
    (grad,) = torch.autograd.grad((out * upstream).sum(), x)
    z = noise.functional(torch.ones_like(x), noise_generator(device))
    torch.testing.assert_close(grad, z * upstream, rtol=1e-14, atol=0)
    torch.testing.assert_close(out, x * z, rtol=1e-14, atol=0)


@pytest.mark.parametrize("api", ["functional", "module"])
@pytest.mark.parametrize("name", list(NOISES))
def test_train_mean_and_variance_match_closed_form(device, name, api):
    noise = NOISES[name]
    x = draw_input(device)
    out = apply(noise, api, x, device)
    n = x.numel()
    sum_x2, sum_x4 = (x**2).sum().item(), (x**4).sum().item()
    mean_x, mean_x2 = x.mean().item(), sum_x2 / n

    sd_mean = math.sqrt(noise.v * sum_x2) / n
    sd_m2 = math.sqrt(noise.w * sum_x4) / n
    mean_out, m2_out = out.mean().item(), (out**2).mean().item()
    assert_within(mean_out, mean_x, sd_mean, f"{name} mean (preserved)")
    assert_within(m2_out, (1 + noise.v) * mean_x2, sd_m2, f"{name} second moment")

    # Train-time variance against its closed form Var[x] + v * E[x**2] (taken over the fixed x).
    # If both moments are within 5 sd, |var_hat - var| <= 5 sd_m2 + 5 sd_mean (2 |mean| + 5 sd_mean).
    expected_var = (mean_x2 - mean_x**2) + noise.v * mean_x2
    bound = SIGMAS * sd_m2 + SIGMAS * sd_mean * (2 * abs(mean_x) + SIGMAS * sd_mean)
    var_out = m2_out - mean_out**2
    assert abs(var_out - expected_var) <= bound, (name, var_out, expected_var, bound)


@pytest.mark.parametrize("name", list(NOISES))
def test_noise_variance_on_a_constant_input(device, name):
    """On x = 1 the output is z itself: its sample variance estimates Var z (p/(1-p) or beta^2/3)."""
    noise = NOISES[name]
    x = torch.ones(N_ROWS, N_COLS, dtype=torch.float64, device=device)
    z = noise.functional(x, noise_generator(device))
    n = x.numel()
    # Var of the sample variance of n iid values ~ (mu4 - v**2) / n, with mu4 = E (z - 1)**4:
    # Bernoulli: p (p**3 + q**3) / q**3; Gaussian: 3 v**2; uniform: beta**4 / 5.
    q = 1 - P
    mu4 = {
        "dropout": P * (P**3 + q**3) / q**3,
        "gaussian_dropout": 3 * noise.v**2,
        "uout": BETA**4 / 5,
    }[name]
    sd = math.sqrt((mu4 - noise.v**2) / n)
    assert_within(z.var().item(), noise.v, sd, f"{name} noise variance")


@pytest.mark.parametrize("name", list(NOISES))
def test_eval_is_the_identity(device, name):
    noise = NOISES[name]
    x = draw_input(device)
    module = noise.module().eval()
    assert torch.equal(module(x), x)
    functional = {"dropout": F.dropout, "gaussian_dropout": F.gaussian_dropout, "uout": F.uout}[
        name
    ]
    assert torch.equal(functional(x, 0.3, training=False), x)
    leaf = x.clone().requires_grad_(True)
    upstream = draw_input("cpu", seed=5).to(device)
    (grad,) = torch.autograd.grad((module(leaf) * upstream).sum(), leaf)
    assert torch.equal(grad, upstream)


def test_torch_eval_is_the_identity_too():
    x = draw_input("cpu")
    assert torch.equal(torch.nn.Dropout(P).eval()(x), x)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: F.dropout(x, 0.0, training=True),
        lambda x: F.gaussian_dropout(x, 0.0, training=True),
        lambda x: F.uout(x, 0.0, training=True),
        lambda x: bnn.Dropout(0.0)(x),
        lambda x: bnn.GaussianDropout(0.0)(x),
        lambda x: bnn.Uout(0.0)(x),
    ],
    ids=["dropout", "gaussian_dropout", "uout", "Dropout", "GaussianDropout", "Uout"],
)
def test_no_noise_is_the_identity_in_training(call):
    x = draw_input("cpu")
    assert torch.equal(call(x), x)
    assert torch.equal(call(x), TF.dropout(x, 0.0, training=True))


def test_p_one_gives_zeros_like_torch(device):
    x = draw_input(device).requires_grad_(True)
    upstream = draw_input("cpu", seed=5).to(device)
    for out, ref in (
        (F.dropout(x, 1.0, training=True), TF.dropout(x, 1.0, training=True)),
        (bnn.Dropout(1.0)(x), torch.nn.Dropout(1.0)(x)),
    ):
        assert torch.equal(out, torch.zeros_like(x))
        assert torch.equal(out, ref)
        (grad,) = torch.autograd.grad((out * upstream).sum(), x)
        (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), x)
        assert torch.equal(grad, torch.zeros_like(x))
        assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("p", [0.3, 0.5, 0, 1, 0.0, 1.0])
@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_module_interface_matches_torch(p, inplace):
    ours, theirs = bnn.Dropout(p, inplace=inplace), torch.nn.Dropout(p, inplace=inplace)
    assert ours.p == theirs.p and type(ours.p) is type(theirs.p)
    assert ours.inplace == theirs.inplace
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)
    assert dict(ours.named_parameters()) == dict(theirs.named_parameters()) == {}
    assert ours.state_dict().keys() == theirs.state_dict().keys()


def test_dropout_defaults_match_torch():
    assert bnn.Dropout().p == torch.nn.Dropout().p == 0.5
    assert bnn.Dropout().inplace is torch.nn.Dropout().inplace is False
    assert bnn.GaussianDropout().p == 0.5
    assert bnn.Uout().beta == 0.1
    assert repr(bnn.GaussianDropout(P)) == "GaussianDropout(p=0.3)"
    assert repr(bnn.Uout(BETA)) == "Uout(beta=0.3)"


@pytest.mark.parametrize("module_cls", [bnn.Dropout, torch.nn.Dropout])
def test_inplace_dropout_writes_into_its_input(module_cls):
    x = draw_input("cpu")
    original = x.clone()
    out = module_cls(P, inplace=True)(x)
    assert out is x
    dropped = x == 0
    assert 0 < dropped.sum() < x.numel()
    # torch multiplies by 1 / (1 - p) (one rounding more), hence 1e-15 rather than exact equality.
    torch.testing.assert_close(x[~dropped], original[~dropped] / (1 - P), rtol=1e-15, atol=0)
    y = original.clone()
    assert module_cls(P, inplace=True).eval()(y) is y
    assert torch.equal(y, original)


@pytest.mark.parametrize("name", list(NOISES))
def test_generator_makes_the_noise_reproducible(name):
    noise = NOISES[name]
    x = draw_input("cpu")
    global_state = torch.get_rng_state()
    first = noise.functional(x, noise_generator("cpu", seed=11))
    again = noise.functional(x, noise_generator("cpu", seed=11))
    other = noise.functional(x, noise_generator("cpu", seed=12))
    generator = noise_generator("cpu", seed=11)
    consecutive = (noise.functional(x, generator), noise.functional(x, generator))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(consecutive[0], first)
    assert not torch.equal(consecutive[0], consecutive[1])
    # An explicit generator leaves the global random state alone.
    assert torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.parametrize("name", list(NOISES))
def test_modules_follow_the_global_seed(name):
    x = draw_input("cpu")
    module = NOISES[name].module()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        first = module(x)
        torch.manual_seed(3)
        second = module(x)
    assert torch.equal(first, second)
