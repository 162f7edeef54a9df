"""Batch norm of ``bncourse.nn`` against ``torch.nn``: outputs, gradients, buffers, state dicts.

Tolerances. Two correct implementations of batch norm differ only by rounding: every value passes
through about ten correctly rounded operations and sums of at most 27 terms per channel. With unit
roundoff u = 2**-53 ~ 1.1e-16 (float64) and 2**-24 ~ 6e-8 (float32), and inputs, parameters and
upstream gradients of order 1 (standard deviations between 0.5 and 3), the differences stay below
1e-13 and 1e-6 respectively, relative to the largest value compared. The tolerances below (1e-10
and 1e-5) keep a margin of 10x or more, while every convention error is far larger: biased instead
of unbiased running variance is off by 1/(n-1) >= 3.8 % here, a flipped momentum by a factor
0.7/0.3, eps outside the square root by about eps/sigma (>= 3e-4 for eps = 1e-3, and still 1e4
times the float64 tolerance for eps = 1e-5).

The absolute part of the tolerance is scaled by the largest magnitude of the reference (see
``assert_matches``): the input gradient is a difference of terms of order |weight| / sigma, which
reach 40 when a channel of a three-row batch has sigma ~ 0.15, and rounding errors scale with those
terms, not with the (smaller) difference.
"""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as TF

from bncourse import nn as bnn
from bncourse.nn import functional as F

TOLERANCE = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}

# Tiny batches first: with n values per channel the running variance is n/(n-1) times the biased
# one, so (2, 3) and (2, 3, 1) double it and a biased/unbiased mix-up cannot hide.
SHAPES = [(2, 3), (3, 5), (2, 3, 1), (4, 3, 5), (2, 3, 2, 1), (3, 4, 3, 3)]
MOMENTA = [0.1, 0.3, None]
EPSILONS = [1e-5, 1e-3]
DTYPES = [torch.float32, torch.float64]
TRAIN_STEPS = 3

PARITY_GRID = list(
    itertools.product(SHAPES, MOMENTA, EPSILONS, [True, False], [True, False], DTYPES)
)


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to stalls on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, tol: dict, what: str = "") -> None:
    """assert_close with the absolute tolerance scaled by the largest reference magnitude (>= 1)."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual,
        expected,
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        msg=(lambda m: f"{what}: {m}") if what else None,
    )


def assert_gradients_match(grads, ref_grads, tol: dict, what: str) -> None:
    """Gradients w.r.t. (input, weight, bias), as many as the module has parameters."""
    names = ("input", "weight", "bias")
    for name, g, ref_g in zip(names, grads, ref_grads, strict=False):
        assert_matches(g, ref_g, tol, f"{what} gradient w.r.t. {name}")
    assert len(grads) == len(ref_grads)


def module_classes(shape: tuple[int, ...]) -> tuple[type, type]:
    """(ours, torch's) batch-norm class for an input shape."""
    if len(shape) == 4:
        return bnn.BatchNorm2d, torch.nn.BatchNorm2d
    return bnn.BatchNorm1d, torch.nn.BatchNorm1d


def draw(
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-channel shifted and scaled normal values, drawn on CPU and then moved to ``device``."""
    channels = shape[1]
    broadcast = (1, channels, *([1] * (len(shape) - 2)))
    scale = torch.linspace(0.5, 3.0, channels, dtype=torch.float64).reshape(broadcast)
    shift = torch.linspace(-2.0, 1.5, channels, dtype=torch.float64).reshape(broadcast)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * scale + shift
    return x.to(device=device, dtype=dtype)


def make_pair(
    shape: tuple[int, ...],
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    **options,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our module and torch's with the same options and the same random affine parameters."""
    ours_cls, torch_cls = module_classes(shape)
    channels = shape[1]
    ours = ours_cls(channels, device=device, dtype=dtype, **options)
    theirs = torch_cls(channels, device=device, dtype=dtype, **options)
    with torch.no_grad():
        for name in ("weight", "bias"):
            if getattr(theirs, name) is not None:
                value = draw((1, channels), generator, dtype, device).reshape(channels)
                getattr(ours, name).copy_(value)
                getattr(theirs, name).copy_(value)
    return ours, theirs


def forward_and_grads(
    module: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Output and the gradients of sum(output * upstream) w.r.t. input, weight and bias."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    wrt = [x] + [p for p in (module.weight, module.bias) if p is not None]
    grads = torch.autograd.grad(out, wrt, grad_outputs=upstream)
    return out.detach(), list(grads)


def assert_buffers_match(ours: torch.nn.Module, theirs: torch.nn.Module, tol: dict) -> None:
    for name in ("running_mean", "running_var"):
        mine, ref = getattr(ours, name), getattr(theirs, name)
        assert (mine is None) == (ref is None), name
        if ref is not None:
            assert_matches(mine, ref, tol, name)
    mine, ref = ours.num_batches_tracked, theirs.num_batches_tracked
    assert (mine is None) == (ref is None)
    if ref is not None:
        assert torch.equal(mine, ref), (mine, ref)


def check_module_parity(
    shape: tuple[int, ...],
    momentum: float | None,
    eps: float,
    affine: bool,
    track: bool,
    dtype: torch.dtype,
    device: torch.device | str,
) -> None:
    """Several training steps, then eval, then state dicts loaded both ways."""
    generator = torch.Generator().manual_seed(2024)
    tol = TOLERANCE[dtype]
    options = {"momentum": momentum, "eps": eps, "affine": affine, "track_running_stats": track}
    ours, theirs = make_pair(shape, generator, dtype, device, **options)

    for step in range(TRAIN_STEPS):
        x = draw(shape, generator, dtype, device)
        upstream = draw(shape, generator, dtype, device)
        out, grads = forward_and_grads(ours, x, upstream)
        ref_out, ref_grads = forward_and_grads(theirs, x, upstream)
        assert_matches(out, ref_out, tol, f"step {step} output")
        assert_gradients_match(grads, ref_grads, tol, f"step {step}")
        assert_buffers_match(ours, theirs, tol)

    ours.eval()
    theirs.eval()
    x = draw(shape, generator, dtype, device)
    upstream = draw(shape, generator, dtype, device)
    out, grads = forward_and_grads(ours, x, upstream)
    ref_out, ref_grads = forward_and_grads(theirs, x, upstream)
    assert_matches(out, ref_out, tol, "eval output")
    assert_gradients_match(grads, ref_grads, tol, "eval")
    assert_buffers_match(ours, theirs, tol)

    ours_state, torch_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(torch_state)
    assert ours_state._metadata[""]["version"] == torch_state._metadata[""]["version"]

    ours_cls, torch_cls = module_classes(shape)
    channels = shape[1]
    torch_loaded = torch_cls(channels, device=device, dtype=dtype, **options).eval()
    torch_loaded.load_state_dict(ours_state)  # strict: no missing or unexpected keys
    ours_loaded = ours_cls(channels, device=device, dtype=dtype, **options).eval()
    ours_loaded.load_state_dict(torch_state)
    for loaded, source in ((torch_loaded, ours_state), (ours_loaded, torch_state)):
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, source[key]), key
    with torch.no_grad():
        assert_matches(torch_loaded(x), out, tol, "torch module loaded from our state dict")
        assert_matches(ours_loaded(x), ref_out, tol, "our module loaded from torch's state dict")


@pytest.mark.parametrize(
    ("shape", "momentum", "eps", "affine", "track", "dtype"),
    PARITY_GRID,
    ids=[
        f"{'x'.join(map(str, s))}-m{m}-eps{e}-{'affine' if a else 'noaffine'}-"
        f"{'track' if t else 'notrack'}-{str(d).removeprefix('torch.')}"
        for s, m, e, a, t, d in PARITY_GRID
    ],
)
def test_module_parity_with_torch(shape, momentum, eps, affine, track, dtype):
    check_module_parity(shape, momentum, eps, affine, track, dtype, "cpu")


# A representative corner of the grid on every device (CUDA where available).
DEVICE_GRID = list(
    itertools.product([(2, 3), (4, 3, 5), (3, 4, 3, 3)], [0.3, None], [True, False], DTYPES)
)


@pytest.mark.parametrize(
    ("shape", "momentum", "track", "dtype"),
    DEVICE_GRID,
    ids=[
        f"{'x'.join(map(str, s))}-m{m}-{'track' if t else 'notrack'}-{str(d).removeprefix('torch.')}"
        for s, m, t, d in DEVICE_GRID
    ],
)
def test_module_parity_on_device(device, shape, momentum, track, dtype):
    check_module_parity(shape, momentum, 1e-5, True, track, dtype, device)


def test_constructor_signature_matches_torch():
    def arguments(cls):
        params = inspect.signature(cls.__init__).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    assert arguments(bnn.BatchNorm1d) == arguments(torch.nn.BatchNorm1d)
    assert arguments(bnn.BatchNorm2d) == arguments(torch.nn.BatchNorm2d)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"momentum": None, "eps": 1e-3},
        {"affine": False, "track_running_stats": False},
        {"bias": False},
    ],
)
def test_parameters_buffers_and_repr_match_torch(options):
    for ours_cls, torch_cls in ((bnn.BatchNorm1d, torch.nn.BatchNorm1d),) + (
        (bnn.BatchNorm2d, torch.nn.BatchNorm2d),
    ):
        ours, theirs = ours_cls(4, **options), torch_cls(4, **options)
        assert list(ours._parameters) == list(theirs._parameters)
        assert list(ours._buffers) == list(theirs._buffers)
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
            assert ours.state_dict()[key].dtype == value.dtype, key
        assert ours.extra_repr() == theirs.extra_repr()
        assert repr(ours) == repr(theirs)


def test_bias_false_matches_torch():
    generator = torch.Generator().manual_seed(5)
    ours, theirs = make_pair((3, 4, 3, 3), generator, torch.float64, bias=False)
    x = draw((3, 4, 3, 3), generator, torch.float64)
    upstream = draw((3, 4, 3, 3), generator, torch.float64)
    out, grads = forward_and_grads(ours, x, upstream)
    ref_out, ref_grads = forward_and_grads(theirs, x, upstream)
    assert_matches(out, ref_out, TOLERANCE[torch.float64])
    assert_gradients_match(grads, ref_grads, TOLERANCE[torch.float64], "bias=False")


def test_state_dict_without_num_batches_tracked_loads_like_torch():
    """A version-1 state dict (before num_batches_tracked existed) keeps the module's own count."""
    old = torch.nn.BatchNorm1d(3).state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    ours, theirs = bnn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    ours.num_batches_tracked.fill_(7)
    theirs.num_batches_tracked.fill_(7)
    ours.load_state_dict(old)  # strict loading: the missing key is filled in, not reported
    theirs.load_state_dict(old)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 7


def trained_module(cls, shape, generator, dtype=torch.float64, steps=4, **options):
    module = cls(shape[1], dtype=dtype, **options)
    for _ in range(steps):
        module(draw(shape, generator, dtype))
    return module


@pytest.mark.parametrize(
    ("cls", "shape"), [(bnn.BatchNorm1d, (5, 3)), (bnn.BatchNorm2d, (4, 3, 2, 2))]
)
def test_eval_does_not_change_buffers(cls, shape):
    generator = torch.Generator().manual_seed(1)
    module = trained_module(cls, shape, generator, momentum=0.3).eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for _ in range(3):
        module(draw(shape, generator, torch.float64))
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(bnn.BatchNorm1d, (64, 3)), (bnn.BatchNorm1d, (64, 3, 4)), (bnn.BatchNorm2d, (64, 3, 2, 2))],
)
def test_eval_output_does_not_depend_on_the_rest_of_the_batch(cls, shape):
    generator = torch.Generator().manual_seed(2)
    module = trained_module(cls, (8, *shape[1:]), generator).eval()
    batch = draw(shape, generator, torch.float64)
    whole = module(batch)
    for i in (0, 17, 63):
        alone = module(batch[i : i + 1])  # a batch of one is fine in eval mode
        assert torch.equal(alone, whole[i : i + 1])


def test_no_grad_alone_does_not_switch_to_eval():
    generator = torch.Generator().manual_seed(3)
    x = draw((6, 3, 4), generator, torch.float64)
    ours, theirs = (
        bnn.BatchNorm1d(3, dtype=torch.float64),
        torch.nn.BatchNorm1d(3, dtype=torch.float64),
    )
    with torch.no_grad():
        out = ours(x)
        ref = theirs(x)
    assert ours.training
    assert int(ours.num_batches_tracked) == 1
    batch_mean = x.mean(dim=(0, 2))
    torch.testing.assert_close(ours.running_mean, 0.1 * batch_mean, rtol=1e-12, atol=0)
    # The output is normalized with batch statistics: zero mean, unit biased variance per channel.
    torch.testing.assert_close(
        out.mean(dim=(0, 2)), torch.zeros(3, dtype=x.dtype), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64])
    assert_buffers_match(ours, theirs, TOLERANCE[torch.float64])


def test_momentum_none_is_the_cumulative_average():
    """After k steps with momentum=None the buffers are the plain averages of the k batch statistics."""
    generator = torch.Generator().manual_seed(4)
    ours = bnn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    theirs = torch.nn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    means, unbiased_vars = [], []
    for n in (2, 5, 3, 9, 4):  # unequal batch sizes: each batch counts once, whatever its size
        x = draw((n, 3), generator, torch.float64)
        ours(x)
        theirs(x)
        means.append(x.mean(dim=0))
        unbiased_vars.append(x.var(dim=0, unbiased=True))
    k = len(means)
    assert int(ours.num_batches_tracked) == k
    torch.testing.assert_close(
        ours.running_mean, torch.stack(means).mean(0), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(
        ours.running_var, torch.stack(unbiased_vars).mean(0), rtol=1e-12, atol=0
    )
    assert_buffers_match(ours, theirs, TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_single_step_closed_form_with_momentum_0_3(dtype):
    """From (0, 1): running_mean = 0.3 * mean exactly; running_var = 0.7 + 0.3 * n/(n-1) * biased var."""
    generator = torch.Generator().manual_seed(6)
    x = draw((2, 3), generator, dtype)  # n = 2: the unbiased variance is twice the biased one
    module = bnn.BatchNorm1d(3, momentum=0.3, dtype=dtype)
    module(x)
    assert torch.equal(module.running_mean, 0.3 * x.mean(dim=0))
    expected_var = 0.7 + 0.3 * 2 * x.var(dim=0, unbiased=False)
    torch.testing.assert_close(module.running_var, expected_var, **TOLERANCE[dtype])
    theirs = torch.nn.BatchNorm1d(3, momentum=0.3, dtype=dtype)
    theirs(x)
    torch.testing.assert_close(theirs.running_mean, 0.3 * x.mean(dim=0), **TOLERANCE[dtype])
    torch.testing.assert_close(theirs.running_var, expected_var, **TOLERANCE[dtype])


@pytest.mark.parametrize(
    ("cls", "torch_cls", "shape"),
    [
        (bnn.BatchNorm1d, torch.nn.BatchNorm1d, (5, 3)),
        (bnn.BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 3, 2)),
    ],
)
def test_without_tracking_eval_uses_batch_statistics(cls, torch_cls, shape):
    generator = torch.Generator().manual_seed(7)
    ours = cls(3, track_running_stats=False, dtype=torch.float64).eval()
    theirs = torch_cls(3, track_running_stats=False, dtype=torch.float64).eval()
    assert (
        ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
    )
    x = draw(shape, generator, torch.float64)
    dims = [0, *range(2, len(shape))]
    view = (1, 3, *([1] * (len(shape) - 2)))
    mean = x.mean(dim=dims).reshape(view)
    var = x.var(dim=dims, unbiased=False).reshape(view)
    expected = (x - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(ours(x), expected, **TOLERANCE[torch.float64])
    torch.testing.assert_close(ours(x), theirs(x), **TOLERANCE[torch.float64])


# Running statistics are optional in training mode only (evaluation without them is an error,
# checked in test_nn_errors.py).
FUNCTIONAL_GRID = [
    case
    for case in itertools.product(
        [(2, 3), (4, 3, 5), (3, 4, 3, 3)],
        [True, False],  # training
        [True, False],  # weight and bias given
        [True, False],  # running statistics given
        [0.3],
        DTYPES,
    )
    if case[1] or case[3]
]


@pytest.mark.parametrize(
    ("shape", "training", "affine", "running", "momentum", "dtype"),
    FUNCTIONAL_GRID,
    ids=[
        f"{'x'.join(map(str, s))}-{'train' if t else 'eval'}-{'affine' if a else 'noaffine'}-"
        f"{'running' if r else 'norunning'}-m{m}-{str(d).removeprefix('torch.')}"
        for s, t, a, r, m, d in FUNCTIONAL_GRID
    ],
)
def test_functional_batch_norm_parity(shape, training, affine, running, momentum, dtype):
    generator = torch.Generator().manual_seed(8)
    tol = TOLERANCE[dtype]
    channels = shape[1]
    x = draw(shape, generator, dtype)
    upstream = draw(shape, generator, dtype)
    weight = draw((1, channels), generator, dtype).reshape(channels) if affine else None
    bias = draw((1, channels), generator, dtype).reshape(channels) if affine else None
    stats = (
        draw((1, channels), generator, dtype).reshape(channels),
        draw((1, channels), generator, dtype).reshape(channels).abs() + 0.5,
    )

    def run(fn):
        mean, var = (s.clone() for s in stats) if running else (None, None)
        inputs = [x.clone().requires_grad_(True)]
        w = weight.clone().requires_grad_(True) if affine else None
        b = bias.clone().requires_grad_(True) if affine else None
        out = fn(inputs[0], mean, var, w, b, training, momentum, 1e-3)
        grads = torch.autograd.grad(out, inputs + [t for t in (w, b) if t is not None], upstream)
        return out, grads, mean, var

    out, grads, mean, var = run(F.batch_norm)
    ref_out, ref_grads, ref_mean, ref_var = run(TF.batch_norm)
    assert_matches(out, ref_out, tol, "output")
    assert_gradients_match(grads, ref_grads, tol, "functional")
    if running:
        assert_matches(mean, ref_mean, tol, "running_mean")
        assert_matches(var, ref_var, tol, "running_var")
        if not training:
            assert torch.equal(mean, stats[0]) and torch.equal(var, stats[1])


@pytest.mark.parametrize("training", [True, False])
def test_switching_tracking_off_after_construction_matches_torch(training):
    """With buffers but track_running_stats=False: training leaves them alone, eval uses them."""
    generator = torch.Generator().manual_seed(9)
    shape = (4, 3, 5)
    ours, theirs = make_pair(shape, generator, torch.float64, momentum=0.3)
    first = draw(shape, generator, torch.float64)
    for module in (ours, theirs):
        module(first)  # a first tracked step
        module.track_running_stats = False
        module.train(training)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    x = draw(shape, generator, torch.float64)
    upstream = draw(shape, generator, torch.float64)
    out, grads = forward_and_grads(ours, x, upstream)
    ref_out, ref_grads = forward_and_grads(theirs, x, upstream)
    assert_matches(out, ref_out, TOLERANCE[torch.float64], "output")
    assert_gradients_match(grads, ref_grads, TOLERANCE[torch.float64], "switched")
    for key, value in ours.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert_buffers_match(ours, theirs, TOLERANCE[torch.float64])
