"""Attention benchmark: eurokernels backend vs torch.nn.functional.scaled_dot_product_attention vs the reference in
eager mode vs torch.compile(reference).

Shapes: bf16, causal, 32 query / 8 key-value heads, head_dim 128 (Llama-3-8B / EuroLLM-9B class); batch 1 with
seqlen 2048 / 4096 / 8192, and one packed batch of uneven documents (8192 tokens). SDPA has no packed form: it runs
once per document (the comparable feature). The reference materializes [heads, seqlen, seqlen] fp32 scores, so it
runs only where that fits comfortably in memory (seqlen <= 2048).

TFLOP/s count only unmasked work: forward = 4 * head_dim * heads_q * P, where P is the number of visible
(query, key) pairs (s (s + 1) / 2 per causal document of s tokens: two matmuls of 2 * head_dim flops per pair);
forward + backward = 3.5 x that (the backward's five matmuls are 2.5 x the forward's two).
Peak memory (harness.peak_memory_mb): on CPU, the rise of the process's resident-set high-water mark during one
call, which counts every allocation (PyTorch's, oneDNN's and the kernels' own buffers).

Providers: eurokernels[cpu] on CPU; eurokernels[triton] and eurokernels[cuda] (the CUDA C++ FlashAttention-2, when
the extension is built) on a GPU — harness.our_backends; the simulated cuda backend is a test tool, never timed.

Run: `python -m benchmarks.run --ops attention`, or `pytest benchmarks/bench_attention.py`.
"""
import functools

import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference

from .harness import Case, benchmark_test, our_backends

HEADS_Q, HEADS_K, HEAD_DIM = 32, 8, 128
SEQLENS = [2048, 4096, 8192]
QUICK_SEQLENS = [2048]
PACKED_DOCS = [3000, 1500, 811, 2048, 500, 300, 32, 1]  # 8192 tokens: uneven documents, incl. tiny ones
MAX_REFERENCE_SEQLEN = 2048


def visible_pairs(doc_lengths):
    return sum(s * (s + 1) // 2 for s in doc_lengths)


@functools.cache
def _compiled_reference():
    return torch.compile(lambda q, k, v: reference.attention(q, k, v, causal=True)[0], dynamic=False)


def _sdpa(q, k, v):
    """[b, s, h, d] in and out; SDPA takes [b, h, s, d] (views, no copies)."""
    t = lambda x: x.transpose(1, 2)
    return t(F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, enable_gqa=True))


def _sdpa_per_document(q, k, v, bounds):
    return torch.cat([_sdpa(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in bounds])


def cases(device, quick=False):
    out = []
    shapes = [(1, s, None) for s in (QUICK_SEQLENS if quick else SEQLENS)]
    if not quick:
        shapes.append((None, sum(PACKED_DOCS), PACKED_DOCS))
    for batch, total, docs in shapes:
        packed = docs is not None
        lead = (total,) if packed else (batch, total)
        q = torch.randn(*lead, HEADS_Q, HEAD_DIM, dtype=torch.bfloat16, device=device)
        k = torch.randn(*lead, HEADS_K, HEAD_DIM, dtype=torch.bfloat16, device=device)
        v = torch.randn_like(k)
        dout = torch.randn_like(q)
        lengths = docs if packed else [total] * batch
        flops = 4 * HEAD_DIM * HEADS_Q * visible_pairs(lengths)
        label = (f"packed {len(docs)} docs {total} tok" if packed else f"b{batch} s{total}") + \
            f" {HEADS_Q}/{HEADS_K}h d{HEAD_DIM} bf16"
        extra = {}
        if packed:
            cu = torch.tensor([0] + torch.tensor(docs).cumsum(0).tolist(), dtype=torch.int32, device=device)
            extra = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(docs), max_seqlen_k=max(docs))
            bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
            sdpa = functools.partial(_sdpa_per_document, bounds=bounds)
        else:
            sdpa = _sdpa

        fns = {f"eurokernels[{b}]": functools.partial(ek.attention, causal=True, backend=b, **extra)
               for b in our_backends(device, "attention")}
        fns["sdpa"] = sdpa
        if not packed and total <= MAX_REFERENCE_SEQLEN:
            fns["eager"] = lambda q, k, v: reference.attention(q, k, v, causal=True)[0]
            fns["compile"] = _compiled_reference()
        meta = dict(seqlen=total, docs=len(lengths))
        out.append(Case("attention", label, "fwd", {n: functools.partial(f, q, k, v) for n, f in fns.items()},
                        flops=flops, meta=meta))

        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

        def fwd_bwd(f, qg=qg, kg=kg, vg=vg, dout=dout):  # bind this shape's tensors (the loop rebinds the names)
            return lambda: torch.autograd.grad(f(qg, kg, vg), (qg, kg, vg), dout)

        out.append(Case("attention", label, "fwd+bwd", {n: fwd_bwd(f) for n, f in fns.items()},
                        flops=int(3.5 * flops), meta=meta))
    return out


# pytest-benchmark: `pytest benchmarks/bench_attention.py` runs the quick cases; the CLI covers every shape.
test_attention = benchmark_test(cases)

