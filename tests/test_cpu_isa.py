"""The CPU kernels' two instruction-set paths for the softmax family (csrc/cpu_avx512.h): the AVX-512 exp path,
on by default where ATen and the CPU support AVX-512, and the at::vec AVX2 path. The rest of the suite runs
whichever is the default here; this file runs cross-entropy and softmax through both, against fp64 truth, and
checks the AVX-512 exp's special values and its rounding to bf16 against the AVX2 path bit for bit.

CPU-only by nature: these are the cpu backend's own code paths."""
import importlib
import os
import subprocess
import sys

import pytest
import torch

import eurokernels as ek
from eurokernels import _ext
from test_cross_entropy import IGNORE, check_against_truth, make
from test_softmax import check_forward_backward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# --- the at::vec (AVX2) path's exp, and precision on both paths ---------------------------------------------------

def test_vec_exp_accuracy():
    """The AVX2 path's vector exp (csrc/cpu_exp.h) within 1.5 fp32 ulps of float64 over its whole range (measured
    8.3e-8, Sleef's torch.exp 6.3e-8; at::vec's exp_u20, which it replaced, is specified to 20 ulps and gave
    softmax elements 2.7e-6 off on the AVX2 machine). Results below FLT_MIN are flushed to 0 (see the header)."""
    x = torch.linspace(-87.33, 88.37, 1_000_003)
    y, truth = C.vec_exp(x).double(), torch.exp(x.double())
    rel = ((y - truth).abs() / truth).max().item()
    assert rel <= 1.5 * 2 ** -23, f"max relative error {rel:.3e}"
    special = torch.tensor([0.0, -0.0, float("-inf"), float("inf"), float("nan"), -87.5, -104.0, -1e30, 1e30, 89.0])
    expected = torch.tensor([1.0, 1.0, 0.0, float("inf"), float("nan"), 0.0, 0.0, 0.0, float("inf"), float("inf")])
    torch.testing.assert_close(C.vec_exp(special), expected, equal_nan=True, rtol=0, atol=0)


def _precision_module():
    sys.path.insert(0, ROOT)
    try:
        return importlib.import_module("benchmarks.precision")
    finally:
        sys.path.remove(ROOT)


# 3 x PyTorch's own fp32 error + 16 fp32 ulps of the value's scale: the softmax backward recomputes p from x and
# the saved fp32 lse (lse ~ 13 at vocabulary 32000 carries ~13 ulps of relative error into p), which PyTorch's
# backward, working from the rounded output, does not; every other op measured within 2.1x PyTorch's error.
SINGLE_STEP_FACTOR, SINGLE_STEP_ATOL = 3.0, 16 * 2 ** -24


@pytest.mark.parametrize("isa", ["native", "avx2"])
def test_single_step_precision(isa):
    """Every op's cpu backend, one forward + backward at the integration test's shapes in fp32, against fp64: within
    a small multiple of PyTorch's own fp32 error, on this machine's path and on the AVX2 machine's (a subprocess
    with benchmarks.precision.AVX2_ENV). These single steps locate what a training curve can only hint at."""
    precision = _precision_module()
    if isa == "avx2" and not HAS_AVX512:
        pytest.skip("this machine is AVX2-only: the 'native' case is the AVX2 path")
    errors = precision.measure_in_subprocess(avx2=True)["errors"] if isa == "avx2" else precision.measure()
    for op, row in errors.items():
        for what, base in row["torch"].items():
            ours = row["cpu"][what]
            assert ours <= SINGLE_STEP_FACTOR * base + SINGLE_STEP_ATOL, (
                f"{op} {what}: relative error {ours:.2e} vs PyTorch's {base:.2e}")


def test_integration_precision_on_the_avx2_path():
    """The Hugging Face equivalence and training-curve tests once more in a process that computes as an AVX2-only
    machine does (benchmarks.precision.AVX2_ENV: ATen, MKL and oneDNN lowered to AVX2), so a run on an AVX-512
    machine also sees the AVX2 machine's result (CI once went red only there)."""
    pytest.importorskip("transformers", reason="transformers not installed (pip install eurokernels[hf])")
    if not HAS_AVX512:
        pytest.skip("this machine is AVX2-only: the suite's own run of test_integration_transformers.py is that path")
    env = dict(os.environ, **_precision_module().AVX2_ENV)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_integration_transformers.py", "-k", "match or each_part_alone"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
