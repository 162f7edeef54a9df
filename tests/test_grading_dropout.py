"""bncourse.grading.dropout: statistical checks that catch and name every catalogued dropout
mistake, accept sound implementations, are deterministic given their seed, and refuse the
references."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re

import pytest
import torch
import torch.nn.functional as F

import bncourse.nn
from bncourse.grading import CATALOGUE, CheckFailure
from bncourse.grading import dropout as do
from bncourse.grading.catalogue import book_link
from bncourse.grading.engine import NotImplementedYet

TASKS = ("dropout_forward", "dropout_backward", "gaussian_dropout", "uout")


@pytest.fixture(autouse=True, scope="module")
def _one_cpu_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _quietly(check, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        check(*args, **kwargs)


# The student functions a mutant of each task stands for, and the checks each one runs in.
def _forward_student(flags):
    return functools.partial(do.dropout_variant, **flags)


def _backward_student(flags):
    """A forward and a backward function that together make the pipeline mutant's mistakes."""
    forward_flags = {k: v for k, v in flags.items() if not k.startswith("backward_")}
    mask, scale = flags.get("backward_mask", "forward"), flags.get("backward_scale", "inverted")
    inplace = flags.get("backward_inplace", False)

    def forward(x, p, training, generator=None):
        out, cache = do.dropout_variant(x, p, training, generator, **forward_flags)
        return out, None if cache is None else (cache[0], p, generator)

    def backward(dout, cache):
        if cache is None:
            return dout
        keep, p, generator = cache
        if mask == "fresh":
            keep = torch.empty_like(dout).bernoulli_(1 - p, generator=generator)
        elif mask == "none":
            keep = torch.ones_like(dout)
        factor = {"inverted": 1 / (1 - p), "none": 1.0, "inverse_p": 1 / p}[scale]
        return dout.mul_(keep * factor) if inplace else dout * keep * factor

    return forward, backward


CHECKS = {
    "train": lambda student, **kw: do.check_dropout_train(student, **kw),
    "eval": lambda student, **kw: do.check_dropout_eval(student, **kw),
    "backward": lambda pair, **kw: do.check_dropout_backward(*pair, **kw),
    "gaussian": lambda student, **kw: do.check_gaussian_dropout(student, **kw),
    "uout": lambda student, **kw: do.check_uout(student, **kw),
}
CHECKS_OF_TASK = {
    "dropout_forward": ("train", "eval"),
    "dropout_backward": ("backward",),
    "gaussian_dropout": ("gaussian",),
    "uout": ("uout",),
}
STUDENT_OF_TASK = {
    "dropout_forward": _forward_student,
    "dropout_backward": _backward_student,
    "gaussian_dropout": lambda flags: functools.partial(do.gaussian_dropout_variant, **flags),
    "uout": lambda flags: functools.partial(do.uout_variant, **flags),
}

# For every catalogued mutant: the checks of its task that fail and name it; the task's other
# checks pass.
EXPECTED_FAILURES = {
    ("dropout-no-scaling", "dropout_forward", "none"): {"train"},
    ("dropout-no-scaling", "dropout_forward", "none+classic"): {"train", "eval"},
    ("dropout-no-scaling", "dropout_backward", "none"): {"backward"},
    ("dropout-wrong-scaling", "dropout_forward", "p"): {"train"},
    ("dropout-wrong-scaling", "dropout_forward", "keep"): {"train"},
    ("dropout-keep-drop-confused", "dropout_forward", "p"): {"train"},
    ("dropout-keep-drop-confused", "dropout_forward", "p+inverse_p"): {"train"},
    ("dropout-keep-drop-confused", "dropout_backward", "p+inverse_p+inverse_p"): {
        "train",
        "backward",
    },
    ("dropout-keep-drop-confused", "gaussian_dropout", "keep"): {"gaussian"},
    ("dropout-in-eval", "dropout_forward", "train"): {"eval"},
    ("dropout-in-eval", "dropout_backward", "train"): {"eval", "backward"},
    ("dropout-in-eval", "gaussian_dropout", "train"): {"gaussian"},
    ("dropout-in-eval", "uout", "train"): {"uout"},
    ("dropout-backward-new-mask", "dropout_backward", "fresh"): {"backward"},
    ("dropout-backward-new-mask", "dropout_backward", "none"): {"backward"},
    ("gaussian-std-as-variance", "gaussian_dropout", "variance"): {"gaussian"},
    ("uout-wrong-interval", "uout", "zero_to_beta"): {"uout"},
    ("uout-wrong-interval", "uout", "half_width"): {"uout"},
    ("gaussian-std-p", "gaussian_dropout", "p"): {"gaussian"},
    ("gaussian-noise-mean-zero", "gaussian_dropout", "zero"): {"gaussian"},
    ("gaussian-additive-noise", "gaussian_dropout", "add"): {"gaussian"},
    ("gaussian-additive-noise", "gaussian_dropout", "add+zero"): {"gaussian"},
    ("uout-additive-noise", "uout", "add"): {"uout"},
    ("uout-gaussian-noise", "uout", "normal"): {"uout"},
    ("uout-gaussian-noise", "uout", "normal_matched"): {"uout"},
    ("dropout-mask-shared", "dropout_forward", "shared"): {"train"},
    **{
        ("dropout-generator-ignored", task, source): {check}
        for task, check in (
            ("dropout_forward", "train"),
            ("gaussian_dropout", "gaussian"),
            ("uout", "uout"),
        )
        for source in ("global", "reseeded_global", "fixed_seed")
    },
    ("dropout-input-modified-in-place", "dropout_forward", "True"): {"train"},
    ("dropout-input-modified-in-place", "dropout_backward", "True"): {"backward"},
    ("dropout-input-modified-in-place", "gaussian_dropout", "True"): {"gaussian"},
    ("dropout-input-modified-in-place", "uout", "True"): {"uout"},
}


def _mutants():
    for name, misconception in CATALOGUE.items():
        for task, flag_sets in misconception.mutants.items():
            if task in TASKS:
                for flags in flag_sets:
                    yield name, task, "+".join(str(v) for v in flags.values()), flags


MUTANTS = list(_mutants())


def _named(message: str) -> set[str]:
    return {m.name for m in CATALOGUE.values() if f"[{m.name}]" in message}


def test_expectations_cover_every_mutant_of_the_dropout_tasks():
    assert {(n, t, lb) for n, t, lb, _ in MUTANTS} == set(EXPECTED_FAILURES)


@pytest.mark.parametrize(
    ("name", "task", "label", "flags"), MUTANTS, ids=[f"{n}-{t}-{lb}" for n, t, lb, _ in MUTANTS]
)
def test_each_catalogued_mistake_fails_exactly_its_checks_and_is_named(name, task, label, flags):
    student = STUDENT_OF_TASK[task](flags)
    expected = EXPECTED_FAILURES[(name, task, label)]
    checks = set(CHECKS_OF_TASK[task]) | expected
    for check_name in sorted(checks):
        # The backward mutants' forward function also runs in the forward checks.
        arg = student[0] if task == "dropout_backward" and check_name != "backward" else student
        for seed in (0, 1):
            if check_name not in expected:
                _quietly(CHECKS[check_name], arg, seed=seed)
                continue
            with pytest.raises(CheckFailure) as failure:
                CHECKS[check_name](arg, seed=seed)
            message = str(failure.value)
            assert _named(message) == {name}, (check_name, message)
            assert CATALOGUE[name].feedback in message and CATALOGUE[name].link in message


# --- sound implementations --------------------------------------------------------------------


def forward_where_bernoulli(x, p, training, generator=None):
    if not training:
        return x.clone(), ("eval",)
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator).bool()
    return torch.where(keep, x / (1 - p), torch.zeros_like(x)), ("train", keep, p)


def backward_where(dout, cache):
    if cache[0] == "eval":
        return dout
    _, keep, p = cache
    return torch.where(keep, dout / (1 - p), torch.zeros_like(dout))


def forward_prescaled_float64(x, p, training, generator=None):
    """CS231n style: the cache is the mask already divided by the keep probability."""
    if not training:
        return x, torch.ones_like(x)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    mask = (u < 1 - p).double() / (1 - p)
    return (x.double() * mask).to(x.dtype), mask


def backward_prescaled_float64(dout, mask):
    return (dout.double() * mask).to(dout.dtype)


def gaussian_normal_(x, p, training, generator=None):
    if not training:
        return x
    return x * torch.empty_like(x).normal_(1.0, (p / (1 - p)) ** 0.5, generator=generator)


def gaussian_float64(x, p, training, generator=None):
    if not training:
        return x
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return (x.double() * (1 + math.sqrt(p / (1 - p)) * z)).to(x.dtype)


def uout_uniform_(x, beta, training, generator=None):
    if not training:
        return x
    return x * (1 + torch.empty_like(x).uniform_(-beta, beta, generator=generator))


def uout_loop_free_float64(x, beta, training, generator=None):
    if not training:
        return x
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return (x.double() + x.double() * (2 * beta * u - beta)).to(x.dtype)


@pytest.mark.parametrize(
    ("forward", "backward"),
    [
        (forward_where_bernoulli, backward_where),
        (forward_prescaled_float64, backward_prescaled_float64),
    ],
    ids=["where-bernoulli", "prescaled-float64"],
)
def test_sound_dropout_implementations_pass(forward, backward):
    for seed in (0, 1, None):  # None: drawn when the check runs, as in the notebooks
        _quietly(do.check_dropout_train, forward, seed=seed)
        _quietly(do.check_dropout_eval, forward, seed=seed)
        _quietly(do.check_dropout_backward, forward, backward, seed=seed)


@pytest.mark.parametrize("student", [gaussian_normal_, gaussian_float64], ids=lambda f: f.__name__)
def test_sound_gaussian_implementations_pass(student):
    for seed in (0, 1, None):
        _quietly(do.check_gaussian_dropout, student, seed=seed)


@pytest.mark.parametrize(
    "student", [uout_uniform_, uout_loop_free_float64], ids=lambda f: f.__name__
)
def test_sound_uout_implementations_pass(student):
    for seed in (0, 1, None):
        _quietly(do.check_uout, student, seed=seed)


def test_the_correct_variants_pass_on_many_seeds():
    """Z = 6 bounds: a correct submission fails about once in 10^7 gradings; 40 seeds pass."""
    pair = _backward_student({})
    for seed in range(40):
        _quietly(do.check_dropout_train, do.dropout_variant, seed=seed)
        _quietly(do.check_dropout_backward, *pair, seed=seed)
        _quietly(do.check_gaussian_dropout, do.gaussian_dropout_variant, seed=seed)
        _quietly(do.check_uout, do.uout_variant, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checks_run_on_every_device_and_dtype(device, dtype):
    _quietly(do.check_dropout_train, forward_where_bernoulli, device=device, dtype=dtype)
    _quietly(do.check_dropout_eval, forward_where_bernoulli, device=device, dtype=dtype)
    _quietly(
        do.check_dropout_backward,
        forward_where_bernoulli,
        backward_where,
        device=device,
        dtype=dtype,
    )
    _quietly(do.check_gaussian_dropout, gaussian_normal_, device=device, dtype=dtype)
    _quietly(do.check_uout, uout_uniform_, device=device, dtype=dtype)
    with pytest.raises(CheckFailure, match=r"\[dropout-keep-drop-confused\]"):
        do.check_dropout_train(_forward_student({"keep_prob": "p"}), device=device, dtype=dtype)


def uout_normal_noise(x, beta, training, generator=None):
    if not training:
        return x
    return x + x * beta * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def uout_added_uniform(x, beta, training, generator=None):
    if not training:
        return x
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + beta * (2 * u - 1)


@pytest.mark.parametrize(
    ("student", "name"),
    [(uout_normal_noise, "uout-gaussian-noise"), (uout_added_uniform, "uout-additive-noise")],
    ids=["normal-noise", "added-uniform-noise"],
)
def test_uout_noise_of_the_wrong_kind_is_named_for_what_it_is(student, name):
    for seed in (0, 1):
        with pytest.raises(CheckFailure) as failure:
            do.check_uout(student, seed=seed)
        message = str(failure.value)
        assert _named(message) == {name}, message
        assert CATALOGUE[name].feedback in message


# --- determinism, inputs drawn at check time ---------------------------------------------------


def test_a_seed_fixes_the_inputs_and_the_generator():
    seen = []

    def recorder(x, p, training, generator=None):
        out = forward_where_bernoulli(x, p, training, generator)
        seen.append((x.clone(), out[0].clone()))
        return out

    for _ in range(2):
        _quietly(do.check_dropout_train, recorder, seed=123)
    first, second = seen[: len(seen) // 2], seen[len(seen) // 2 :]
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, second, strict=True)
    )
    seen.clear()
    _quietly(do.check_dropout_train, recorder)
    _quietly(do.check_dropout_train, recorder)
    half = len(seen) // 2
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(seen[:half], seen[half:], strict=True))


def test_an_output_that_ignores_the_input_fails():
    recorded = {}
    for case in do.draw_cases(do.TRAIN_SPECS, training=True, seed=7, device="cpu"):
        for offset in (0, 1):  # the generator's seed, and the other seed the check tries
            generator = case.generator(offset)
            recorded.setdefault(tuple(case.x.shape), {})[generator.initial_seed()] = (
                forward_where_bernoulli(case.x, case.rate, True, generator)
            )

    def replay(x, p, training, generator=None):
        by_seed = recorded[tuple(x.shape)]
        out, cache = by_seed.get(generator.initial_seed(), next(iter(by_seed.values())))
        return out.clone(), cache

    _quietly(do.check_dropout_train, replay, seed=7)  # the same inputs: replay "works"
    with pytest.raises(CheckFailure, match="No catalogued misconception matches"):
        do.check_dropout_train(replay, seed=8)


# --- references refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "student", "match"),
    [
        (
            do.check_dropout_train,
            lambda x, p, training, generator=None: (F.dropout(x, p, training), None),
            "torch.nn.functional.dropout",
        ),
        (
            do.check_dropout_eval,
            lambda x, p, training, generator=None: (torch.nn.Dropout(p).train(training)(x), None),
            "dropout",
        ),
        (
            do.check_dropout_train,
            lambda x, p, training, generator=None: (torch.dropout(x, p, training), None),
            "dropout",
        ),
        (
            do.check_dropout_train,
            lambda x, p, training, generator=None: (
                bncourse.nn.functional.dropout(x, p, training, generator=generator),
                None,
            ),
            "bncourse.nn.functional.dropout",
        ),
        (
            do.check_gaussian_dropout,
            bncourse.nn.functional.gaussian_dropout,
            "bncourse.nn.functional.gaussian_dropout",
        ),
        (
            do.check_uout,
            lambda x, beta, training, generator=None: bncourse.nn.Uout(beta).train(training)(x),
            "bncourse.nn.",
        ),
    ],
    ids=[
        "F.dropout",
        "nn.Dropout",
        "torch.dropout",
        "course-dropout",
        "course-gaussian",
        "course-Uout",
    ],
)
def test_delegating_to_a_reference_is_refused(check, student, match):
    with pytest.raises(CheckFailure, match=match) as failure:
        check(student)
    assert "scores zero" in str(failure.value)


def test_a_delegating_forward_fails_the_backward_check_too():
    def forward(x, p, training, generator=None):
        out = F.dropout(x, p, training)
        return out, (out != 0, p)

    with pytest.raises(CheckFailure, match="dropout_forward and dropout_backward called"):
        do.check_dropout_backward(forward, backward_where)


# --- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "student", "match"),
    [
        (do.check_dropout_train, lambda x, p, training, generator=None: x, "must return a pair"),
        (
            do.check_dropout_train,
            lambda x, p, training, generator=None: (x.double(), None),
            "returned torch.float64 for a torch.float32 input",
        ),
        (do.check_gaussian_dropout, lambda x, p, training, generator=None: x[:1], "shape"),
        (do.check_uout, lambda x, beta, training, generator=None: None, "returned NoneType"),
    ],
    ids=["no-pair", "dtype", "shape", "none"],
)
def test_malformed_returns_get_a_clear_message(check, student, match):
    with pytest.raises(CheckFailure, match=match):
        check(student)


def test_backward_check_wants_two_functions():
    with pytest.raises(CheckFailure, match="expected the function dropout_backward"):
        do.check_dropout_backward(forward_where_bernoulli, None)


_FLOAT = re.compile(r"-?\d+\.\d+(?:e-?\d+)?|\d+e-?\d+")
_ALLOWED = {rate for _, rate in do.TRAIN_SPECS + do.EVAL_SPECS + do.UOUT_SPECS} | {0.3}


def _doubled(x, p, training, generator=None):
    out, cache = forward_where_bernoulli(x, p, training, generator)
    return out * 2, cache


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (do.check_dropout_train, _doubled),
        (do.check_dropout_train, _forward_student({"scale": "p"})),
        (do.check_uout, lambda x, beta, training, generator=None: x * 1.5),
    ],
    ids=["unknown", "named", "uout-unknown"],
)
def test_messages_contain_no_expected_value(check, student):
    with pytest.raises(CheckFailure) as failure:
        check(student, seed=11)
    message = str(failure.value)
    assert "tensor(" not in message
    assert {float(v) for v in _FLOAT.findall(message)} <= _ALLOWED, message
    assert "seed 11" in message


def test_unknown_mistake_says_which_property_differs():
    with pytest.raises(CheckFailure) as failure:
        do.check_dropout_train(_doubled, seed=5)
    message = str(failure.value)
    assert "No catalogued misconception matches" in message
    assert "factor applied to the kept units: 'another value' (expected '1/(1 - p)')" in message


def test_autograd_in_the_backward_pass_is_refused():
    def forward(x, p, training, generator=None):
        x = x.detach().requires_grad_()
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
        out = x * keep / (1 - p) if training else x * 1.0
        return out, (x, out)

    def backward(dout, cache):
        x, out = cache
        return torch.autograd.grad(out, x, dout)[0]

    with pytest.raises(CheckFailure, match="dropout_backward used autograd") as failure:
        do.check_dropout_backward(forward, backward)
    assert "scores zero" in str(failure.value)


# --- inputs that separate multiplicative from added noise ---------------------------------------


def _std(p):
    return math.sqrt(p / (1 - p))


def _randn(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _rand(x, generator):
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_plus_deviation(x, p, training, generator=None):
    """x + std * z: the same mean and variance of out / x as x * (1 + std * z) when E[1/x^2] = 1."""
    return x + _std(p) * _randn(x, generator) if training else x


def gaussian_plus_noise(x, p, training, generator=None):
    return x + (1 + _std(p) * _randn(x, generator)) if training else x


def gaussian_plus_deviation_sparing_zeros(x, p, training, generator=None):
    if not training:
        return x
    return torch.where(x == 0, x, x + _std(p) * _randn(x, generator))


def uout_plus_r(x, beta, training, generator=None):
    return x + beta * (2 * _rand(x, generator) - 1) if training else x


def uout_plus_r_sparing_zeros(x, beta, training, generator=None):
    if not training:
        return x
    return torch.where(x == 0, x, x + beta * (2 * _rand(x, generator) - 1))


@pytest.mark.parametrize(
    ("check", "student", "name"),
    [
        (do.check_gaussian_dropout, gaussian_plus_deviation, "gaussian-additive-noise"),
        (do.check_gaussian_dropout, gaussian_plus_noise, "gaussian-additive-noise"),
        (
            do.check_gaussian_dropout,
            gaussian_plus_deviation_sparing_zeros,
            "gaussian-additive-noise",
        ),
        (do.check_uout, uout_plus_r, "uout-additive-noise"),
        (do.check_uout, uout_plus_r_sparing_zeros, "uout-additive-noise"),
    ],
    ids=lambda v: getattr(v, "__name__", v) if callable(v) else str(v),
)
def test_noise_added_to_x_is_caught_and_named(check, student, name):
    """Zeros in the input stay zero only under multiplicative noise; the spread of out / x is the
    same for small and large |x| only under multiplicative noise: either alone names it."""
    for seed in (0, 1):
        with pytest.raises(CheckFailure) as failure:
            check(student, seed=seed)
        message = str(failure.value)
        assert _named(message) == {name}, message
        assert "for |x| < 1 and for |x| >= 1" in message


def test_noise_inputs_span_magnitudes_signs_and_zeros():
    for case in do.draw_cases(do.GAUSSIAN_SPECS, training=True, seed=3, device="cpu", zeros=True):
        x, n = case.x.double(), case.x.numel()
        q = do.ZERO_FRACTION
        assert abs(float((x == 0).double().mean()) - q) <= do.Z * math.sqrt(q * (1 - q) / n)
        magnitude = x[x != 0].abs()
        low, high = 1 / do.MAGNITUDE_SPREAD, do.MAGNITUDE_SPREAD
        assert low * (1 - 1e-6) <= float(magnitude.min()) and float(magnitude.max()) <= high
        for part in (magnitude < 1, x[x != 0] > 0):  # log-uniform: half below 1; half positive
            m = magnitude.numel()
            assert abs(float(part.double().mean()) - 0.5) <= do.Z * math.sqrt(0.25 / m)


# --- the generator given, and the global one left alone -----------------------------------------


def forward_global(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep / (1 - p), (keep, p)


def forward_reseeds_global(x, p, training, generator=None):
    if not training:
        return x, None
    torch.manual_seed(generator.initial_seed())
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep / (1 - p), (keep, p)


def forward_own_generator(x, p, training, generator=None):
    if not training:
        return x, None
    own = torch.Generator(device=x.device).manual_seed(1234)
    keep = torch.rand(x.shape, generator=own, device=x.device) >= p
    return x * keep / (1 - p), (keep, p)


def gaussian_global(x, p, training, generator=None):
    return x * (1 + _std(p) * torch.randn_like(x)) if training else x


def uout_global(x, beta, training, generator=None):
    return x * (1 + beta * (2 * torch.rand_like(x) - 1)) if training else x


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (do.check_dropout_train, forward_global),
        (do.check_dropout_train, forward_reseeds_global),
        (do.check_dropout_train, forward_own_generator),
        (do.check_gaussian_dropout, gaussian_global),
        (do.check_uout, uout_global),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_function_must_draw_from_the_generator_it_is_given(check, student):
    state = torch.get_rng_state()
    with pytest.raises(CheckFailure) as failure:
        check(student, seed=4)
    message = str(failure.value)
    assert _named(message) == {"dropout-generator-ignored"}, message
    assert "(use of the generator differs)" in message
    # The check leaves the global generator as it found it, even for these students.
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("student", "seen"),
    [
        (forward_where_bernoulli, do.SEEDED),
        (forward_global, "differs between two generators in the same state"),
        (forward_reseeds_global, "changes the state of the global random generator"),
        (forward_own_generator, do.FIXED),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_what_a_function_does_with_the_generator_is_seen(student, seen):
    train = do.draw_cases(do.TRAIN_SPECS, training=True, seed=4, device="cpu")
    evaluation = do.draw_cases(do.EVAL_SPECS, training=False, seed=4, device="cpu")
    assert {do.FORWARD.run(student, case)["randomness"] for case in train} == {seen}
    assert {do.FORWARD.run(student, case)["randomness"] for case in evaluation} == {do.FIXED}


def forward_bernoulli_full(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.bernoulli(torch.full_like(x, 1 - p), generator=generator)
    return x * keep / (1 - p), (keep, p)


def forward_rand_below_keep(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.rand(x.shape, generator=generator, device=x.device) < 1 - p
    return torch.where(keep, x / (1 - p), 0.0), (keep, p)


def gaussian_randn_times_std_plus_one(x, p, training, generator=None):
    return x * (_randn(x, generator) * _std(p) + 1) if training else x


def gaussian_torch_normal(x, p, training, generator=None):
    if not training:
        return x
    noise = torch.normal(1.0, _std(p), x.shape, generator=generator, device=x.device)
    return x * noise.to(x.dtype)


def uout_uniform_around_one(x, beta, training, generator=None):
    if not training:
        return x
    return x * torch.empty_like(x).uniform_(1 - beta, 1 + beta, generator=generator)


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (do.check_dropout_train, forward_bernoulli_full),
        (do.check_dropout_train, forward_rand_below_keep),
        (do.check_gaussian_dropout, gaussian_randn_times_std_plus_one),
        (do.check_gaussian_dropout, gaussian_torch_normal),
        (do.check_uout, uout_uniform_around_one),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_other_ways_of_drawing_from_the_generator_pass(check, student):
    state = torch.get_rng_state()
    for seed in (0, 1, None):
        _quietly(check, student, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)


# --- the caller's tensors left alone -------------------------------------------------------------


def forward_zeroes_x_in_place(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    x[~keep] = 0
    x /= 1 - p
    return x, (keep, p)


def backward_scales_dout_in_place(dout, cache):
    if cache is None:
        return dout
    keep, p = cache
    dout *= keep / (1 - p)
    return dout


def gaussian_in_place(x, p, training, generator=None):
    return x.mul_(1 + _std(p) * _randn(x, generator)) if training else x


def uout_in_place(x, beta, training, generator=None):
    if not training:
        return x
    x += x * beta * (2 * _rand(x, generator) - 1)
    return x


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (do.check_dropout_train, forward_zeroes_x_in_place),
        (do.check_dropout_backward, (forward_rand_below_keep, backward_scales_dout_in_place)),
        (do.check_gaussian_dropout, gaussian_in_place),
        (do.check_uout, uout_in_place),
    ],
    ids=["forward", "backward", "gaussian", "uout"],
)
def test_changing_the_callers_tensors_in_place_is_named(check, student):
    args = student if isinstance(student, tuple) else (student,)
    with pytest.raises(CheckFailure) as failure:
        check(*args, seed=2)
    message = str(failure.value)
    assert _named(message) == {"dropout-input-modified-in-place"}, message
    assert "after the call" in message or "after dropout_backward" in message


def forward_in_place_on_a_copy(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    out = x.clone()
    out[~keep] = 0
    out /= 1 - p
    return out, (keep, p)


def backward_in_place_on_a_copy(dout, cache):
    if cache is None:
        return dout
    keep, p = cache
    return dout.clone().mul_(keep / (1 - p))


def uout_addcmul(x, beta, training, generator=None):
    if not training:
        return x
    return torch.addcmul(x, x, beta * (2 * _rand(x, generator) - 1))


def test_in_place_operations_on_copies_pass():
    for seed in (0, 1, None):
        _quietly(do.check_dropout_train, forward_in_place_on_a_copy, seed=seed)
        _quietly(
            do.check_dropout_backward,
            forward_in_place_on_a_copy,
            backward_in_place_on_a_copy,
            seed=seed,
        )
        _quietly(do.check_uout, uout_addcmul, seed=seed)


# --- a mask shared by the batch, a backward pass that fails in evaluation mode --------------------


def forward_sample_mask(x, p, training, generator=None):
    if not training:
        return x, None
    keep = torch.rand(x.shape[1:], generator=generator, device=x.device) >= p
    return x * keep / (1 - p), (keep, p)


def forward_expanded_mask(x, p, training, generator=None):
    if not training:
        return x, None
    one = torch.rand((1, *x.shape[1:]), generator=generator, device=x.device) >= p
    keep = one.expand_as(x)
    return x * keep / (1 - p), (keep, p)


@pytest.mark.parametrize("forward", [forward_sample_mask, forward_expanded_mask])
def test_a_mask_shared_by_the_batch_is_named_as_such(forward):
    for seed in (0, 1, 2):
        with pytest.raises(CheckFailure) as failure:
            do.check_dropout_train(forward, seed=seed)
        message = str(failure.value)
        assert _named(message) == {"dropout-mask-shared"}, message
        assert "masks of the samples of a batch differs" in message
        assert "fraction of units zeroed" not in message
        # Its gradient flows exactly through the units it kept: the backward check passes.
        _quietly(do.check_dropout_backward, forward, backward_where_pair, seed=seed)


def backward_where_pair(dout, cache):
    if cache is None:
        return dout
    keep, p = cache
    return torch.where(keep, dout / (1 - p), 0.0)


def backward_without_evaluation_branch(dout, cache):
    keep, p = cache
    return dout * keep / (1 - p)


def test_a_backward_that_fails_in_evaluation_mode_is_told_what_is_expected():
    with pytest.raises(CheckFailure) as failure:
        do.check_dropout_backward(forward_rand_below_keep, backward_without_evaluation_branch)
    message = str(failure.value)
    assert message.startswith("dropout_backward raised TypeError (")
    assert "in evaluation mode, on the cache that dropout_forward returned there (None)" in message
    assert "return dout unchanged" in message
    assert f"Read more: {book_link('dropout', 'do-backward')}" in message


def test_an_unfinished_backward_is_not_reworded():
    def unfinished(dout, cache):
        if cache is None:
            raise NotImplementedError
        return backward_where_pair(dout, cache)

    with pytest.raises(NotImplementedYet, match=r"^dropout_backward is not implemented yet\.$"):
        do.check_dropout_backward(forward_rand_below_keep, unfinished)
