"""Attention benchmark: eurokernels backend vs torch.nn.functional.scaled_dot_product_attention, flex_attention and
(on a GPU) flash-attn vs the reference in eager mode vs torch.compile(reference).

Shapes: bf16, 32 query / 8 key-value heads, head_dim 128 (Llama-3-8B / EuroLLM-9B class). Causal, batch 1 with
seqlen 2048 / 4096 / 8192 (--quick: 2048), and, in the full run only, the features packed training uses:
  documents  one packed batch of uneven documents (PACKED_DOCS, 8192 tokens), each causal within itself
  window     causal sliding window of WINDOW = 512 keys back, seqlen 4096 (Mistral / Gemma 2 local layers)
  softcap    causal with Gemma 2's score cap SOFTCAP = 50 (softcap * tanh(s / softcap)), seqlen 4096
The reference materializes [heads, seqlen, seqlen] fp32 scores, so it runs only where that fits comfortably in memory
(causal, seqlen <= 2048).

Peers, each checked once against our output (peers.agrees: allclose at a bf16 tolerance) before it is timed; a
wrong answer is reported on stderr and left out:
  sdpa            only where it can express the case without a materialized mask: causal, and documents as one
                  call per document (it has no packed form)
  flex_attention  torch.nn.attention.flex_attention under torch.compile (dynamic=False, one compiled wrapper per mask
                  kind), its block mask from create_block_mask (causal / window / document mask; softcap as a
                  score_mod), made once per case outside the timed calls. On CPU forward only: its backward raises
                  NotImplementedError("FlexAttention does not support backward on CPU") in torch 2.14 (checked on
                  2.14.1), so a CPU fwd+bwd case has a flex_attention row with that status and no figures; a torch
                  without flex_attention gives a "not installed" row.
  flash-attn      on CUDA when importable (benchmarks/peers.py; unverified on a GPU here).

TFLOP/s count only unmasked work: forward = 4 * head_dim * heads_q * P, where P is the number of visible
(query, key) pairs (s (s + 1) / 2 per causal document of s tokens, fewer under a window: two matmuls of
2 * head_dim flops per pair); forward + backward = 3.5 x that (the backward's five matmuls are 2.5 x the forward's
two).
Peak memory (harness.peak_memory_mb): on CPU, the rise of the process's resident-set high-water mark during one
call, which counts every allocation (PyTorch's, oneDNN's and the kernels' own buffers).

Providers of ours: eurokernels[cpu] on CPU; eurokernels[triton] and eurokernels[cuda] (the CUDA C++
FlashAttention-2, when the extension is built) on a GPU — harness.our_backends; the simulated cuda backend is a test
tool, never timed.

Run: `python -m benchmarks.run --ops attention`, or `pytest benchmarks/bench_attention.py`.
"""
import functools

import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference

from . import peers
from .harness import Case, benchmark_test, our_backends

HEADS_Q, HEADS_K, HEAD_DIM = 32, 8, 128
SEQLENS = [2048, 4096, 8192]
QUICK_SEQLENS = [2048]
PACKED_DOCS = [3000, 1500, 811, 2048, 500, 300, 32, 1]  # 8192 tokens: uneven documents, incl. tiny ones
FEATURE_SEQLEN = 4096
WINDOW = 512
SOFTCAP = 50.0
MAX_REFERENCE_SEQLEN = 2048

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    create_block_mask = flex_attention = None

FLEX_NOT_INSTALLED = "not installed (torch without flex_attention)"
FLEX_NO_CPU_BACKWARD = "forward only on CPU (torch: no flex backward on CPU)"


def visible_pairs(doc_lengths, window=-1):
    """(query, key) pairs a causal mask (with a window of ``window`` keys back, -1: none) leaves visible."""
    if window < 0:
        return sum(s * (s + 1) // 2 for s in doc_lengths)
    w = window + 1  # a query sees itself and `window` keys before it
    return sum(min(s, w) * (min(s, w) + 1) // 2 + max(s - w, 0) * w for s in doc_lengths)


@functools.cache
def _compiled_reference():
    return torch.compile(lambda q, k, v: reference.attention(q, k, v, causal=True)[0], dynamic=False)


def _softcap_score(score, b, h, q_idx, kv_idx):
    return SOFTCAP * torch.tanh(score / SOFTCAP)


@functools.cache
def _compiled_flex(kind):
    """flex_attention under torch.compile, one wrapper (one cache of compiled graphs) per mask kind."""
    score_mod = _softcap_score if kind == "softcap" else None
    return torch.compile(lambda q, k, v, block_mask: flex_attention(q, k, v, score_mod=score_mod,
                                                                     block_mask=block_mask, enable_gqa=True),
                         dynamic=False)


def flex_provider(kind, total, device, docs=None):
    """flex_attention for one case as (q, k, v) -> out in our layout ([b, s, h, d], packed [total, h, d]), its block
    mask made here (once per case, outside the timed calls); None when this torch has no flex_attention."""
    if flex_attention is None:
        return None
    if kind == "documents":
        doc_id = torch.repeat_interleave(torch.arange(len(docs), device=device), torch.tensor(docs, device=device))
        mask = lambda b, h, q, kv: (doc_id[q] == doc_id[kv]) & (q >= kv)  # noqa: E731
    elif kind == "window":
        mask = lambda b, h, q, kv: (q >= kv) & (q - kv <= WINDOW)  # noqa: E731
    else:  # causal, softcap
        mask = lambda b, h, q, kv: q >= kv  # noqa: E731
    block_mask = create_block_mask(mask, None, None, total, total, device=device)
    run = _compiled_flex(kind)
    t = lambda x: x.transpose(1, 2)  # noqa: E731 - flex takes [b, h, s, d]: views, no copies

    def flex(q, k, v):
        packed = q.dim() == 3
        if packed:
            q, k, v = q[None], k[None], v[None]
        out = t(run(t(q), t(k), t(v), block_mask))
        return out[0] if packed else out
    return flex


def _sdpa(q, k, v):
    """[b, s, h, d] in and out; SDPA takes [b, h, s, d] (views, no copies)."""
    t = lambda x: x.transpose(1, 2)
    return t(F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, enable_gqa=True))


def _sdpa_per_document(q, k, v, bounds):
    return torch.cat([_sdpa(q[None, a:b], k[None, a:b], v[None, a:b])[0] for a, b in bounds])


def specs(quick):
    """The cases as (kind, batch, total tokens, documents): causal shapes, then (full run) the feature cases."""
    out = [("causal", 1, s, None) for s in (QUICK_SEQLENS if quick else SEQLENS)]
    if not quick:
        out += [("documents", None, sum(PACKED_DOCS), PACKED_DOCS), ("window", 1, FEATURE_SEQLEN, None),
                ("softcap", 1, FEATURE_SEQLEN, None)]
    return out


def cases(device, quick=False):
    # A generator: each case's tensors exist only while its cases run.
    return (c for spec in specs(quick) for c in _spec_cases(*spec, device))


def _spec_cases(kind, batch, total, docs, device):
    """One spec's fwd and fwd+bwd cases: a function of its own so that every closure binds this spec's tensors."""
    packed = docs is not None
    lead = (total,) if packed else (batch, total)
    q = torch.randn(*lead, HEADS_Q, HEAD_DIM, dtype=torch.bfloat16, device=device)
    k = torch.randn(*lead, HEADS_K, HEAD_DIM, dtype=torch.bfloat16, device=device)
    v = torch.randn_like(k)
    dout = torch.randn_like(q)
    lengths = docs if packed else [total] * batch
    window = WINDOW if kind == "window" else -1
    flops = 4 * HEAD_DIM * HEADS_Q * visible_pairs(lengths, window)
    feature = {"window": f" window {WINDOW}", "softcap": f" softcap {SOFTCAP:g}"}.get(kind, "")
    label = (f"packed {len(docs)} docs {total} tok" if packed else f"b{batch} s{total}{feature}") + \
        f" {HEADS_Q}/{HEADS_K}h d{HEAD_DIM} bf16"
    kw = dict(causal=True)
    if kind == "window":
        kw["window_size"] = (WINDOW, 0)
    if kind == "softcap":
        kw["softcap"] = SOFTCAP
    if packed:
        cu = torch.tensor([0] + torch.tensor(docs).cumsum(0).tolist(), dtype=torch.int32, device=device)
        kw.update(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(docs), max_seqlen_k=max(docs))

    fns = {f"eurokernels[{b}]": functools.partial(ek.attention, backend=b, **kw)
           for b in our_backends(device, "attention")}
    if kind == "causal" and total <= MAX_REFERENCE_SEQLEN:
        fns["eager"] = lambda q, k, v: reference.attention(q, k, v, causal=True)[0]
        fns["compile"] = _compiled_reference()

    peer_fns, missing = {}, {}
    if kind == "causal":
        peer_fns["sdpa"] = _sdpa
    elif kind == "documents":
        bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
        peer_fns["sdpa"] = functools.partial(_sdpa_per_document, bounds=bounds)
    flex = flex_provider(kind, total, device, docs)
    if flex is None:
        missing["flex_attention"] = FLEX_NOT_INSTALLED
    else:
        peer_fns["flex_attention"] = flex
    gpu, gpu_missing = peers.attention(device, causal=True, window_size=kw.get("window_size", (-1, -1)),
                                       softcap=kw.get("softcap", 0.0), cu_seqlens=kw.get("cu_seqlens_q"),
                                       max_seqlen=kw.get("max_seqlen_q"))
    peer_fns.update(gpu)
    missing.update(gpu_missing)
    with torch.no_grad():
        ours = ek.attention(q, k, v, **kw)
    fns.update({n: f for n, f in peer_fns.items() if peers.agrees(label, n, functools.partial(f, q, k, v), ours)})
    del ours

    meta = dict(seqlen=total, docs=len(lengths), feature=kind)
    out = [Case("attention", label, "fwd", {n: functools.partial(f, q, k, v) for n, f in fns.items()},
                flops=flops, meta=meta, missing=dict(missing))]

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwd_bwd(f):
        return lambda: torch.autograd.grad(f(qg, kg, vg), (qg, kg, vg), dout)

    both = dict(fns)
    if torch.device(device).type == "cpu" and "flex_attention" in both:
        del both["flex_attention"]  # raises NotImplementedError on CPU (see the module docstring)
        missing["flex_attention"] = FLEX_NO_CPU_BACKWARD
    out.append(Case("attention", label, "fwd+bwd", {n: fwd_bwd(f) for n, f in both.items()},
                    flops=int(3.5 * flops), meta=meta, missing=missing))
    return out


# pytest-benchmark: `pytest benchmarks/bench_attention.py` runs the quick cases; the CLI covers every shape.
test_attention = benchmark_test(cases)
