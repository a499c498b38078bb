"""Rotary embedding benchmark: eurokernels backends vs the reference in eager mode vs torch.compile(reference).

Shape: EuroLLM-9B attention (32 q heads, 8 kv heads, head_dim 128), 4096 / 8192 / 16384 tokens, bf16 q and k,
fp32 cos/sin tables. Modes:
  fwd          out of place; floor: reading q and k and writing fresh copies (`q.clone(), k.clone()`): on CPU a
               fresh output pays page faults, which no kernel that allocates its output can avoid
  fwd+bwd      out of place, then the gradients of q and k; floor: the fwd floor twice (q, k, then dq, dk)
  inplace      rotating q and k in place (inplace=True); floor: reading and rewriting q and k in place
               (`q.mul_(1.0), k.mul_(1.0)`): the target is within 1.2x of it
Bytes (for GB/s): q and k read and written once each, plus the cos/sin rows read (per pass).
Run: `python -m benchmarks.run --ops rotary` or `pytest benchmarks/bench_rotary.py`.
"""
import functools

import torch

import eurokernels as ek
from eurokernels import reference

from . import peers
from .harness import Case, benchmark_test, our_backends

N_Q_HEADS, N_KV_HEADS, HEAD_DIM = 32, 8, 128  # EuroLLM-9B
TOKENS = [4096, 8192, 16384]
QUICK_TOKENS = [8192]


def _eager(q, k, cos, sin):
    return reference.apply_rotary(q, k, cos, sin)


@functools.cache
def _compiled_reference():
    return torch.compile(_eager, dynamic=False)


def cases(device, quick=False):
    # A generator: each shape's tensors exist only while its cases run.
    return (c for tokens in (QUICK_TOKENS if quick else TOKENS) for c in _shape_cases(tokens, device))


def _shape_cases(tokens, device):
    """One shape's cases: a function of its own so that every closure binds this shape's tensors."""
    out = []
    q = torch.randn(1, tokens, N_Q_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=device)
    k = torch.randn(1, tokens, N_KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=device)
    cos, sin = ek.rotary_cos_sin(tokens, HEAD_DIM, base=10000.0, device=device)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    qk_bytes = (q.numel() + k.numel()) * q.element_size()
    table_bytes = 2 * cos.numel() * cos.element_size()
    label = f"{tokens} tok {N_Q_HEADS}/{N_KV_HEADS}x{HEAD_DIM} bf16"
    meta = dict(tokens=tokens, n_q_heads=N_Q_HEADS, n_kv_heads=N_KV_HEADS, head_dim=HEAD_DIM)

    fwd = {f"eurokernels[{b}]": functools.partial(ek.apply_rotary, q, k, cos, sin, backend=b)
           for b in our_backends(device, "rotary")}
    fwd["eager"] = functools.partial(_eager, q, k, cos, sin)
    fwd["compile"] = functools.partial(_compiled_reference(), q, k, cos, sin)
    fwd["floor"] = lambda: (q.clone(), k.clone())
    gpu, missing = peers.rotary(device, cos, sin)  # Liger on CUDA (benchmarks/peers.py)
    with torch.no_grad():
        want = ek.apply_rotary(q, k, cos, sin)
    gpu = {n: f for n, f in gpu.items() if peers.agrees(label, n, functools.partial(f, q, k), want)}
    fwd.update({n: functools.partial(f, q, k) for n, f in gpu.items()})
    out.append(Case("rotary", label, "fwd", fwd, bytes=2 * qk_bytes + table_bytes, floor="floor", meta=meta,
                    missing=dict(missing)))

    qg, kg = q.detach().requires_grad_(), k.detach().requires_grad_()

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(qg, kg), (qg, kg), (dq, dk))

    both = {f"eurokernels[{b}]": fwd_bwd(functools.partial(ek.apply_rotary, cos=cos, sin=sin, backend=b))
            for b in our_backends(device, "rotary")}
    both["eager"] = fwd_bwd(functools.partial(_eager, cos=cos, sin=sin))
    both["compile"] = fwd_bwd(functools.partial(_compiled_reference(), cos=cos, sin=sin))
    both["floor"] = lambda: (q.clone(), k.clone(), dq.clone(), dk.clone())
    both.update({n: fwd_bwd(f) for n, f in gpu.items()})
    out.append(Case("rotary", label, "fwd+bwd", both, bytes=4 * qk_bytes + 2 * table_bytes, floor="floor",
                    meta=meta, missing=missing))

    # In place: the buffers are rotated again on every call (a rotation keeps them finite and of equal norm).
    qb, kb = q.clone(), k.clone()
    inplace = {f"eurokernels[{b}]": functools.partial(ek.apply_rotary, qb, kb, cos, sin, inplace=True, backend=b)
               for b in our_backends(device, "rotary")}
    inplace["eager"] = functools.partial(ek.apply_rotary, qb, kb, cos, sin, inplace=True, backend="reference")
    inplace["floor"] = lambda: (qb.mul_(1.0), kb.mul_(1.0))
    out.append(Case("rotary", label, "inplace", inplace, bytes=2 * qk_bytes + table_bytes, floor="floor",
                    meta=meta))
    return out


# pytest-benchmark: `pytest benchmarks/bench_rotary.py` runs the quick cases; the CLI covers every shape.
test_rotary = benchmark_test(cases)
