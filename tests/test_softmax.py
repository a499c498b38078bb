"""softmax / log_softmax for any row length: every backend vs fp64 truth (bounded by PyTorch's own error),
invariants (rows sum to 1, shift invariance), autograd, opcheck, compile, errors."""
import pytest
import torch

import eurokernels as ek
from eurokernels import _ext
from eurokernels import reference as ref
from tolerances import assert_within_torch_error

OP = "softmax"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 1 and 7 (below the vector width / smallest block), 4096 (one full block), 8193 (one past the largest Triton block:
# the looped path with a one-element tail), 128000 and 256000 (real vocabularies: many blocks).
SIZES = [1, 7, 4096, 8193, 128000, 256000]
CASES = [(n, d) for n in SIZES for d in DTYPES if n <= 8193 or d == torch.bfloat16]  # big rows: bf16 only (time)


def check_forward_backward(x, log, backend):
    """Forward and backward of ek.(log_)softmax vs fp64 truth, bounded by PyTorch's own error in x's dtype."""
    dtype = x.dtype
    fn = ek.log_softmax if log else ek.softmax
    tfn = torch.log_softmax if log else torch.softmax
    xs = x.clone().requires_grad_()
    y = fn(xs, backend=backend)
    xt = x.double().requires_grad_()
    yt = tfn(xt, -1)
    xp = x.clone().requires_grad_()
    yp = tfn(xp, -1)
    assert y.dtype == dtype and y.shape == x.shape
    assert_within_torch_error(y, yt, yp, name=f"y ({backend})")
    dy = torch.randn_like(yt)
    y.backward(dy.to(dtype))
    yt.backward(dy)
    yp.backward(dy.to(dtype))
    assert_within_torch_error(xs.grad, xt.grad, xp.grad, factor=2.0,
                              atol=1e-5 * max(1.0, xt.grad.abs().max().item()), name=f"dx ({backend})")


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize(("n", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_forward_backward(device, backend, n, dtype, log):
    rows = 3 if n <= 8193 else 2
    check_forward_backward((torch.randn(rows, n, device=device) * 4).to(dtype), log, backend)


def test_invariants(device, backend):
    x = torch.randn(4, 20000, device=device) * 5
    p = ek.softmax(x, backend=backend)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, device=device), atol=1e-5, rtol=0)
    assert (p >= 0).all()
    torch.testing.assert_close(ek.softmax(x + 1000.0, backend=backend), p, atol=1e-6, rtol=1e-4)
    lp = ek.log_softmax(x, backend=backend)
    torch.testing.assert_close(lp.exp(), p, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(ek.log_softmax(x - 1000.0, backend=backend), lp, atol=1e-3, rtol=1e-5)


def test_dim_and_strides(device, backend):
    x = torch.randn(3, 50, 6, device=device)
    torch.testing.assert_close(ek.softmax(x, dim=1, backend=backend), torch.softmax(x, 1))
    torch.testing.assert_close(ek.log_softmax(x[:, ::2], dim=-1, backend=backend), torch.log_softmax(x[:, ::2], -1))
    xs = x.clone().requires_grad_()
    ek.softmax(xs, dim=0, backend=backend).pow(2).sum().backward()
    xr = x.clone().requires_grad_()
    torch.softmax(xr, 0).pow(2).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad)


def test_masked_minus_inf(device, backend):
    x = torch.randn(2, 300, device=device)
    x[:, 100:] = float("-inf")
    p = ek.softmax(x, backend=backend)
    torch.testing.assert_close(p, torch.softmax(x, -1))


@pytest.mark.parametrize("offset", [0, 1, 2, 4], ids=lambda o: f"offset{o}")
def test_row_strides_and_offsets(device, backend, offset):
    # Rows cut out of wider buffers, starting `offset` elements in: the widest vector access the kernels may use
    # (bf16, n = 4096) is then 8 elements (16 bytes) at offset 0, 1 at offset 1, 2 at offset 2 and 4 at offset 4;
    # the row strides (4104 + offset for x, 8192 for dy) differ from each other and from the outputs' (4096).
    n = 4096
    x = (torch.randn(3, n + 8 + offset, device=device) * 4).to(torch.bfloat16)[:, offset:offset + n]
    dy = torch.randn(3, 2 * n, device=device).to(torch.bfloat16)[:, offset:offset + n]
    for log in (False, True):
        y, lse = torch.ops.eurokernels.softmax(x, log, backend)
        y_ref, lse_ref = ref.softmax(x, log)
        # fp32 math either way: at most one bf16 rounding step apart (2^-7 relative at the bottom of a binade)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=8e-3)
        torch.testing.assert_close(lse, lse_ref.float(), atol=1e-4, rtol=1e-5)
        dx = torch.ops.eurokernels.softmax_backward(dy, x, lse, log, backend)
        torch.testing.assert_close(dx, ref.softmax_backward(dy, x, lse, log), atol=1e-5, rtol=8e-3)


def test_empty(device, backend):
    # No rows, and rows of length 0: lse is logsumexp over nothing, -inf, as torch.logsumexp.
    for shape in [(0, 10), (3, 0)]:
        x = torch.randn(shape, device=device)
        for log in (False, True):
            y, lse = torch.ops.eurokernels.softmax(x, log, backend)
            assert y.shape == shape and lse.shape == shape[:1]
            assert (lse == float("-inf")).all()
            dx = torch.ops.eurokernels.softmax_backward(torch.randn_like(x), x, lse, log, backend)
            assert dx.shape == shape
        assert ek.log_softmax(x, backend=backend).shape == shape


# The 4.3 GB test below runs the C++ kernel here; the Triton interpreter would take hours at this size, so the
# triton and cuda backends run it only where a GPU is present.
BIG_BACKENDS = [("cpu", "cpu")] + ([("cuda", "triton"), ("cuda", "cuda")] if torch.cuda.is_available() else [])


def _rows_equal(t, row):
    """Every row of t bitwise equal to `row`, compared in chunks (a bool mask of the whole 2^31-element tensor would
    cost another 2 GB)."""
    return all(torch.equal(c, row.expand_as(c)) for c in t.split(2048))


@pytest.mark.parametrize(("device", "backend"), BIG_BACKENDS, ids=[b for _, b in BIG_BACKENDS])
def test_int64_indexing_beyond_2_31(device, backend):
    # rows * n > 2^31 elements: the last rows must be read and written at their own (int64) offsets, and no other
    # row overwritten (the outputs start uninitialized). x and y / dx are the big tensors; dy is one row broadcast
    # (row stride 0), which keeps the peak at two copies (8.6 GB).
    n = 65536
    rows = (1 << 31) // n + 2
    x = torch.zeros(rows, n, dtype=torch.bfloat16, device=device)
    x[-2:] = (torch.randn(2, n, device=device) * 4).to(torch.bfloat16)
    y, lse = torch.ops.eurokernels.softmax(x, False, backend)
    y_ref, lse_ref = ref.softmax(x[-2:], False)
    torch.testing.assert_close(y[-2:], y_ref, atol=1e-6, rtol=8e-3)
    torch.testing.assert_close(lse[-2:], lse_ref.float(), atol=1e-4, rtol=1e-5)
    assert _rows_equal(y[:-2], y.new_tensor(1.0 / n))  # a row of zeros: uniform, 2^-16 exactly in bf16
    del y
    dy = torch.randn(1, n, device=device).to(torch.bfloat16).expand(rows, n)
    dx = torch.ops.eurokernels.softmax_backward(dy, x, lse, False, backend)
    torch.testing.assert_close(dx[-2:], ref.softmax_backward(dy[-2:], x[-2:], lse[-2:], False), atol=1e-6,
                               rtol=8e-3)
    torch.testing.assert_close(dx[:1], ref.softmax_backward(dy[:1], x[:1], lse[:1], False), atol=1e-6, rtol=8e-3)
    assert _rows_equal(dx[1:-2], dx[0])  # same inputs, same kernel: the same bits in every zero row


@pytest.mark.skipif(not _ext.has_cuda_extension(), reason="the CUDA extension eurokernels._cuda is not built")
def test_cuda_entry_points_check_their_arguments():
    # Runs without a GPU: the host side of the cuda backend (softmax_cuda.cpp) refuses CPU tensors by name before
    # anything reaches the device, and the binding exists for both directions.
    ext = _ext.cuda()
    x = torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="x must be on cuda"):
        ext.softmax_fwd(x, False)
    with pytest.raises(RuntimeError, match="x must be on cuda"):
        ext.softmax_bwd(x, x, torch.zeros(3), True)


def test_gradcheck_fp64_reference(device):
    x = torch.randn(3, 9, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ek.softmax(x, backend="reference"), (x,))
    assert torch.autograd.gradcheck(lambda x: ek.log_softmax(x, backend="reference"), (x,))


@pytest.mark.parametrize("log", [False, True])
def test_opcheck(device, backend, log):
    x = torch.randn(4, 40, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.eurokernels.softmax.default, (x, log, backend))
    lse = torch.logsumexp(x.detach(), -1)
    torch.library.opcheck(torch.ops.eurokernels.softmax_backward.default,
                          (torch.randn_like(x), x.detach(), lse, log, backend))


def test_compile_fullgraph(device, backend):
    def f(x):
        return (ek.softmax(x, backend=backend) * ek.log_softmax(x, dim=0, backend=backend)).sum()

    x = torch.randn(5, 33, device=device, requires_grad=True)
    torch.compile(f, fullgraph=True, backend="aot_eager")(x).backward()
    g = x.grad.clone()
    x.grad = None
    f(x).backward()
    torch.testing.assert_close(g, x.grad)


def test_errors(monkeypatch):
    monkeypatch.delenv("EUROKERNELS_CUDA_SIM", raising=False)  # without the simulation, cuda on CPU is an error
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="x: expected dtype"):
        ek.softmax(x.int())
    with pytest.raises(ValueError, match="dim: expected an int in"):
        ek.softmax(x, dim=2)
    with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
        ek.log_softmax(torch.tensor(1.0))
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        ek.softmax(x, backend="cuda")


def test_nan_in_a_row_makes_the_row_nan(device, backend):
    # As torch: one NaN poisons its row and nothing else. 301 fp32 values: one per thread on the cuda backend, so
    # the thread holding the NaN (3) sees nothing else (a max that drops NaN would forget it).
    x = torch.randn(2, 301, device=device)
    x[0, 3] = float("nan")
    for ours, theirs in ((ek.softmax, torch.softmax), (ek.log_softmax, torch.log_softmax)):
        y = ours(x, backend=backend)
        assert torch.isnan(y[0]).all(), f"{ours.__name__} ({backend}): row 0 has finite values"
        torch.testing.assert_close(y[1], theirs(x[1], -1))
