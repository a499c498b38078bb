"""SwiGLU / GeGLU: reference vs PyTorch, every backend vs the fp64 truth, fused halves, strides, autograd, compile,
and bad input."""
import pytest
import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference as ref
from tolerances import assert_within_torch_error, max_err

OP = "swiglu"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

# The Triton interpreter evaluates the kernels' math in numpy, which warns where exp(-z) overflows to inf (as intended:
# sigmoid(z) is then 0) and where tl.where's unused branch forms inf * 0; a GPU computes the same values silently.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = ["silu", "gelu_tanh", "gelu"]
# Intermediate sizes straddling the kernels' boundaries: 1 and 7 (below the CPU vector step of 16: scalar tails
# only), 16, 17 and 127 (one step, one past it, one short of a power of two), 1025 (one past the middle Triton
# block), 4096 and 4097 (the largest Triton block, one element past it: two column blocks), 4104 (a multiple of 8
# but not 16: 128-bit accesses only through ALIGN), 16385 (one past the CPU tile of 16384: a row in two tiles).
SIZES = [1, 7, 16, 17, 127, 1025, 4096, 4097, 4104, 16385]


def act_fn(activation):
    """The activation as PyTorch computes it (our truth in fp64, our yardstick in the low precision)."""
    if activation == "silu":
        return F.silu
    return lambda g: F.gelu(g, approximate="tanh" if activation == "gelu_tanh" else "none")


def call(gate, up, activation, backend, **kw):
    """The public function for ``activation``: swiglu, or geglu with its approximate= argument."""
    if activation == "silu":
        return ek.swiglu(gate, up, backend=backend, **kw)
    return ek.geglu(gate, up, approximate="tanh" if activation == "gelu_tanh" else "none", backend=backend, **kw)


def make(shape, dtype, device):
    # The gate spread over [-6, 6] or so: both tails of the activation and its curved middle.
    return (torch.randn(shape, device=device) * 2.5).to(dtype), torch.randn(shape, dtype=dtype, device=device)


def test_reference_matches_pytorch():
    for activation in ACTIVATIONS:
        for dtype in DTYPES:
            g, u = make((4, 33, 96), dtype, "cpu")
            expected = (act_fn(activation)(g.double()) * u.double()).to(dtype)
            got = ref.swiglu(g, u, activation)
            assert got.dtype == dtype
            # fp32 math rounded once to dtype: each value within one ulp of dtype of the fp64 result rounded to dtype
            # (fp32 math can land on the other side of a rounding boundary), plus a few fp32 ulps of the output's
            # scale (PyTorch's fp32 GELU-tanh returns 0 for tiny negative values)
            torch.testing.assert_close(got, expected, rtol=2 * torch.finfo(dtype).eps,
                                       atol=4 * 2 ** -23 * expected.abs().max().item())
        # The reference backward's textbook derivatives (fp64) against autograd through PyTorch's activation.
        g, u = make((5, 40), torch.float64, "cpu")
        dy = torch.randn_like(g)
        gt, ut = g.clone().requires_grad_(), u.clone().requires_grad_()
        (act_fn(activation)(gt) * ut).backward(dy)
        dg, du = ref.swiglu_backward(dy, g, u, activation)
        torch.testing.assert_close(dg, gt.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(du, ut.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_forward_backward(device, backend, dtype, activation, n):
    g, u = make((3, n), dtype, device)
    check_against_fp64(g, u, activation, backend)


def check_against_fp64(g, u, activation, backend, *, fused=False):
    """Forward and both gradients against fp64 autograd through PyTorch's activation, within 2x the error PyTorch
    itself makes in g's dtype (tests/tolerances.py). ``fused``: the op takes cat([g, u], -1) with up=None."""
    act = act_fn(activation)
    x = torch.cat([g, u], -1).requires_grad_() if fused else None
    gs, us = g.clone().requires_grad_(), u.clone().requires_grad_()
    y = call(x, None, activation, backend) if fused else call(gs, us, activation, backend)
    gt, ut = g.double().requires_grad_(), u.double().requires_grad_()
    truth = act(gt) * ut
    gl, ul = g.clone().requires_grad_(), u.clone().requires_grad_()
    torch_y = act(gl) * ul  # PyTorch in g's dtype: the yardstick
    assert y.dtype == g.dtype and y.shape == g.shape
    assert_within_torch_error(y, truth, torch_y, name=f"y ({backend}, {activation})")

    dy = torch.randn_like(y)
    y.backward(dy)
    truth.backward(dy.double())
    torch_y.backward(dy)
    if fused:
        n = g.shape[-1]
        assert x.grad.shape == x.shape
        grads = x.grad[..., :n], x.grad[..., n:]
    else:
        grads = gs.grad, us.grad
    for name, got, t, p in (("d_gate", grads[0], gt.grad, gl.grad), ("d_up", grads[1], ut.grad, ul.grad)):
        assert got.dtype == g.dtype
        assert_within_torch_error(got, t, p, name=f"{name} ({backend}, {activation})")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [37, 4104])  # the up half at an odd offset (narrow accesses); 16-byte aligned
def test_fused_halves(device, backend, activation, n):
    # up=None: the gate and up halves of one [..., 2n] projection, read in place; the gradient is one tensor.
    g, u = make((2, 3, n), torch.bfloat16, device)
    check_against_fp64(g, u, activation, backend, fused=True)
    # Bitwise the same as passing the halves separately: the same kernel on the same values.
    x = torch.cat([g, u], -1)
    torch.testing.assert_close(call(x, None, activation, backend), call(g, u, activation, backend), rtol=0, atol=0)


def test_strided_inputs(device, backend):
    # Slices of wider buffers (row strides 3n: no copy), a transposed view and a non-unit stride along the last
    # dimension (one copy), for separate gate/up and for the fused form.
    n = 48
    base = torch.randn(4, 6, 3 * n, dtype=torch.bfloat16, device=device)
    views = [(base[..., :n], base[..., n:2 * n]), (base[..., :n].transpose(0, 1), base[..., n:2 * n].transpose(0, 1)),
             (base[..., ::3], base[..., 1::3])]
    for activation in ACTIVATIONS:
        for g, u in views:
            y = call(g, u, activation, backend)
            assert y.shape == g.shape
            torch.testing.assert_close(y, ref.swiglu(g.contiguous(), u.contiguous(), activation), rtol=0, atol=1e-2)
        fused = base[..., : 2 * n]
        torch.testing.assert_close(call(fused, None, activation, backend),
                                   ref.swiglu(fused.contiguous(), None, activation), rtol=0, atol=1e-2)


def test_extreme_gates(device, backend):
    # Far tails: SiLU / GELU of large |g| saturate to 0 or g; the backward must stay finite (no 0 * inf from g^3 or
    # exp overflow) and match the fp64 truth.
    g = torch.tensor([[-1e30, -1e4, -200.0, -90.0, -20.0, -10.5, -10.0, -1e-30, 0.0, 1e-30, 10.0, 20.0, 90.0, 1e4,
                       1e38]], device=device)
    u = torch.full_like(g, 0.5)
    for activation in ACTIVATIONS:
        gs, us = g.clone().requires_grad_(), u.clone().requires_grad_()
        y = call(gs, us, activation, backend)
        y.backward(torch.ones_like(y))
        gt, ut = g.double().requires_grad_(), u.double().requires_grad_()
        truth = act_fn(activation)(gt) * ut
        truth.backward(torch.ones_like(truth))
        for name, got, t in (("y", y, truth), ("d_gate", gs.grad, gt.grad), ("d_up", us.grad, ut.grad)):
            assert torch.isfinite(got).all(), f"{name} ({backend}, {activation}): {got}"
            torch.testing.assert_close(got.double(), t.detach(), rtol=1e-6, atol=1e-12,
                                       msg=lambda m: f"{name} ({backend}, {activation}): {m}")


def test_negative_control_low_precision_activation_is_caught(device):
    # The bound must reject an implementation that computes the activation in bf16 on fp32 inputs.
    g, u = make((3, 256), torch.float32, device)
    bad = (F.silu(g.bfloat16()).float() * u)
    truth = F.silu(g.double()) * u.double()
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within_torch_error(bad, truth, F.silu(g) * u)


def test_empty(device, backend):
    for g, u in ((torch.randn(0, 64, device=device), torch.randn(0, 64, device=device)),
                 (torch.randn(3, 0, device=device), torch.randn(3, 0, device=device))):
        assert ek.swiglu(g, u, backend=backend).shape == g.shape
    assert ek.geglu(torch.randn(2, 5, 0, device=device), backend=backend).shape == (2, 5, 0)
    x = torch.randn(0, 8, device=device, requires_grad=True)
    ek.swiglu(x, backend=backend).sum().backward()
    assert x.grad.shape == (0, 8)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_fp64_reference(device, activation, fused):
    g = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    u = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    if fused:
        x = torch.cat([g, u], -1).detach().requires_grad_()
        assert torch.autograd.gradcheck(lambda x: call(x, None, activation, "reference"), (x,))
    else:
        assert torch.autograd.gradcheck(lambda g, u: call(g, u, activation, "reference"), (g, u))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_kernels_fp32(device, backend, activation):
    # The kernels run in fp32 (no fp64 path): finite differences need a wide step; the precise gradient check is
    # test_forward_backward against fp64 autograd.
    g = torch.randn(3, 20, device=device, requires_grad=True)
    u = torch.randn(3, 20, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, u: call(g, u, activation, backend), (g, u), eps=1e-2, atol=2e-2,
                                    rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("fused", [False, True])
def test_opcheck(device, backend, fused):
    for activation in ACTIVATIONS:
        g, u = make((4, 40), torch.float32, device)
        if fused:
            g, u = torch.cat([g, u], -1), None
        g.requires_grad_()
        if u is not None:
            u.requires_grad_()
        torch.library.opcheck(torch.ops.eurokernels.swiglu.default, (g, u, activation, backend))
        dy = torch.randn(4, 40, device=device)
        torch.library.opcheck(torch.ops.eurokernels.swiglu_backward.default,
                              (dy, g.detach(), None if u is None else u.detach(), activation, backend))


def test_compile_fullgraph(device, backend):
    # A Llama-style MLP with separate projections and a Gemma-style one with a fused gate+up projection.
    w_gate_up = torch.randn(2 * 96, 32, device=device) * 0.2
    w_down = torch.randn(32, 96, device=device) * 0.2

    def mlp(x, w_gate_up):
        h = x @ w_gate_up.t()
        a = ek.swiglu(h[..., :96], h[..., 96:], backend=backend)
        b = ek.geglu(h, approximate="tanh", backend=backend)
        return ((a + b) @ w_down.t()).square().sum()

    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 32, device=device, requires_grad=True)
    w = w_gate_up.clone().requires_grad_()
    compiled(x, w).backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad, w.grad = None, None
    mlp(x, w).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)


def test_compile_inductor_cpu():
    # One end-to-end inductor compile (slow on CPU, so once): the op stays an opaque call in the graph.
    f = torch.compile(lambda x: ek.swiglu(x) * 2, fullgraph=True)
    x = torch.randn(8, 128)
    torch.testing.assert_close(f(x), ek.swiglu(x) * 2)


def test_int64_row_offsets_in_inputs(device, backend):
    # Row strides past 2^31 elements: row 1 of each input starts beyond int32 offsets. The buffers are reserved,
    # not touched (only the two rows' pages are written and read), so this costs a few pages, on every backend.
    n, stride = 40, (1 << 31) + 64
    buf = torch.empty(stride + 2 * n, dtype=torch.bfloat16, device=device)
    x = buf.as_strided((2, 2 * n), (stride, 1))
    x.copy_(torch.randn(2, 2 * n, dtype=torch.bfloat16))
    dy_buf = torch.empty(stride + n, dtype=torch.bfloat16, device=device)
    dy = dy_buf.as_strided((2, n), (stride, 1))
    dy.copy_(torch.randn(2, n, dtype=torch.bfloat16))
    xc, dyc = x.contiguous(), dy.contiguous()
    for activation in ACTIVATIONS:
        y = call(x, None, activation, backend)
        torch.testing.assert_close(y, call(xc, None, activation, "reference"), rtol=0, atol=1e-2)
        d_fused, _ = torch.ops.eurokernels.swiglu_backward(dy, x, None, activation, backend)
        expected, _ = torch.ops.eurokernels.swiglu_backward(dyc, xc, None, activation, "reference")
        torch.testing.assert_close(d_fused, expected, rtol=0, atol=1e-2)


# The output-offset test below writes 4.3 GB with the C++ kernel here; the Triton interpreter would take hours at
# this size, so the triton and cuda backends run it only where a GPU is present.
BIG_BACKENDS = [("cpu", "cpu")] + ([("cuda", "triton"), ("cuda", "cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device,backend", BIG_BACKENDS, ids=[b for _, b in BIG_BACKENDS])
def test_int64_row_offsets_in_outputs(device, backend):
    # rows * n > 2^31 output elements (forward), rows * 2n > 2^31 (fused backward): the last rows must land in the
    # right place. The inputs are one row broadcast (stride 0), so only the outputs take memory, one at a time.
    n = 65536
    rows = (1 << 31) // n + 2
    x = torch.randn(1, 2 * n, dtype=torch.bfloat16, device=device)
    y = ek.swiglu(x.expand(rows, 2 * n), backend=backend)
    expected = ek.swiglu(x, backend="reference")
    torch.testing.assert_close(y[-2:], expected.expand(2, n), rtol=0, atol=1e-2)
    del y
    rows = (1 << 30) // n + 2
    dy = torch.randn(1, n, dtype=torch.bfloat16, device=device)
    d_fused, _ = torch.ops.eurokernels.swiglu_backward(dy.expand(rows, n), x.expand(rows, 2 * n), None, "silu",
                                                       backend)
    expected, _ = torch.ops.eurokernels.swiglu_backward(dy, x, None, "silu", "reference")
    torch.testing.assert_close(d_fused[-2:], expected.expand(2, 2 * n), rtol=0, atol=1e-2)


def test_errors(monkeypatch):
    monkeypatch.setenv("EUROKERNELS_CUDA_SIM", "0")  # so that backend="cuda" on CPU tensors is the error it is
    g, u = torch.randn(4, 16), torch.randn(4, 16)
    cases = [
        (ek.swiglu, dict(gate=g.int(), up=u), TypeError, "gate: expected dtype"),
        (ek.swiglu, dict(gate=torch.tensor(1.0)), ValueError, "gate: expected at least 1 dimension"),
        (ek.swiglu, dict(gate=g, up=torch.randn(4, 15)), ValueError, "up: expected shape"),
        (ek.swiglu, dict(gate=g, up=torch.randn(16)), ValueError, "up: expected shape"),
        (ek.swiglu, dict(gate=g, up=u.half()), ValueError, "up: expected dtype torch.float32"),
        (ek.swiglu, dict(gate=g, up=u.to("meta")), ValueError, "up: expected a tensor on cpu"),
        (ek.swiglu, dict(gate=torch.randn(4, 15)), ValueError, "gate: with up=None, expected .* even"),
        (ek.geglu, dict(gate=torch.randn(3, 7)), ValueError, "gate: with up=None, expected .* even"),
        (ek.geglu, dict(gate=g, up=u, approximate="erf"), ValueError, "approximate: expected one of"),
        (ek.swiglu, dict(gate=g, up=u, backend="tpu"), ValueError, "backend: expected one of"),
        (ek.swiglu, dict(gate=g, up=u, backend="cuda"), ValueError, "backend 'cuda' needs CUDA tensors"),
        (ek.swiglu, dict(gate=g.double(), up=u.double(), backend="cpu"), TypeError, "gate: expected dtype"),
    ]
    for fn, kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn(**kwargs)
