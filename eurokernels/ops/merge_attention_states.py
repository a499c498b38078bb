"""Merging attention states: the exact attention over the union of two disjoint key sets from the two partial
results, each an ``(out, lse)`` pair as ``eurokernels.attention(..., return_lse=True)`` returns it.

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

Why PyTorch ops and not a registered kernel per backend: it is a handful of elementwise operations on tensors the
attention kernels already wrote (no reduction, no tiling to get right), so a fused kernel would save one pass over
``out`` and nothing else. Written with PyTorch ops it runs on every device and whichever backend produced its inputs,
its autograd and ``torch.compile`` (which fuses it into one loop) come from PyTorch, and DTensor propagates its
shardings through the aten ops' own rules. The manifest marks it ``composite`` (eurokernels/manifest.py).
"""
import torch

from .. import _checks

_LSE_DTYPES = (torch.float32, torch.float64)


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Combine two partial attention results over disjoint key sets into the result over their union.

    Args:
        out_a, out_b: ``[batch, seqlen, heads, head_dim]`` or packed ``[tokens, heads, head_dim]``, one shape and
            dtype (float16 / bfloat16 / float32 / float64), one device.
        lse_a, lse_b: the matching log-sum-exps, float32 (float64 for gradcheck): ``[batch, heads, seqlen]``
            (packed: ``[heads, tokens]``), the layouts ``attention(..., return_lse=True)`` returns. ``-inf`` marks a
            row that saw no key in that part (its out row is ignored).

    Returns:
        ``(out, lse)``: out in the inputs' dtype, lse in lse_a's dtype. The math is done in float32 (float64 for
        float64 inputs) and out is rounded once. A row empty in both parts gives zeros and ``lse = -inf`` (as
        attention does for a query that sees no key) and gets zero gradients; in every other row the result is
        differentiable in all four inputs (the lse gradient is what a caller needs when it merges again).
    """
    _check(out_a, lse_a, out_b, lse_b)
    math = lse_a.dtype
    a, b = lse_a, lse_b.to(math)
    m = torch.maximum(a, b)
    m_safe = torch.where(m == float("-inf"), 0.0, m)  # both empty: keeps exp(-inf - m) at 0 instead of nan
    wa, wb = torch.exp(a - m_safe), torch.exp(b - m_safe)
    total = wa + wb
    seen = total > 0
    total_safe = torch.where(seen, total, 1.0)  # log(0)'s gradient never enters the graph
    lse = torch.where(seen, m_safe + torch.log(total_safe), float("-inf"))
    scale_a = (wa / total_safe).transpose(-1, -2).unsqueeze(-1)  # [.., seqlen, heads, 1]: broadcasts over out
    scale_b = (wb / total_safe).transpose(-1, -2).unsqueeze(-1)
    out = scale_a * out_a.to(math) + scale_b * out_b.to(math)
    return out.to(out_a.dtype), lse


def _check(out_a, lse_a, out_b, lse_b):
    for name, t in (("out_a", out_a), ("out_b", out_b)):
        _checks.check_tensor(name, t, dtypes=_checks.REFERENCE_DTYPES)
        if t.dim() not in (3, 4):
            raise ValueError(f"{name}: expected [batch, seqlen, heads, head_dim] or packed [tokens, heads, "
                             f"head_dim], got shape {tuple(t.shape)}")
    if out_b.shape != out_a.shape or out_b.dtype != out_a.dtype:
        raise ValueError(f"out_b: expected the shape and dtype of out_a ({tuple(out_a.shape)}, {out_a.dtype}), got "
                         f"({tuple(out_b.shape)}, {out_b.dtype})")
    if out_a.dim() == 4:
        b, s, h = out_a.shape[:3]
        want, layout = (b, h, s), "[batch, heads, seqlen]"
    else:
        t, h = out_a.shape[:2]
        want, layout = (h, t), "[heads, tokens] (packed)"
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        _checks.check_tensor(name, lse, dtypes=_LSE_DTYPES)
        if tuple(lse.shape) != want:
            raise ValueError(f"{name}: expected {layout} = {want} for out of shape {tuple(out_a.shape)}, got "
                             f"{tuple(lse.shape)}")
    for name, t in (("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        _checks.check_same_device(name, t, "out_a", out_a)
    if lse_b.dtype != lse_a.dtype:
        raise TypeError(f"lse_b: expected dtype {lse_a.dtype} (that of lse_a), got {lse_b.dtype}")
