"""The CPU kernels' two instruction-set paths for the softmax family (csrc/cpu_avx512.h): the AVX-512 exp path,
on by default where ATen and the CPU support AVX-512, and the at::vec AVX2 path. The rest of the suite runs
whichever is the default here; this file runs cross-entropy and softmax through both, against fp64 truth, and
checks the AVX-512 exp's special values and its rounding to bf16 against the AVX2 path bit for bit.

CPU-only by nature: these are the cpu backend's own code paths."""
import pytest
import torch

import eurokernels as ek
from eurokernels import _ext
from test_cross_entropy import IGNORE, check_against_truth, make
from test_softmax import check_forward_backward

C = _ext.cpu()
DEFAULT_AVX512 = C.cpu_avx512_enabled()
HAS_AVX512 = C.set_cpu_avx512(True)
C.set_cpu_avx512(DEFAULT_AVX512)
PATHS = ["avx512", "avx2"]


def use(path):
    """Switch the path; skip (with the reason) where this CPU has no AVX-512."""
    if path == "avx512" and not HAS_AVX512:
        pytest.skip("this CPU (or ATen's capability, ATEN_CPU_CAPABILITY) has no AVX-512")
    assert C.set_cpu_avx512(path == "avx512") == (path == "avx512")


@pytest.fixture(params=PATHS)
def path(request):
    use(request.param)
    yield request.param
    C.set_cpu_avx512(DEFAULT_AVX512)


def test_default_follows_the_cpu():
    assert DEFAULT_AVX512 == HAS_AVX512
    assert DEFAULT_AVX512 == ("AVX512" in torch.backends.cpu.get_cpu_capability())


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 1 / 7 / 31: shorter than one 16- or 32-wide step (tails only); 4129: a full 4096 block, a 32-step and a tail;
# 128000: many blocks.
VOCABS = [1, 7, 31, 4129, 128000]
OPTIONS = [{}, {"label_smoothing": 0.1, "z_loss": 1e-3}, {"softcap": 20.0}]


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "smooth-zloss", "softcap"])
@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy(path, dtype, v, opts):
    logits, labels = make(4, v, dtype, "cpu", ignore=(1,))
    check_against_truth(logits, labels, "cpu", return_lse=True, **opts)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("n", [1, 17, 4129, 128000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax(path, dtype, n, log):
    check_forward_backward((torch.randn(3, n) * 4).to(dtype), log, "cpu")


def test_lse_accuracy_over_the_exp_range(path):
    """fp32 rows spanning exp's whole range: the lse within a few fp32 ulps of fp64 truth (the minimax polynomial
    of the AVX-512 exp has relative error 7.6e-8)."""
    x = torch.linspace(-87.0, 87.0, 50000)[torch.randperm(50000)].view(5, 10000)
    x = x + torch.tensor([0.0, 1e-3, -30.0, 300.0, -1e4]).view(5, 1)
    _, lse = ek.cross_entropy(x, torch.zeros(5, dtype=torch.long), reduction="none", return_lse=True, backend="cpu")
    truth = torch.logsumexp(x.double(), -1)
    torch.testing.assert_close(lse.double(), truth, rtol=4e-7, atol=0)


def test_special_values(path):
    v = 300
    x = torch.randn(5, v)
    x[0, 50:] = float("-inf")                  # a masked vocabulary tail
    x[1, :] = float("-inf")
    x[1, 7] = 2.0                              # one finite class
    x[2, 3] = float("nan")                     # NaN: loss NaN
    x[3, :] = float("-inf")
    x[3, 299] = float("nan")                   # NaN among -inf only (vmaxps drops NaN: looked for explicitly)
    x[4] += 100.0                              # an offset (shift invariance; the fp32 loss is lse - z_label, so
                                               # its error grows with the logits' magnitude, as in both paths)
    labels = torch.tensor([3, 7, 0, 0, 5])
    xs = x.clone().requires_grad_()
    loss = ek.cross_entropy(xs, labels, reduction="none", backend="cpu")
    loss.sum().backward()
    xr = x.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(xr, labels, reduction="none")
    expected.sum().backward()
    assert torch.isnan(loss[2:4]).all() and torch.isnan(xs.grad[2:4]).all()  # NaN rows, never inf
    torch.testing.assert_close(loss[[0, 1, 4]], expected[[0, 1, 4]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs.grad[[0, 1, 4]], xr.grad[[0, 1, 4]], atol=1e-6, rtol=1e-5)
    assert (xs.grad[0, 50:] == 0).all() and (xs.grad[1, torch.arange(v) != 7] == 0).all()
    p = ek.softmax(x[[0, 1, 4]], backend="cpu")
    torch.testing.assert_close(p, torch.softmax(x[[0, 1, 4]], -1), atol=1e-6, rtol=1e-5)
    # Under a soft cap -inf becomes -softcap (finite), large logits saturate, NaN stays NaN.
    xs = x.clone().requires_grad_()
    loss = ek.cross_entropy(xs, labels, reduction="none", softcap=20.0, backend="cpu")
    loss.sum().backward()
    xr = x.clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(20.0 * torch.tanh(xr / 20.0), labels, reduction="none")
    expected.sum().backward()
    assert torch.isnan(loss[2:4]).all() and torch.isnan(xs.grad[2:4]).all()
    torch.testing.assert_close(loss[[0, 1, 4]], expected[[0, 1, 4]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs.grad[[0, 1, 4]], xr.grad[[0, 1, 4]], atol=1e-6, rtol=1e-5)
    xn = x[2:4].clone().requires_grad_()
    y = ek.softmax(xn, backend="cpu")
    y.backward(torch.ones_like(y))
    assert torch.isnan(y).all() and torch.isnan(xn.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_rounding_matches_the_avx2_path(dtype):
    """The AVX-512 stores round to nearest even as c10 does: the two paths' bf16 / fp16 gradients agree bit for
    bit except where the fp32 values (whose exps differ in the last bits) straddle a rounding boundary."""
    use("avx512")
    try:
        logits, labels = make(8, 50000, dtype, "cpu", ignore=(2,))
        labels[0] = IGNORE

        def grad():
            x = logits.clone().requires_grad_()
            ek.cross_entropy(x, labels, backend="cpu").backward()
            return x.grad

        g512 = grad()
        use("avx2")
        g2 = grad()
    finally:
        C.set_cpu_avx512(DEFAULT_AVX512)
    same = (g512 == g2).double().mean().item()
    assert same > 0.99, f"only {same:.4f} of the elements round identically"
    ulp = torch.finfo(dtype).eps * g2.float().abs().clamp(min=torch.finfo(dtype).tiny)
    assert ((g512.float() - g2.float()).abs() <= ulp).all()
