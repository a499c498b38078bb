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
  each). Peak extra memory: the harness reports CUDA allocator peaks; on CPU run
  ``python -m benchmarks.bench_cross_entropy --memory`` (peak resident-set growth per provider, VmHWM).
Providers whose memory would not fit in this machine's RAM are left out of a case (a note is printed).
Run: ``python -m benchmarks.run --ops cross_entropy`` or ``pytest benchmarks/bench_cross_entropy.py``.
"""
import functools
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import eurokernels as ek

from .harness import Case, pytest_benchmark_case

CE_SHAPES = [(8192, 128000), (4096, 256000)]
CE_QUICK = [(2048, 128000)]
LCE_SHAPES = [(8192, 2304, 256000), (8192, 4096, 128000)]
LCE_QUICK = [(2048, 1024, 128000)]  # the peer comparison (Cut Cross-Entropy, CPU)


def our_backends(device):
    if torch.device(device).type == "cuda":
        return ["triton"] + (["cuda"] if ek._ext.has_cuda_extension() else [])
    return ["cpu"]


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
    out = []
    for tokens, vocab in (CE_QUICK if quick else CE_SHAPES):
        x = torch.randn(tokens, vocab, dtype=torch.bfloat16, device=device) * 2
        y = torch.randint(0, vocab, (tokens,), device=device)
        elems, label = tokens * vocab, f"{tokens}x{vocab} bf16"
        baseline_ok = _fits(4 * elems * 2, device)  # eager keeps log-probs, their gradient and the output
        if not baseline_ok:
            _note(f"{label}: eager / compile left out (about {4 * elems * 2 / 2**30:.0f} GiB)")

        fwd = {f"eurokernels[{b}]": functools.partial(ek.cross_entropy, x, y, backend=b) for b in our_backends(device)}
        if baseline_ok:
            fwd["eager"] = functools.partial(F.cross_entropy, x, y)
            fwd["compile"] = functools.partial(_compiled_ce(), x, y)
        fwd["floor"] = x.amax
        out.append(Case("cross_entropy", label, "fwd", fwd, bytes=elems * 2, floor="floor"))

        xg = x.detach().requires_grad_()

        def fwd_bwd(f, **kw):
            return lambda: torch.autograd.grad(f(xg, y, **kw), xg)

        both = {f"eurokernels[{b}]": fwd_bwd(ek.cross_entropy, backend=b) for b in our_backends(device)}
        buf = torch.empty_like(x).requires_grad_()

        def inplace(b):
            def run():
                buf.detach().copy_(x)  # refill the logits the previous call turned into gradients
                return torch.autograd.grad(ek.cross_entropy(buf, y, inplace_backward=True, backend=b), buf)
            return run

        both.update({f"eurokernels[{b},inplace]": inplace(b) for b in our_backends(device)})
        if baseline_ok:
            both["eager"] = fwd_bwd(F.cross_entropy)
            both["compile"] = fwd_bwd(_compiled_ce())
        both["floor"] = lambda: (x.amax(), x.clone())
        # bytes a perfect two-pass implementation moves: read the logits (forward), read them again and write the
        # gradient (backward)
        out.append(Case("cross_entropy", label, "fwd+bwd", both, bytes=3 * elems * 2, floor="floor"))
    return out


def lce_cases(device, quick):
    out = []
    for tokens, hidden, vocab in (LCE_QUICK if quick else LCE_SHAPES):
        h = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device).requires_grad_()
        w = (torch.randn(vocab, hidden, dtype=torch.bfloat16, device=device) * 0.02).requires_grad_()
        y = torch.randint(0, vocab, (tokens,), device=device)
        label = f"{tokens}x{hidden}x{vocab} bf16"

        def grads(f):
            return lambda: torch.autograd.grad(f(), (h, w))

        providers = {}
        for b in our_backends(device):
            providers[f"eurokernels[{b}]"] = grads(lambda b=b: ek.linear_cross_entropy(h, w, y, backend=b))
            providers[f"eurokernels[{b},grad_in_forward]"] = grads(
                lambda b=b: ek.linear_cross_entropy(h, w, y, grad_in_forward=True, backend=b))
        if _fits(5 * tokens * vocab * 2, device):
            providers["eager"] = grads(lambda: F.cross_entropy(F.linear(h, w), y))
            providers["compile"] = grads(lambda: _compiled_lce()(h, w, y))
        else:
            _note(f"{label}: eager / compile left out (about {5 * tokens * vocab * 2 / 2**30:.0f} GiB)")
        out.append(Case("linear_cross_entropy", label, "fwd+bwd", providers, flops=3 * 2 * tokens * hidden * vocab))
    return out


def cases(device, quick=False):
    return ce_cases(device, quick) + lce_cases(device, quick)


def peak_rss_growth_mb(fn):
    """Peak resident-set growth of one fn() call on CPU (Linux): reset the high-water mark, run, read VmHWM."""
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024

    fn()  # warm-up: compile, first-touch of inputs
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


def memory_table(device="cpu", quick=True):
    """Peak extra memory of each linear_cross_entropy provider (CUDA allocator peak, or CPU peak RSS growth)."""
    from .harness import peak_memory_mb
    if torch.device(device).type == "cpu":
        # glibc serves blocks under its (adaptive, up to 32 MB) mmap threshold from a heap it keeps after free, so a
        # second call would reuse memory without growing the RSS. A fixed 1 MB threshold maps every larger block
        # and returns it on free: the RSS high-water mark then is the live peak.
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    for case in lce_cases(device, quick):
        for name, fn in case.providers.items():
            mb = peak_memory_mb(fn, device) if torch.device(device).type == "cuda" else peak_rss_growth_mb(fn)
            print(f"{case.op} {case.label} {name}: peak extra {mb:.0f} MB", flush=True)


# --- pytest-benchmark: `pytest benchmarks/bench_cross_entropy.py` (quick shapes; the CLI covers all) -------------
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _cases():
    return cases(DEVICE, quick=True)


def _ids():
    return [(i, p) for i, c in enumerate(_cases()) for p in c.providers]


@pytest.mark.parametrize("index,provider", _ids(), ids=[f"{_cases()[i].op}-{_cases()[i].mode}-{p}"
                                                        for i, p in _ids()])
def test_cross_entropy(benchmark, index, provider):
    pytest_benchmark_case(benchmark, _cases()[index], provider, DEVICE)


if __name__ == "__main__":
    if "--memory" in sys.argv:
        memory_table(DEVICE, quick="--full" not in sys.argv)
    else:
        print(__doc__)
