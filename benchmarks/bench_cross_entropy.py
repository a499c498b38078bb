"""Cross-entropy and linear cross-entropy benchmarks: eurokernels backends vs PyTorch eager vs torch.compile.

cross_entropy (bf16 logits, tokens x vocabulary 8192 x 128000 and 4096 x 256000): forward, and forward + backward.
  eager / compile: F.cross_entropy on the bf16 logits (what a training script runs), compiled with torch.compile.
  eurokernels[<b>,inplace]: inplace_backward=True (the gradient overwrites the logits' storage, no fresh [N, V]
    buffer); since that destroys the logits, each call first refills them with a copy into the same (warm) buffer,
    which is included in its time (a real step gets the logits fresh from the LM head and pays no copy).
  floor: forward = one read of the logits (``x.amax()``); forward + backward = one read plus a fresh [N, V] output
    (``x.clone()``; on CPU a fresh output pays page faults that no allocating kernel can avoid).
linear_cross_entropy (tokens, hidden, vocabulary) = (8192, 2304, 256000), (8192, 4096, 128000), bf16, forward +
  backward, against F.linear + F.cross_entropy eager and compiled; TFLOP/s counts the 3 useful matmuls (2 N H V
  each). Peak extra memory: harness.peak_memory_mb (CUDA allocator peak; on CPU the resident-set high-water mark);
  workspace = that peak minus the gradients of hidden and weight, which every provider returns (at vocabulary
  256000 the weight's own gradient is 1.2 GB, more than the whole workspace the fused loss needs).
Providers whose memory would not fit in this machine's RAM are left out of a case (a note is printed).
Run: ``python -m benchmarks.run --ops cross_entropy`` or ``pytest benchmarks/bench_cross_entropy.py``.
"""
import functools
import sys

import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels.ops._ce_tiling import cpu_gemm16_native

from . import peers
from .harness import Case, benchmark_test, our_backends

CE_SHAPES = [(8192, 128000), (4096, 256000)]
CE_QUICK = [(2048, 128000)]
# (2048, 1024, 128000): the shape of the peer comparison (Cut Cross-Entropy's CPU path, measured here).
LCE_SHAPES = [(2048, 1024, 128000), (8192, 2304, 256000), (8192, 4096, 128000)]
LCE_QUICK = [(1024, 1024, 128000)]  # half the peer shape's tokens: --quick stays under 5 minutes on 2 cores


def _fits(nbytes, device):
    """Whether a provider needing about ``nbytes`` of extra memory fits (60% of free memory)."""
    if torch.device(device).type == "cuda":
        return nbytes < 0.6 * torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return True
    return nbytes < 0.6 * avail


@functools.cache
def _compiled_ce():
    return torch.compile(lambda x, y: F.cross_entropy(x, y), dynamic=False)


@functools.cache
def _compiled_lce():
    return torch.compile(lambda h, w, y: F.cross_entropy(F.linear(h, w), y), dynamic=False)


def _note(msg):
    print(f"bench_cross_entropy: {msg}", file=sys.stderr)


def ce_cases(device, quick):
    for tokens, vocab in (CE_QUICK if quick else CE_SHAPES):
        yield from _ce_shape(tokens, vocab, device)


def _ce_shape(tokens, vocab, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    out = []
    x = torch.randn(tokens, vocab, dtype=torch.bfloat16, device=device) * 2
    y = torch.randint(0, vocab, (tokens,), device=device)
    elems, label = tokens * vocab, f"{tokens}x{vocab} bf16"
    baseline_ok = _fits(4 * elems * 2, device)  # eager keeps log-probs, their gradient and the output
    if not baseline_ok:
        _note(f"{label}: eager / compile left out (about {4 * elems * 2 / 2**30:.0f} GiB)")

    fwd = {f"eurokernels[{b}]": functools.partial(ek.cross_entropy, x, y, backend=b)
           for b in our_backends(device, "cross_entropy")}
    if baseline_ok:
        fwd["eager"] = functools.partial(F.cross_entropy, x, y)
        fwd["compile"] = functools.partial(_compiled_ce(), x, y)
    fwd["floor"] = x.amax
    gpu, missing = peers.cross_entropy(device)  # Liger / quack on CUDA (benchmarks/peers.py)
    with torch.no_grad():
        ours = ek.cross_entropy(x, y)
    gpu = {n: f for n, f in gpu.items() if peers.agrees(label, n, functools.partial(f, x, y), ours)}
    fwd.update({n: functools.partial(f, x, y) for n, f in gpu.items()})
    out.append(Case("cross_entropy", label, "fwd", fwd, bytes=elems * 2, floor="floor", missing=dict(missing)))

    xg = x.detach().requires_grad_()

    def fwd_bwd(f, **kw):
        return lambda: torch.autograd.grad(f(xg, y, **kw), xg)

    both = {f"eurokernels[{b}]": fwd_bwd(ek.cross_entropy, backend=b) for b in our_backends(device, "cross_entropy")}
    buf = torch.empty_like(x).requires_grad_()

    def inplace(b):
        def run():
            buf.detach().copy_(x)  # refill the logits the previous call turned into gradients
            return torch.autograd.grad(ek.cross_entropy(buf, y, inplace_backward=True, backend=b), buf)
        return run

    both.update({f"eurokernels[{b},inplace]": inplace(b) for b in our_backends(device, "cross_entropy")})
    if baseline_ok:
        both["eager"] = fwd_bwd(F.cross_entropy)
        both["compile"] = fwd_bwd(_compiled_ce())
    both["floor"] = lambda: (x.amax(), x.clone())
    both.update({n: fwd_bwd(f) for n, f in gpu.items()})
    # bytes a perfect two-pass implementation moves: read the logits (forward), read them again and write the
    # gradient (backward)
    out.append(Case("cross_entropy", label, "fwd+bwd", both, bytes=3 * elems * 2, floor="floor", missing=missing))
    return out


def lce_cases(device, quick):
    for tokens, hidden, vocab in (LCE_QUICK if quick else LCE_SHAPES):
        yield from _lce_shape(tokens, hidden, vocab, device)


def _lce_shape(tokens, hidden, vocab, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    out = []
    h = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device).requires_grad_()
    w = (torch.randn(vocab, hidden, dtype=torch.bfloat16, device=device) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)
    label = f"{tokens}x{hidden}x{vocab} bf16"

    def grads(f):
        return lambda: torch.autograd.grad(f(), (h, w))

    providers, missing = {}, {}
    for b in our_backends(device, "cross_entropy"):
        providers[f"eurokernels[{b}]"] = grads(lambda b=b: ek.linear_cross_entropy(h, w, y, backend=b))
        providers[f"eurokernels[{b},grad_in_forward]"] = grads(
            lambda b=b: ek.linear_cross_entropy(h, w, y, grad_in_forward=True, backend=b))
    if torch.device(device).type == "cpu" and not cpu_gemm16_native(torch.bfloat16):
        # torch's own bf16 matmul on such a CPU runs 8x (Zen 2) to 300x (oneDNN capped at AVX2) slower than fp32:
        # one eager call at the quick shape would take minutes to most of an hour. Ours runs on fp32 tiles there.
        _note(f"{label}: eager / compile left out (this CPU has no native bf16 GEMM: torch's bf16 matmul is the "
              "slow path here; eurokernels' cpu backend runs its matmuls on fp32 tiles)")
    else:
        if _fits(5 * tokens * vocab * 2, device):
            providers["eager"] = grads(lambda: F.cross_entropy(F.linear(h, w), y))
            providers["compile"] = grads(lambda: _compiled_lce()(h, w, y))
        else:
            _note(f"{label}: eager / compile left out (about {5 * tokens * vocab * 2 / 2**30:.0f} GiB)")
        checked, missing = _lce_peers(h, w, y, label, grads)
        providers.update(checked)
    out.append(Case("linear_cross_entropy", label, "fwd+bwd", providers, flops=3 * 2 * tokens * hidden * vocab,
                    out_bytes=(h.numel() + w.numel()) * h.element_size(), missing=missing))
    return out


def _lce_peers(h, w, y, label, grads):
    """The fused LM-head losses of other projects that run here, each checked once against ours on these inputs
    (a wrong answer is reported and left out, never timed); a missing one is reported as not installed: returns
    ({name: timed callable}, {name: status}) for Case.providers / Case.missing. On CUDA, Liger's fused linear
    cross-entropy too (benchmarks/peers.py)."""
    found, missing = {}, {}
    impl = "torch_compile" if h.device.type == "cpu" else "cce"
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):  # torch >= 2.13: its chunked path
        found["torch F.linear_cross_entropy chunked"] = lambda: F.linear_cross_entropy(
            h, w, y, options=torch.nn.LinearCrossEntropyOptions())
    else:
        _note(f"{label}: torch's chunked F.linear_cross_entropy not in this torch")
        missing["torch F.linear_cross_entropy chunked"] = "not installed (torch < 2.13)"
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
        found[f"cut-cross-entropy[{impl}]"] = lambda: cce(h, w, y, impl=impl)
    except ImportError:
        _note(f"{label}: cut-cross-entropy not installed (pip install eurokernels[peers])")
        missing[f"cut-cross-entropy[{impl}]"] = "not installed"
    gpu, gpu_missing = peers.linear_cross_entropy(h.device)
    found.update({n: functools.partial(f, h, w, y) for n, f in gpu.items()})
    missing.update(gpu_missing)
    with torch.no_grad():
        ours = ek.linear_cross_entropy(h, w, y)
    # bf16 logits: both round them once
    checked = {n: grads(f) for n, f in found.items() if peers.agrees(label, n, f, ours, tol=(2e-2, 2e-2))}
    return checked, missing


def cases(device, quick=False):
    """A generator: each shape's tensors are made when its cases come up and freed after them."""
    yield from ce_cases(device, quick)
    yield from lce_cases(device, quick)


# pytest-benchmark: `pytest benchmarks/bench_cross_entropy.py` runs the quick cases; the CLI covers every shape.
test_cross_entropy = benchmark_test(cases)

