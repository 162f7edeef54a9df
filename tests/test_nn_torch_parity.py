"""``bncourse.nn`` as a drop-in for ``torch.nn`` where a user would notice a difference.

PyTorch's own module test inputs (``torch.testing._internal.common_modules``: the constructor
arguments and inputs its test suite gives BatchNorm1d/2d/3d, empty batches included), torch's tools
that look for batch norm (SyncBatchNorm conversion, functorch's patching, fusion, TorchScript),
higher-order and forward-mode derivatives, vmap, half precision, and the dropout variants.

Tolerances as in ``test_nn_batchnorm.py``: float64 results of two correct implementations differ
by rounding only (1e-10 is a margin of 1000x); float16 output is rounded to 11 significant bits,
so one unit in the last place of values up to 4 is 2**-8 = 0.004.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as TF
from torch import nn

from bncourse import nn as bnn
from bncourse.nn import functional as F

TIGHT = {"rtol": 1e-10, "atol": 1e-10}
OURS = {
    nn.BatchNorm1d: bnn.BatchNorm1d,
    nn.BatchNorm2d: bnn.BatchNorm2d,
    nn.BatchNorm3d: bnn.BatchNorm3d,
}


def _torch_module_inputs():
    """(id, torch class, constructor input, forward input, training) from PyTorch's test suite."""
    from torch.testing._internal.common_modules import module_db

    # Importing torch's test utilities freezes torch.backends flags for the whole process
    # (torch.backends.disable_global_flags()); the other test files in this process set them.
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert not torch.backends.flags_frozen()

    cases = []
    for info in module_db:
        if info.module_cls not in OURS:
            continue
        for training in (True, False):
            inputs = info.module_inputs_func(
                info, device="cpu", dtype=torch.float64, requires_grad=True, training=training
            )
            for i, module_input in enumerate(inputs):
                name = f"{info.module_cls.__name__}-{module_input.desc or i}-{'train' if training else 'eval'}"
                cases.append(
                    pytest.param(
                        info.module_cls,
                        module_input.constructor_input,
                        module_input.forward_input,
                        training,
                        id=name,
                    )
                )
    return cases


def _pair(torch_cls, args, kwargs, training, dtype=torch.float64):
    theirs = torch_cls(*args, **kwargs).to(dtype).train(training)
    ours = OURS[torch_cls](*args, **kwargs).to(dtype).train(training)
    with torch.no_grad():  # distinct parameters and statistics, so that a swap shows
        for m in (theirs, ours):
            gen = torch.Generator().manual_seed(3)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=dtype) + 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=dtype))
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen, dtype=dtype))
                m.running_var.copy_(
                    torch.rand(m.running_var.shape, generator=gen, dtype=dtype) + 0.5
                )
    return theirs, ours


@pytest.mark.parametrize("torch_cls, constructor, forward, training", _torch_module_inputs())
def test_pytorch_suite_module_inputs(torch_cls, constructor, forward, training):
    """Outputs, gradients, running statistics and batch counts equal torch's on its own inputs."""
    theirs, ours = _pair(torch_cls, constructor.args, constructor.kwargs, training)
    (x,) = forward.args
    results = []
    for module in (theirs, ours):
        xi = x.detach().clone().requires_grad_()
        for _ in range(2):  # twice: the second step uses the updated statistics
            out = module(xi)
        grad = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
        out.backward(grad)
        results.append((out, xi.grad, module))
    (out_t, gx_t, m_t), (out_o, gx_o, m_o) = results
    torch.testing.assert_close(out_o, out_t, **TIGHT)
    torch.testing.assert_close(gx_o, gx_t, **TIGHT)
    for name, p_t in m_t.named_parameters():
        torch.testing.assert_close(dict(m_o.named_parameters())[name].grad, p_t.grad, **TIGHT)
    for name, b_t in m_t.named_buffers():
        torch.testing.assert_close(dict(m_o.named_buffers())[name], b_t, **TIGHT, msg=name)


@pytest.mark.parametrize("cls", [bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d])
def test_an_empty_batch_gives_an_empty_output_and_is_counted(cls, device):
    shape = {
        bnn.BatchNorm1d: (0, 4),
        bnn.BatchNorm2d: (0, 4, 2, 2),
        bnn.BatchNorm3d: (0, 4, 2, 2, 2),
    }
    ours = cls(4, momentum=0.3).to(device)
    theirs = next(c for c in cls.__mro__ if c.__module__.startswith("torch."))(4, momentum=0.3)
    theirs = theirs.to(device)
    for m in (ours, theirs):
        x = torch.randn(shape[cls], device=device, requires_grad=True)
        out = m(x)
        out.sum().backward()
        assert out.shape == x.shape
        assert m.num_batches_tracked.item() == 1
        assert torch.equal(m.running_mean, torch.zeros(4, device=device))
        assert torch.equal(m.running_var, torch.ones(4, device=device))
        assert torch.equal(m.weight.grad, torch.zeros(4, device=device))


def test_momentum_outside_zero_one_is_accepted_like_torch():
    """torch does not restrict momentum; 1.5 extrapolates past the batch statistic."""
    x = torch.randn(5, 3, dtype=torch.float64) * 2 + 1
    theirs, ours = _pair(nn.BatchNorm1d, (3,), {"momentum": 1.5}, True)
    theirs(x), ours(x)
    torch.testing.assert_close(ours.running_var, theirs.running_var, **TIGHT)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, **TIGHT)


def test_eps_zero_is_accepted_in_eval_mode_like_torch():
    x = torch.randn(4, 3, dtype=torch.float64)
    theirs, ours = _pair(nn.BatchNorm1d, (3,), {"eps": 0.0}, False)
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_input_to_a_float32_module(dtype):
    """Output in the input's dtype, statistics in float32, as torch; no overflow in the sums."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 3, 224, 224, generator=gen) * 3 + 1).to(dtype)
    ours, theirs = bnn.BatchNorm2d(3), nn.BatchNorm2d(3)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_o, out_t = ours(xo), theirs(xt)
    assert out_o.dtype == out_t.dtype == dtype
    assert ours.running_mean.dtype == torch.float32
    grad = torch.ones_like(out_o)
    out_o.backward(grad)
    out_t.backward(grad)
    assert torch.isfinite(xo.grad.float()).all()
    assert xo.grad.dtype == dtype
    ulp = 2**-8 if dtype == torch.float16 else 2**-5  # last place of values up to 4
    torch.testing.assert_close(out_o.float(), out_t.float(), rtol=0, atol=2 * ulp)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-3, atol=0)


def test_torch_tools_that_look_for_batch_norm_find_ours():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNorm2d(4), nn.ReLU(), bnn.Dropout(0.3))
    assert isinstance(model[1], nn.BatchNorm2d)
    assert isinstance(model[1], nn.modules.batchnorm._BatchNorm)
    assert isinstance(model[3], nn.Dropout)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    torch.func.replace_all_batch_norm_modules_(model)
    assert model[1].running_mean is None and not model[1].track_running_stats


def test_fusion_into_the_convolution_before():
    """fuse_modules with FUSER_METHODS, and fuse_conv_bn_eval, give torch's fused convolution."""
    from torch.ao.quantization import fuse_modules
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNorm2d(4, momentum=0.3)).double()
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6, dtype=torch.float64) * 2 + 1)
    model.eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = model(x)
    fused = fuse_modules(
        model,
        [["0", "1"]],
        fuse_custom_config_dict={"additional_fuser_method_mapping": bnn.FUSER_METHODS},
    )
    assert isinstance(fused[0], nn.Conv2d) and isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused(x), expected, **TIGHT)
    torch.testing.assert_close(fuse_conv_bn_eval(model[0], model[1])(x), expected, **TIGHT)


def test_fuse_modules_without_the_mapping_refuses_clearly():
    """The documented difference: torch's table is keyed by exact type."""
    from torch.ao.quantization import fuse_modules

    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNorm2d(4)).eval()
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse_modules(model, [["0", "1"]])


@pytest.mark.parametrize("training", [True, False])
def test_torchscript_compiles_the_twin_with_the_same_tensors(training):
    torch.manual_seed(0)
    module = bnn.BatchNorm1d(3, momentum=0.3).train(training)
    scripted = torch.jit.script(module)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert scripted.weight.data_ptr() == module.weight.data_ptr()
    x = torch.randn(5, 3)
    reference = bnn.BatchNorm1d(3, momentum=0.3).train(training)
    torch.testing.assert_close(scripted(x), reference(x))
    torch.testing.assert_close(module.running_var, reference.running_var)  # shared buffers
    assert type(module) is bnn.BatchNorm1d  # the module itself is unchanged
    assert isinstance(torch.jit.script(bnn.Dropout2d(0.3)), torch.jit.ScriptModule)


def test_vmap_with_running_statistics_explains_what_to_do():
    module = bnn.BatchNorm1d(3)
    before = module.running_mean.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # functorch's note on its fallback for lerp_
        with pytest.raises(RuntimeError, match="replace_all_batch_norm_modules_"):
            torch.func.vmap(module)(torch.randn(5, 4, 3))
    assert torch.equal(module.running_mean, before)  # refused before anything changed


def test_vmap_without_running_statistics_equals_torch():
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    theirs, ours = _pair(nn.BatchNorm1d, (3,), {"track_running_stats": False}, True)
    torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x), **TIGHT)
    # per-sample gradients: vmap over grad, the functorch way
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p, xi, module):
        return torch.func.functional_call(module, p, (xi,)).pow(3).sum()

    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, x, ours)
    want = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, x, theirs)
    for name in params:
        torch.testing.assert_close(got[name], want[name], **TIGHT)


@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 5), (2, 3, 2, 2)])
def test_second_derivatives_and_forward_mode_equal_torch(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    tangent = torch.randn(shape, generator=gen, dtype=torch.float64)
    theirs, ours = _pair((nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d), (3,), {}, True)
    results = []
    for m in (theirs, ours):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xi).pow(3).sum(), xi, create_graph=True)
        (h,) = torch.autograd.grad(g.sin().sum(), xi)
        with fwAD.dual_level():
            t = fwAD.unpack_dual(m(fwAD.make_dual(x, tangent))).tangent
        results.append((g, h, t))
    for got, want, what in zip(results[1], results[0], ("gradient", "second", "jvp"), strict=True):
        torch.testing.assert_close(got, want, **TIGHT, msg=what)


def test_gradcheck_and_gradgradcheck_of_the_functional():
    gen = torch.Generator().manual_seed(2)

    def leaf(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()

    def f(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True)

    inputs = (leaf(4, 3, 2), leaf(3), leaf(3))
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_backward_twice_with_retain_graph():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = bnn.BatchNorm1d(3).double()(x)
    grad = torch.randn_like(out)
    (first,) = torch.autograd.grad(out, x, grad, retain_graph=True)
    (second,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(first, second)


def test_channels_last_input():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    theirs, ours = _pair(nn.BatchNorm2d, (3,), {}, True)
    torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


@pytest.mark.parametrize("rows", [6, 48])  # 48: summed in blocks of rows when compiled
def test_compiled_module_equals_eager(rows):
    """torch.compile traces the autograd function: same forward, gradients and statistics."""
    torch._dynamo.reset()
    eager, compiled_source = bnn.BatchNorm1d(3, momentum=0.3), bnn.BatchNorm1d(3, momentum=0.3)
    compiled = torch.compile(compiled_source)
    x = torch.randn(rows, 3) * 2 + 1
    results = []
    for m in (eager, compiled):
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        results.append((out, xi.grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    torch.testing.assert_close(compiled_source.running_var, eager.running_var)
    torch.testing.assert_close(compiled_source.running_mean, eager.running_mean)


# Dropout variants: the same generator state draws the same mask as torch's (CPU).

DROPOUTS = [
    ("dropout", F.dropout, TF.dropout, (6, 5)),
    ("dropout1d", F.dropout1d, TF.dropout1d, (4, 6, 5)),
    ("dropout1d-unbatched", F.dropout1d, TF.dropout1d, (6, 5)),
    ("dropout2d", F.dropout2d, TF.dropout2d, (4, 6, 3, 3)),
    ("dropout3d", F.dropout3d, TF.dropout3d, (2, 6, 2, 3, 3)),
    ("dropout3d-unbatched", F.dropout3d, TF.dropout3d, (6, 2, 3, 3)),
    ("alpha_dropout", F.alpha_dropout, TF.alpha_dropout, (6, 5)),
]


@pytest.mark.parametrize(
    "ours, theirs, shape", [d[1:] for d in DROPOUTS], ids=[d[0] for d in DROPOUTS]
)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout_variants_equal_torch(ours, theirs, shape, inplace, p):
    x = torch.randn(shape, dtype=torch.float64)
    results = []
    for fn in (theirs, ours):
        xi = x.clone()
        torch.manual_seed(7)
        out = fn(
            xi, p, True, inplace
        )  # positional, as torch's signature: input, p, training, inplace
        results.append((out, xi))
    (out_t, x_t), (out_o, x_o) = results
    torch.testing.assert_close(out_o, out_t, **TIGHT)
    torch.testing.assert_close(x_o, x_t, **TIGHT)  # modified in place exactly when torch does
    assert torch.equal(out_o == 0, out_t == 0)


@pytest.mark.parametrize(
    "ours, theirs, shape",
    [
        (bnn.Dropout1d, nn.Dropout1d, (4, 6, 5)),
        (bnn.Dropout2d, nn.Dropout2d, (4, 6, 3, 3)),
        (bnn.Dropout3d, nn.Dropout3d, (2, 6, 2, 3, 3)),
        (bnn.AlphaDropout, nn.AlphaDropout, (6, 5)),
    ],
)
def test_dropout_modules_equal_torch_and_zero_whole_channels(ours, theirs, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    outs = []
    for cls in (theirs, ours):
        torch.manual_seed(3)
        module = cls(0.3)
        assert repr(module) == repr(theirs(0.3))
        outs.append(module(x))
    torch.testing.assert_close(outs[1], outs[0], **TIGHT)
    assert torch.equal(ours(0.3).eval()(x), x)
    if ours is not bnn.AlphaDropout:
        zero = (outs[1] == 0).flatten(2) if len(shape) > 2 else None
        assert zero is not None and bool((zero.all(-1) | ~zero.any(-1)).all())  # all or none


def test_alpha_dropout_keeps_zero_mean_unit_variance():
    """Its purpose (Klambauer et al.): standardised input stays standardised in expectation."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=gen, dtype=torch.float64)
    out = F.alpha_dropout(x, 0.3, True, generator=gen)
    # n = 4e5 draws: the standard error of the mean is about 1/sqrt(n) = 0.0016; 5 of them: 0.008
    assert abs(out.mean().item()) < 0.008
    assert abs(out.var().item() - 1) < 0.02


def test_dropout_generator_is_keyword_only():
    """torch's positional order is (input, p, training, inplace); the generator is by keyword."""
    gen = torch.Generator().manual_seed(1)
    x = torch.ones(1000)
    a = F.dropout(x, 0.3, True, generator=gen)
    b = F.dropout(x, 0.3, True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        F.dropout(x, 0.3, True, False, gen)


# Found by trying the package as a user would (each once differed from torch).


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_module_converted_to_reduced_precision_trains(dtype):
    """.half() keeps the running statistics in half, like torch."""
    x = torch.randn(8, 3).to(dtype)
    ours, theirs = bnn.BatchNorm1d(3).to(dtype), nn.BatchNorm1d(3).to(dtype)
    out_o, out_t = ours(x), theirs(x)
    assert out_o.dtype == out_t.dtype == dtype
    assert ours.running_var.dtype == dtype
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    torch.testing.assert_close(out_o, out_t, rtol=0, atol=2**-5)


def test_jacrev_and_hessian_of_training_batch_norm_equal_torch():
    x = torch.randn(4, 3, dtype=torch.float64) * 2 + 1

    def ours(z):
        return F.batch_norm(z, None, None, training=True).pow(3).sum()

    def theirs(z):
        return TF.batch_norm(z, None, None, training=True).pow(3).sum()

    torch.testing.assert_close(torch.func.hessian(ours)(x), torch.func.hessian(theirs)(x), **TIGHT)
    jac = torch.func.jacrev(lambda z: F.batch_norm(z, None, None, training=True))(x)
    want = torch.func.jacrev(lambda z: TF.batch_norm(z, None, None, training=True))(x)
    torch.testing.assert_close(jac, want, **TIGHT)


def test_batched_gradients_of_gradcheck():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: F.batch_norm(a, None, None, b, None, training=True),
        (x, w),
        check_batched_grad=True,
    )


def test_compile_fullgraph_in_training():
    torch._dynamo.reset()
    module = bnn.BatchNorm1d(3, momentum=0.3)
    reference = bnn.BatchNorm1d(3, momentum=0.3)
    x = torch.randn(6, 3)
    out = torch.compile(module, fullgraph=True)(x)
    torch.testing.assert_close(out, reference(x))
    torch.testing.assert_close(module.running_var, reference.running_var)


def test_alpha_dropout_module_never_works_in_place_like_torch():
    x = torch.randn(50)
    before = x.clone()
    out = bnn.AlphaDropout(0.3, inplace=True)(x)
    assert torch.equal(x, before) and out is not x
    x2 = torch.randn(50)
    assert nn.AlphaDropout(0.3, inplace=True)(x2) is not x2


def test_numpy_scalars_and_one_element_tensors_are_accepted():
    np = pytest.importorskip("numpy")
    x = torch.randn(8, 3)
    bnn.Dropout(np.float32(0.3))(x)
    F.dropout(x, torch.tensor(0.3))
    bnn.BatchNorm1d(np.int64(3), momentum=np.float32(0.2))(x)
    with pytest.raises(TypeError, match="p must be a float"):
        bnn.Dropout(True)  # more likely a misplaced flag than p = 1


def test_an_empty_batch_keeps_a_reduced_precision_dtype():
    assert bnn.BatchNorm1d(3)(torch.randn(0, 3).half()).dtype == torch.float16


def test_negative_eps_is_refused_in_eval_mode_too():
    for call in (
        lambda: TF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-3),
        lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-3),
    ):
        with pytest.raises(ValueError, match="eps"):
            call()


def test_channel_dropout_of_a_vector_like_torch():
    """dropout2d refuses a vector; dropout3d reads it as one sample of 5 channels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError):
            TF.dropout2d(torch.randn(5), 0.3, True)
        with pytest.raises(RuntimeError, match="at least 2 dimensions"):
            F.dropout2d(torch.randn(5), 0.3, True)
        x = torch.randn(5, dtype=torch.float64)
        torch.manual_seed(4)
        want = TF.dropout3d(x, 0.3, True)
        torch.manual_seed(4)
        torch.testing.assert_close(F.dropout3d(x, 0.3, True), want, **TIGHT)


@pytest.mark.parametrize(
    "fn, theirs", [(F.dropout, TF.dropout), (F.alpha_dropout, TF.alpha_dropout)]
)
def test_dropout_of_integers_is_refused_like_torch(fn, theirs):
    x = torch.ones(5, dtype=torch.long)
    with pytest.raises(RuntimeError):
        theirs(x, 0.3, True)
    with pytest.raises(RuntimeError, match="floating-point input, got dtype torch.int64"):
        fn(x, 0.3, True)


def test_infinite_running_statistics_stay_infinite_like_torch():
    theirs, ours = _pair(nn.BatchNorm1d, (3,), {}, True)
    for m in (theirs, ours):
        m.running_var.fill_(float("inf"))
        m(torch.randn(4, 3, dtype=torch.float64))
    assert torch.equal(ours.running_var, theirs.running_var)


@pytest.mark.parametrize(
    "fn, theirs", [(F.dropout, TF.dropout), (F.alpha_dropout, TF.alpha_dropout)]
)
def test_the_mask_of_a_non_contiguous_input_equals_torch(fn, theirs):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    results = []
    for f in (theirs, fn):
        torch.manual_seed(9)
        results.append(f(x, 0.3, True))
    torch.testing.assert_close(results[1], results[0], **TIGHT)


def test_fx_traces_with_a_tracer_that_keeps_the_layers_as_leaves():
    """The documented way to symbolic_trace a network that uses these modules."""

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (bnn.BatchNorm1d, bnn.Dropout)) or super().is_leaf_module(
                m, qualname
            )

    model = nn.Sequential(nn.Linear(4, 3), bnn.BatchNorm1d(3), bnn.Dropout(0.3)).eval()
    graph = Tracer().trace(model)
    traced = torch.fx.GraphModule(model, graph)
    x = torch.randn(5, 4)
    torch.testing.assert_close(traced(x), model(x))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got Proxy"):
        torch.fx.symbolic_trace(model)
