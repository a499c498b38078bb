"""GPU-only peers of the benchmark table: Liger-Kernel, flash-attn and quack, each an optional import.

UNVERIFIED ON A GPU HERE: these providers are written against the libraries' documented public APIs
(liger_kernel.transformers.functional, flash_attn.flash_attn_func / flash_attn_varlen_func, quack.cross_entropy /
rmsnorm / softmax) and have only been imported-and-skipped on CPU machines. Every bench module checks each peer's
answer against ours once (``agrees``) before it times it, so a signature or convention mismatch shows up as a note on
stderr and a missing row, never as a wrong figure.

One function per op returns ``(providers, missing)``: ``providers`` maps a peer's name to a callable taking the op's
inputs in this project's layout (as the bench module passes them to ours) and returning the same outputs; ``missing``
maps a peer that could run on this device but does not import to its status ("not installed"), which the harness
reports as a row without figures (harness.Case.missing). On a CPU device every function returns ``({}, {})``: these
peers are CUDA kernels (Triton / CUTLASS / CuTe), not missing ones.

The CPU-runnable peers (torch's chunked F.linear_cross_entropy, Cut Cross-Entropy, flex_attention, SDPA) live in
their bench modules (bench_cross_entropy._lce_peers, bench_attention), since they run on every machine.
"""
import importlib
import sys

import torch

NOT_INSTALLED = "not installed"


def note(msg):
    print(f"benchmarks.peers: {msg}", file=sys.stderr)


def _cuda(device):
    return torch.device(device).type == "cuda"


def _import(module, missing, name):
    """``module`` imported, or None with ``missing[name]`` set (ImportError: not installed; any other error on import,
    e.g. a CUDA/toolkit mismatch, says so)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing[name] = NOT_INSTALLED
    except Exception as e:  # noqa: BLE001 - a broken install must not stop the benchmark
        missing[name] = f"import failed ({type(e).__name__})"
    return None


def tolerance(dtype):
    """(rtol, atol) for comparing a peer's output with ours: both round to ``dtype`` once at the end, and their
    accumulation orders differ."""
    return {torch.float32: (1e-4, 1e-4), torch.float64: (1e-7, 1e-7)}.get(dtype, (3e-2, 3e-2))


def agrees(label, name, theirs, ours, tol=None):
    """Whether every output of ``theirs()`` is allclose to ``ours`` (a tensor or a tuple of them); a mismatch or an
    error is reported on stderr, and the caller leaves the peer out."""
    try:
        with torch.no_grad():
            got = theirs()
    except Exception as e:  # noqa: BLE001
        note(f"{label}: {name} left out: it raised {type(e).__name__}: {str(e)[:200]}")
        return False
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = ours if isinstance(ours, (tuple, list)) else (ours,)
    for g, w in zip(got, want):
        rtol, atol = tol or tolerance(w.dtype)
        if g.shape != w.shape or not torch.allclose(g.float(), w.float(), rtol=rtol, atol=atol):
            err = (g.float() - w.float()).abs().max().item() if g.shape == w.shape else f"shape {tuple(g.shape)}"
            note(f"{label}: {name} left out: its output differs from ours (max abs error {err})")
            return False
    return True


def attention(device, *, causal=True, window_size=(-1, -1), softcap=0.0, cu_seqlens=None, max_seqlen=None):
    """flash-attn: (q, k, v) -> out, [b, s, h, d] (packed [total, h, d] with cu_seqlens, as ours); GQA native."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    fa = _import("flash_attn", missing, "flash-attn")
    if fa is None:
        return providers, missing
    kw = dict(causal=causal, window_size=tuple(window_size), softcap=softcap)
    if cu_seqlens is not None:
        providers["flash-attn"] = lambda q, k, v: fa.flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kw)
    else:
        providers["flash-attn"] = lambda q, k, v: fa.flash_attn_func(q, k, v, **kw)
    return providers, missing


def cross_entropy(device):
    """(logits [N, V], labels [N]) -> mean loss: Liger's and quack's."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    lf = _import("liger_kernel.transformers.functional", missing, "liger")
    if lf is not None:
        providers["liger"] = lambda x, y: lf.liger_cross_entropy(x, y)
    qk = _import("quack", missing, "quack")
    if qk is not None:
        def quack_ce(x, y):
            loss = qk.cross_entropy(x, y)  # per-row losses in quack <= 0.1, the mean in later versions
            return loss.mean() if loss.dim() else loss
        providers["quack"] = quack_ce
    return providers, missing


def linear_cross_entropy(device):
    """(hidden [N, H], weight [V, H], labels [N]) -> mean loss: Liger's fused linear cross-entropy."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    lf = _import("liger_kernel.transformers.functional", missing, "liger")
    if lf is not None:
        providers["liger"] = lambda h, w, y: lf.liger_fused_linear_cross_entropy(h, w, y)
    return providers, missing


def rms_norm(device, eps):
    """(x [N, H], weight [H]) -> y: Liger's (llama casting, in_place=False: its backward must not overwrite the
    benchmark's reused dy) and quack's."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    lf = _import("liger_kernel.transformers.functional", missing, "liger")
    if lf is not None:
        providers["liger"] = lambda x, w: lf.liger_rms_norm(x, w, eps, casting_mode="llama", in_place=False)
    qk = _import("quack", missing, "quack")
    if qk is not None:
        providers["quack"] = lambda x, w: qk.rmsnorm(x, w, eps=eps)
    return providers, missing


def swiglu(device):
    """(gate, up) -> silu(gate) * up: Liger's."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    lf = _import("liger_kernel.transformers.functional", missing, "liger")
    if lf is not None:
        providers["liger"] = lambda g, u: lf.liger_swiglu(g, u)
    return providers, missing


def rotary(device, cos, sin):
    """(q, k) [b, s, h, d] -> (q', k'), non-interleaved rotation with our [positions, d / 2] tables: Liger's rope,
    which takes [b, h, s, d] (it transposes back internally) and Hugging Face's [1, s, d] tables (both halves)."""
    providers, missing = {}, {}
    if not _cuda(device):
        return providers, missing
    lf = _import("liger_kernel.transformers.functional", missing, "liger")
    if lf is not None:
        full = lambda t: torch.cat([t, t], dim=-1)[None]  # noqa: E731
        tables = {}  # (dtype, seqlen) -> its tables, built on the first (untimed) call

        def liger_rope(q, k):
            key = (q.dtype, q.shape[1])
            if key not in tables:
                tables[key] = tuple(full(t)[:, :key[1]].to(q.dtype).contiguous() for t in (cos, sin))
            qo, ko = lf.liger_rope(q.transpose(1, 2), k.transpose(1, 2), *tables[key])
            return qo.transpose(1, 2), ko.transpose(1, 2)
        providers["liger"] = liger_rope
    return providers, missing


def softmax(device, log):
    """x [N, V] -> softmax(x) over the last dim: quack's (it has no log-softmax: nothing for ``log``)."""
    providers, missing = {}, {}
    if not _cuda(device) or log:
        return providers, missing
    qk = _import("quack", missing, "quack")
    if qk is not None:
        providers["quack"] = lambda x: qk.softmax(x)
    return providers, missing
