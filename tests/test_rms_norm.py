"""RMSNorm: reference vs PyTorch, every backend vs the fp64 reference, autograd, compile, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference as ref
from tolerances import assert_within_torch_error, max_err

OP = "rms_norm"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Hidden sizes straddling the kernels' block boundaries: 1 and 7 (below the smallest block and the CPU vector
# width), 127 (one short of a power of two), 4096 (a full block), 5120 (a non-power-of-two model size), 65537 and
# 262144 (beyond the largest Triton block of 8192: the looped path, with a ragged and an exact tail).
HIDDEN = [1, 7, 127, 4096, 5120, 65537, 262144]


def rows_for(n):
    return 3 if n <= 8192 else 2  # keep the interpreter runs short on the largest rows


def make(shape, dtype, device, *, residual=False, weight_dtype=None):
    x = torch.randn(shape, dtype=dtype, device=device)
    w = torch.randn(shape[-1], dtype=weight_dtype or dtype, device=device) * 0.5 + 1.0
    r = torch.randn(shape, dtype=dtype, device=device) if residual else None
    return x, w, r


def truth_and_torch(x, w, r, eps, offset):
    """fp64 truth, and what PyTorch's own F.rms_norm gives in x's dtype (the error yardstick)."""
    h = x if r is None else (x.float() + r.float()).to(x.dtype)  # the stored residual sum is rounded to x's dtype
    truth = ref.rms_norm(h.double(), None if w is None else w.double(), eps, offset, casting="gemma")[0]
    we = None if w is None else (w.float() + offset).to(x.dtype)
    torch_out = F.rms_norm(h, (h.shape[-1],), we, eps)
    return h, truth, torch_out


# Each casting mode rounds the forward at a different place (see reference.rms_norm): "llama" rounds once more than
# F.rms_norm, "none" rounds rstd too, so their bounds are wider multiples of PyTorch's own error.
FACTOR = {"gemma": 2.0, "llama": 3.0, "none": 6.0}


def test_reference_matches_pytorch():
    for dtype in DTYPES:
        x, w, _ = make((4, 33, 96), dtype, "cpu")
        y = ref.rms_norm(x, w, 1e-6, casting="gemma")[0]
        expected = F.rms_norm(x.double(), (96,), w.double(), 1e-6).to(dtype)
        assert max_err(y, expected) <= (1e-6 if dtype == torch.float32 else 0.0)
    # Llama casting is exactly Hugging Face's LlamaRMSNorm arithmetic, fp32 with fp32 rounding of rstd.
    x, w, _ = make((5, 64), torch.bfloat16, "cpu")
    hf = x.float()
    hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(ref.rms_norm(x, w, 1e-6, casting="llama")[0], w * hf.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", HIDDEN)
def test_forward_backward(device, backend, dtype, n):
    x, w, _ = make((rows_for(n), n), dtype, device)
    _check_forward_backward(x, w, None, backend, casting="llama")


@pytest.mark.parametrize("casting", ["llama", "gemma", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_casting_residual_offset(device, backend, dtype, casting):
    # 3-D input, fused residual add, Gemma's offset, fp32 weight with low-precision activations.
    x, w, r = make((2, 5, 1000), dtype, device, residual=True, weight_dtype=torch.float32)
    _check_forward_backward(x, w * 0.1, r, backend, casting=casting, offset=1.0)


def _check_forward_backward(x, w, r, backend, *, casting, offset=0.0, eps=1e-6):
    factor = FACTOR[casting] if x.dtype != torch.float32 else 1.0
    xs = [t.detach().clone().requires_grad_() for t in (x, w) + ((r,) if r is not None else ())]
    out = ek.rms_norm(xs[0], xs[1], eps, offset=offset, residual=xs[2] if r is not None else None,
                      casting=casting, backend=backend)
    y, res_out = (out if r is not None else (out, None))
    h, truth, torch_y = truth_and_torch(x, w, r, eps, offset)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_within_torch_error(y, truth, torch_y, factor=factor, name=f"y ({backend}, {casting})")
    if r is not None:
        assert torch.equal(res_out, h), "residual_out must be x + residual rounded to x's dtype"

    # Backward: gradients against fp64 autograd through the reference; yardstick: autograd through F.rms_norm.
    dy = torch.randn_like(y)
    dres = torch.randn_like(y) if r is not None else None
    torch.autograd.backward([y] + ([res_out] if r is not None else []), [dy] + ([dres] if r is not None else []))
    t = [x.double().requires_grad_(), w.double().requires_grad_()]
    ht = t[0] if r is None else t[0] + r.double()
    yt = ref.rms_norm(ht, t[1], eps, offset, casting="gemma")[0]
    torch.autograd.backward([yt] + ([ht] if r is not None else []), [dy.double()] + ([dres.double()] if r is not None else []))
    p = [x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
    hp = p[0] if r is None else p[0] + r
    yp = F.rms_norm(hp, (x.shape[-1],), p[1] + offset, eps)
    torch.autograd.backward([yp] + ([hp] if r is not None else []), [dy] + ([dres] if r is not None else []))
    # dw sums over all rows: its error grows with the row count for every implementation alike.
    for name, got, truth_g, torch_g in (("dx", xs[0].grad, t[0].grad, p[0].grad), ("dw", xs[1].grad, t[1].grad, p[1].grad)):
        assert_within_torch_error(got, truth_g, torch_g, factor=2.0 if x.dtype != torch.float32 else 1.0,
                                  atol=1e-4 * max(1.0, truth_g.abs().max().item()), name=f"{name} ({backend})")
    if r is not None:
        assert torch.equal(xs[2].grad, xs[0].grad), "residual's gradient must equal x's"


def test_strided_and_3d(device, backend):
    # A slice of a wider buffer (row stride 2n: no copy needed) and a transposed view (non-unit stride along hidden).
    n = 384
    base = torch.randn(4, 6, 2 * n, dtype=torch.bfloat16, device=device)
    w = torch.rand(n, dtype=torch.bfloat16, device=device) + 0.5
    for x in (base[..., :n], base[..., n:], base[:, :, :n].transpose(0, 1), base[..., ::2]):
        y = ek.rms_norm(x, w, backend=backend)
        expected = ek.rms_norm(x.contiguous(), w, backend="reference")
        assert y.shape == x.shape
        torch.testing.assert_close(y, expected, atol=1e-2, rtol=1e-2)


def test_no_weight_and_empty(device, backend):
    x = torch.randn(3, 7, 50, device=device)
    torch.testing.assert_close(ek.rms_norm(x, backend=backend), F.rms_norm(x, (50,), eps=1e-6))
    empty = torch.randn(0, 64, device=device)
    assert ek.rms_norm(empty, torch.ones(64, device=device), backend=backend).shape == (0, 64)


def test_dw_deterministic(device, backend):
    x, w, _ = make((257, 1000), torch.bfloat16, device)
    grads = []
    for _ in range(2):
        wg = w.clone().requires_grad_()
        ek.rms_norm(x, wg, backend=backend).float().sum().backward()
        grads.append(wg.grad)
    assert torch.equal(grads[0], grads[1])


def test_gradcheck_fp64_reference(device):
    x = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    r = torch.randn(3, 8, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, r: ek.rms_norm(x, w, offset=0.5, residual=r, backend="reference")
    assert torch.autograd.gradcheck(fn, (x, w, r))


def test_gradcheck_kernels_fp32(device, backend):
    # The fused kernels run in fp32 (no fp64 path), so finite differences need a wide step and tolerance; the
    # precise gradient check is test_forward_backward against fp64 autograd.
    x = torch.randn(3, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    fn = lambda x, w: ek.rms_norm(x, w, backend=backend)
    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-2, atol=2e-2, rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("residual", [False, True])
def test_opcheck(device, backend, residual):
    x, w, r = make((4, 40), torch.float32, device, residual=residual)
    x.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(torch.ops.eurokernels.rms_norm.default, (x, w, r, 1e-6, 0.0, "llama", backend))
    dy = torch.randn_like(x)
    rstd = torch.rsqrt(x.detach().pow(2).mean(-1) + 1e-6)
    torch.library.opcheck(torch.ops.eurokernels.rms_norm_backward.default,
                          (dy, x.detach(), w.detach(), rstd, r, 0.0, backend))


def test_compile_fullgraph(device, backend):
    norm = ek.nn.RMSNorm(64, backend=backend).to(device)

    def step(x, r):
        y, res = norm(x, residual=r)
        return (y.float() ** 2).sum() + res.float().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 64, device=device, requires_grad=True)
    r = torch.randn(2, 5, 64, device=device)
    compiled(x, r).backward()
    gx, gw = x.grad.clone(), norm.weight.grad.clone()
    x.grad, norm.weight.grad = None, None
    step(x, r).backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, norm.weight.grad)


def test_compile_inductor_cpu():
    # One end-to-end inductor compile (slow on CPU, so once): the op stays a single opaque call in the graph.
    f = torch.compile(lambda x, w: ek.rms_norm(x, w) * 2, fullgraph=True)
    x, w = torch.randn(8, 128), torch.randn(128)
    torch.testing.assert_close(f(x, w), ek.rms_norm(x, w) * 2)


def test_module_gemma_convention():
    m = ek.nn.RMSNorm(32, offset=1.0, casting="gemma")
    assert torch.all(m.weight == 0)  # Gemma stores w around 0 and applies 1 + w
    x = torch.randn(4, 32)
    torch.testing.assert_close(m(x), F.rms_norm(x, (32,), eps=1e-6))


# The 4.3 GB test below runs the C++ kernel here; the Triton interpreter would take hours at this size, so the
# triton and cuda backends run it only where a GPU is present.
BIG_BACKENDS = [("cpu", "cpu")] + ([("cuda", "triton"), ("cuda", "cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device,backend", BIG_BACKENDS, ids=[b for _, b in BIG_BACKENDS])
def test_int64_indexing_beyond_2_31(device, backend):
    # rows * hidden > 2^31 elements: the last rows must be addressed correctly (int64 row offsets).
    n = 65536
    rows = (1 << 31) // n + 2
    x = torch.zeros(rows, n, dtype=torch.bfloat16, device=device)
    x[-2:] = torch.randn(2, n, dtype=torch.bfloat16, device=device)
    w = torch.rand(n, dtype=torch.bfloat16, device=device) + 0.5
    y = ek.rms_norm(x, w, backend=backend)
    torch.testing.assert_close(y[-2:], ek.rms_norm(x[-2:], w, backend="reference"), atol=1e-2, rtol=1e-2)
    assert not torch.any(y[:-2])


def test_errors(monkeypatch):
    monkeypatch.delenv("EUROKERNELS_CUDA_SIM", raising=False)  # without the simulation, cuda on CPU is an error
    x = torch.randn(4, 16)
    w = torch.randn(16)
    cases = [
        (dict(x=x.int()), TypeError, "x: expected dtype"),
        (dict(x=torch.randn(3, 0)), ValueError, "x: expected a hidden size"),
        (dict(x=x, weight=torch.randn(15)), ValueError, "weight: expected shape"),
        (dict(x=x, weight=w.to("meta")), ValueError, "weight: expected a tensor on cpu"),
        (dict(x=x, weight=w, residual=torch.randn(4, 15)), ValueError, "residual: expected shape"),
        (dict(x=x, weight=w, residual=x.half()), ValueError, "residual: expected shape"),
        (dict(x=x, weight=w, casting="fp8"), ValueError, "casting: expected one of"),
        (dict(x=x, weight=w, eps=-1.0), ValueError, "eps: expected a number >= 0"),
        (dict(x=x, offset=1.0), ValueError, "offset: only meaningful with a weight"),
        (dict(x=x, weight=w, backend="tpu"), ValueError, "backend: expected one of"),
        (dict(x=x, weight=w, backend="cuda"), ValueError, "backend 'cuda' needs CUDA tensors"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ek.rms_norm(**kwargs)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ek.rms_norm(torch.randn(2, 8), backend="triton")


def test_use_backend_context():
    x = torch.randn(2, 8)
    assert ek.default_backend("cpu") == "cpu"
    with ek.use_backend("reference"):
        assert ek.default_backend("cpu") == "reference"
        torch.testing.assert_close(ek.rms_norm(x), ref.rms_norm(x)[0])
    assert ek.default_backend("cpu") == "cpu"
    with pytest.raises(ValueError, match="backend: expected one of"):
        with ek.use_backend("fast"):
            pass
