"""SwiGLU benchmark: eurokernels backends vs the reference in eager mode vs torch.compile(reference).

Shapes: tokens x intermediate of 7-8B-class MLPs (11008: Llama-2-7B / Salamandra-7B, 14336: Mistral-7B /
Llama-3-8B), bf16, with separate gate and up projections, and one fused [tokens, 2 * intermediate] projection read
in place (up=None).
Floor: the time to read the same bytes and write freshly allocated outputs of the same size: `torch.mul(gate, up)`
for the forward (read 2, write 1); fwd+bwd adds the backward's read 3, write 2 as a second `torch.mul(gate, up)`
and `dy.clone()`. On CPU a fresh output pays page faults, which no kernel that allocates its output can avoid.
Run: `python -m benchmarks.run --ops swiglu` or `pytest benchmarks/bench_swiglu.py`.
"""
import functools

import torch

import eurokernels as ek
from eurokernels import reference

from . import peers
from .harness import Case, benchmark_test, our_backends

SHAPES = [(t, i) for t in (4096, 8192) for i in (11008, 14336)]
QUICK_SHAPES = [(4096, 11008)]


@functools.cache
def _compiled_reference():
    return torch.compile(lambda g, u: reference.swiglu(g, u), dynamic=False)


def cases(device, quick=False):
    # A generator: each shape's tensors exist only while its cases run.
    return (c for tokens, inter in (QUICK_SHAPES if quick else SHAPES) for c in _shape_cases(tokens, inter, device))


def _shape_cases(tokens, inter, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    out, ours = [], our_backends(device, "swiglu")
    fused = torch.randn(tokens, 2 * inter, dtype=torch.bfloat16, device=device)
    g, u = fused[:, :inter].contiguous(), fused[:, inter:].contiguous()
    dy = torch.randn_like(g)
    elems, label = tokens * inter, f"{tokens}x{inter} bf16"
    eager = lambda g, u: reference.swiglu(g, u)
    fwd = {f"eurokernels[{b}]": functools.partial(ek.swiglu, g, u, backend=b) for b in ours}
    fwd.update({f"eurokernels[{b}] fused": functools.partial(ek.swiglu, fused, backend=b)
                for b in ours})
    fwd["eager"] = functools.partial(eager, g, u)
    fwd["compile"] = functools.partial(_compiled_reference(), g, u)
    fwd["floor"] = functools.partial(torch.mul, g, u)
    gpu, missing = peers.swiglu(device)  # Liger on CUDA (benchmarks/peers.py)
    with torch.no_grad():
        want = ek.swiglu(g, u)
    gpu = {n: f for n, f in gpu.items() if peers.agrees(label, n, functools.partial(f, g, u), want)}
    fwd.update({n: functools.partial(f, g, u) for n, f in gpu.items()})
    out.append(Case("swiglu", label, "fwd", fwd, bytes=3 * elems * 2, floor="floor", missing=dict(missing)))

    gg, ug = g.detach().requires_grad_(), u.detach().requires_grad_()
    xg = fused.detach().requires_grad_()

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(gg, ug), (gg, ug), dy)

    both = {f"eurokernels[{b}]": fwd_bwd(functools.partial(ek.swiglu, backend=b)) for b in ours}
    both.update({f"eurokernels[{b}] fused": (lambda b=b: torch.autograd.grad(ek.swiglu(xg, backend=b), xg, dy))
                 for b in ours})
    both["eager"] = fwd_bwd(eager)
    both["compile"] = fwd_bwd(_compiled_reference())
    both["floor"] = lambda: (torch.mul(g, u), torch.mul(g, u), dy.clone())
    both.update({n: fwd_bwd(f) for n, f in gpu.items()})
    # fwd (read 2, write 1) + bwd (read 3, write 2): 8 accesses per element
    out.append(Case("swiglu", label, "fwd+bwd", both, bytes=8 * elems * 2, floor="floor", missing=missing))
    return out


# pytest-benchmark: `pytest benchmarks/bench_swiglu.py` runs the quick cases; the CLI covers every shape.
test_swiglu = benchmark_test(cases)
