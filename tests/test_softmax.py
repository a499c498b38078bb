"""softmax / log_softmax for any row length: every backend vs fp64 truth (bounded by PyTorch's own error),
invariants (rows sum to 1, shift invariance), autograd, opcheck, compile, errors."""
import pytest
import torch

import eurokernels as ek
from tolerances import assert_within_torch_error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 1 and 7 (below the vector width / smallest block), 4096 (one full block), 8193 (one past the largest Triton block:
# the looped path with a one-element tail), 128000 and 256000 (real vocabularies: many blocks).
SIZES = [1, 7, 4096, 8193, 128000, 256000]
CASES = [(n, d) for n in SIZES for d in DTYPES if n <= 8193 or d == torch.bfloat16]  # big rows: bf16 only (time)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize(("n", "dtype"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_forward_backward(device, backend, n, dtype, log):
    rows = 3 if n <= 8193 else 2
    x = (torch.randn(rows, n, device=device) * 4).to(dtype)
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


def test_errors():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="x: expected dtype"):
        ek.softmax(x.int())
    with pytest.raises(ValueError, match="dim: expected an int in"):
        ek.softmax(x, dim=2)
    with pytest.raises(ValueError, match="x: expected at least 1 dimension"):
        ek.log_softmax(torch.tensor(1.0))
