"""Softmax / log-softmax benchmark: eurokernels backends vs the reference in eager mode vs torch.compile(reference).

Shapes: rows x vocabulary of the models this package serves (vocabulary 128000 and 262144; a row is far longer than
one block, so every kernel streams it), bf16. Memory-bound: the forward reads x once and writes y (the lse sweep
re-reads x from cache); fwd+bwd also reads dy and x and writes dx. Floor: reading and writing the same bytes into a
fresh output (`x.clone()`; for fwd+bwd also `torch.add(x, dy)`), page faults of the fresh output included.
Run: `python -m benchmarks.run --ops softmax` or `pytest benchmarks/bench_softmax.py`.
"""
import functools

import torch

import eurokernels as ek
from eurokernels import reference

from . import peers
from .harness import Case, benchmark_test, our_backends

SHAPES = [(rows, v) for rows in (1024, 4096) for v in (128000, 262144)]
QUICK_SHAPES = [(512, 128000)]


@functools.cache
def _compiled_reference(log):
    return torch.compile(lambda x: reference.softmax(x, log)[0], dynamic=False)


def cases(device, quick=False):
    # A generator: each shape's tensors exist only while its cases run.
    return (c for rows, v in (QUICK_SHAPES if quick else SHAPES) for log in (False, True)
            for c in _shape_cases(rows, v, log, device))


def _shape_cases(rows, v, log, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    name = "log_softmax" if log else "softmax"
    op = ek.log_softmax if log else ek.softmax
    eager = lambda x: reference.softmax(x, log)[0]  # noqa: E731
    x = torch.randn(rows, v, dtype=torch.bfloat16, device=device) * 4
    dy = torch.randn_like(x)
    elems, label = rows * v, f"{rows}x{v} bf16"
    ours = our_backends(device, "softmax")
    fwd = {f"eurokernels[{b}]": functools.partial(op, x, backend=b) for b in ours}
    fwd["eager"] = functools.partial(eager, x)
    fwd["torch"] = functools.partial(torch.log_softmax if log else torch.softmax, x, -1)  # bf16 in/out, fused
    fwd["compile"] = functools.partial(_compiled_reference(log), x)
    fwd["floor"] = x.clone
    gpu, missing = peers.softmax(device, log)  # quack on CUDA (benchmarks/peers.py)
    with torch.no_grad():
        want = op(x)
    gpu = {n: f for n, f in gpu.items() if peers.agrees(label, n, functools.partial(f, x), want)}
    fwd.update({n: functools.partial(f, x) for n, f in gpu.items()})

    xg = x.detach().requires_grad_()

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(xg), (xg,), dy)

    both = {f"eurokernels[{b}]": fwd_bwd(functools.partial(op, backend=b)) for b in ours}
    both["eager"] = fwd_bwd(eager)
    both["torch"] = fwd_bwd(lambda t: (torch.log_softmax if log else torch.softmax)(t, -1))
    both["compile"] = fwd_bwd(_compiled_reference(log))
    both["floor"] = lambda: (x.clone(), torch.add(x, dy))
    both.update({n: fwd_bwd(f) for n, f in gpu.items()})
    return [Case(name, label, "fwd", fwd, bytes=2 * elems * 2, floor="floor", missing=dict(missing)),
            Case(name, label, "fwd+bwd", both, bytes=5 * elems * 2, floor="floor", out_bytes=elems * 2,
                 missing=missing)]


# pytest-benchmark: `pytest benchmarks/bench_softmax.py` runs the quick cases; the CLI covers every shape.
test_softmax = benchmark_test(cases)
