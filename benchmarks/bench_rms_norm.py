"""RMSNorm benchmark: eurokernels backends vs the reference in eager mode vs torch.compile(reference).

Shapes: tokens x hidden of EuroLLM / Salamandra / Teuken-class models (hidden 2048, 4096, 6144), bf16.
Floor: the time to read the same bytes and write a freshly allocated output of the same size (`x.clone()` for the
forward; for the backward, reading x and dy and writing a fresh dx: `torch.add(x, dy)`); on CPU a fresh output
pays page faults, which no kernel that allocates its output can avoid.
Run: `python -m benchmarks.run --ops rms_norm` or `pytest benchmarks/bench_rms_norm.py`.
"""
import functools

import torch

import eurokernels as ek
from eurokernels import reference

from . import peers
from .harness import Case, benchmark_test, our_backends

SHAPES = [(t, h) for t in (4096, 8192, 16384) for h in (2048, 4096, 6144)]
QUICK_SHAPES = [(8192, 4096)]


@functools.cache
def _compiled_reference():
    return torch.compile(lambda x, w: reference.rms_norm(x, w, 1e-6)[0], dynamic=False)


def cases(device, quick=False):
    # A generator: each shape's tensors exist only while its cases run.
    return (c for tokens, hidden in (QUICK_SHAPES if quick else SHAPES) for c in _shape_cases(tokens, hidden, device))


def _shape_cases(tokens, hidden, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    out = []
    x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device=device)
    w = torch.rand(hidden, dtype=torch.bfloat16, device=device) + 0.5
    dy = torch.randn_like(x)
    elems, label = tokens * hidden, f"{tokens}x{hidden} bf16"
    eager = lambda x, w: reference.rms_norm(x, w, 1e-6)[0]
    ours = our_backends(device, "rms_norm")
    fwd = {f"eurokernels[{b}]": functools.partial(ek.rms_norm, x, w, backend=b) for b in ours}
    fwd["eager"] = functools.partial(eager, x, w)
    fwd["compile"] = functools.partial(_compiled_reference(), x, w)
    fwd["floor"] = x.clone
    gpu, missing = peers.rms_norm(device, 1e-6)  # Liger / quack on CUDA (benchmarks/peers.py)
    with torch.no_grad():
        want = ek.rms_norm(x, w)
    gpu = {n: f for n, f in gpu.items() if peers.agrees(label, n, functools.partial(f, x, w), want)}
    fwd.update({n: functools.partial(f, x, w) for n, f in gpu.items()})
    out.append(Case("rms_norm", label, "fwd", fwd, bytes=2 * elems * 2, floor="floor", missing=dict(missing)))

    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(xg, wg), (xg, wg), dy)

    both = {f"eurokernels[{b}]": fwd_bwd(functools.partial(ek.rms_norm, backend=b)) for b in ours}
    both["eager"] = fwd_bwd(eager)
    both["compile"] = fwd_bwd(_compiled_reference())
    both["floor"] = lambda: (x.clone(), torch.add(x, dy))
    both.update({n: fwd_bwd(f) for n, f in gpu.items()})
    out.append(Case("rms_norm", label, "fwd+bwd", both, bytes=5 * elems * 2, floor="floor", missing=missing))
    return out


# pytest-benchmark: `pytest benchmarks/bench_rms_norm.py` runs the quick cases; the CLI covers every shape.
test_rms_norm = benchmark_test(cases)
