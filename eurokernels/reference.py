"""Reference implementations: plain PyTorch, fp32 math, cast back to the input dtype once.

These are the oracles every backend is tested against (and the ``reference`` backend). They favour clarity over
speed: no fusion, no in-place tricks. Each op's exact rounding conventions are spelled out here first.
"""
import torch


def up(t):
    """``t`` in the math precision: fp32 for fp32/bf16/fp16 inputs, fp64 kept (gradcheck runs in fp64)."""
    return t if t is None or t.dtype == torch.float64 else t.float()


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm
# ---------------------------------------------------------------------------------------------------------------


def rms_norm(x, weight=None, eps=1e-6, offset=0.0, residual=None, casting="llama"):
    """y = x * rsqrt(mean(x^2) + eps) * (offset + w); returns (y, residual_out, rstd).

    With ``residual``, h = x + residual rounded to x's dtype (as the model's own add would) is both normalized and
    returned as ``residual_out`` (else None). ``rstd`` is fp32 with shape x.shape[:-1].

    casting (how the forward rounds; all three are identical for fp32 inputs):
      "llama": n = round(h * rstd); y = round(n * round(offset + w))         (HF LlamaRMSNorm)
      "gemma": y = round(h * rstd * (offset + w)), fp32 throughout            (HF GemmaRMSNorm)
      "none":  like "llama" with rstd itself rounded to x's dtype first      (the plain formula in x's dtype)
    where round() rounds to x's dtype.
    """
    dtype = x.dtype
    h = x if residual is None else (up(x) + up(residual)).to(dtype)
    hf = up(h)
    rstd = torch.rsqrt(hf.pow(2).mean(-1) + eps)
    w = None if weight is None else up(weight) + offset
    if casting == "gemma":
        y = hf * rstd[..., None]
        if w is not None:
            y = y * w
    else:
        r = rstd if casting == "llama" else up(rstd.to(dtype))
        y = up((hf * r[..., None]).to(dtype))
        if w is not None:
            y = y * up(w.to(dtype))
    return y.to(dtype), (None if residual is None else h), rstd


def rms_norm_backward(dy, h, weight, rstd, dresidual_out=None, offset=0.0):
    """Gradients of rms_norm w.r.t. its normalized input h and the weight, in fp32 math: (dh, dw or None).

    The forward's intermediate roundings are treated as identities (straight-through, as autograd treats .to()),
    so dh = rstd * (g - nhat * mean(g * nhat)) with g = dy * (offset + w), nhat = h * rstd; dw = sum(dy * nhat).
    ``dresidual_out`` (the gradient flowing into residual_out) is added to dh.
    """
    hf, dyf = up(h), up(dy)
    nhat = hf * rstd[..., None]
    g = dyf if weight is None else dyf * (up(weight) + offset)
    dh = rstd[..., None] * (g - nhat * (g * nhat).mean(-1, keepdim=True))
    if dresidual_out is not None:
        dh = dh + up(dresidual_out)
    dw = None if weight is None else (dyf * nhat).reshape(-1, h.shape[-1]).sum(0).to(weight.dtype)
    return dh.to(h.dtype), dw


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def attention_mask(seqlen_q, seqlen_k, window_left=-1, window_right=-1, device=None):
    """Boolean [seqlen_q, seqlen_k]: may query i see key j?

    Queries are aligned to the bottom-right of the score matrix (FlashAttention's convention): query i sits at key
    position i + seqlen_k - seqlen_q and sees keys from ``window_left`` before to ``window_right`` after it; -1 is
    unbounded on that side. ``causal`` is ``window_right = 0``.
    """
    i = torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    pos = i + (seqlen_k - seqlen_q)
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if window_left >= 0:
        mask &= j >= pos - window_left
    if window_right >= 0:
        mask &= j <= pos + window_right
    return mask


def _attention_probs(q, k, scale, window_left, window_right, softcap, upcast):
    """Scores and probabilities of one dense batch: q [b, sq, hq, d], k [b, sk, hk, d] -> (p, t, lse) with p
    [b, hq, sq, sk] the softmax (rows that see no key are all zeros), t = tanh(raw / softcap) (None without softcap,
    for the backward) and lse [b, hq, sq] the natural-log sum of exp (-inf for rows that see no key)."""
    cast = up if upcast else (lambda t: t)
    b, sq, hq, _ = q.shape
    sk, hk = k.shape[1], k.shape[2]
    qf = cast(q).transpose(1, 2)
    kf = cast(k).transpose(1, 2).repeat_interleave(hq // hk, dim=1)  # the oracle may expand GQA heads
    s = (qf @ kf.transpose(-1, -2)) * scale
    t = None
    if softcap > 0:
        t = torch.tanh(s / softcap)
        s = softcap * t
    mask = attention_mask(sq, sk, window_left, window_right, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    m = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # a row that sees no key: exp(-inf - 0) = 0
    e = torch.exp(s - m)
    denom = e.sum(-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    lse = (m + torch.log(denom)).squeeze(-1)
    return p, t, lse


def _dense_attention(q, k, v, scale, window_left, window_right, softcap, upcast):
    if k.shape[1] == 0 or q.shape[1] == 0:  # no keys (or no queries): zeros, lse -inf; q * 0 keeps the graph
        lse = q.new_full((q.shape[0], q.shape[2], q.shape[1]), float("-inf"),
                         dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
        return q * 0, lse
    p, _, lse = _attention_probs(q, k, scale, window_left, window_right, softcap, upcast)
    hq, hk = q.shape[2], k.shape[2]
    vf = (up(v) if upcast else v).transpose(1, 2).repeat_interleave(hq // hk, dim=1)
    out = (p.to(vf.dtype) @ vf).transpose(1, 2)
    return out.to(q.dtype), lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)


def _documents(cu_seqlens_q, cu_seqlens_k):
    """(q start, q end, k start, k end) of each packed document (host lists: the oracle may sync)."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return [(cq[i], cq[i + 1], ck[i], ck[i + 1]) for i in range(len(cq) - 1)]


def attention(q, k, v, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, cu_seqlens_q=None,
              cu_seqlens_k=None, upcast=True):
    """softmax(mask(cap(scale * q @ k^T))) @ v, materialized, in fp32 math; returns (out, lse).

    q [b, sq, hq, d], k and v [b, sk, hk, d] with hq a multiple of hk (query head h uses key/value head
    h // (hq // hk)); or packed q [total_q, hq, d], k/v [total_k, hk, d] with int32 ``cu_seqlens_q/k`` [n + 1]
    (document i is rows cu[i]:cu[i+1]; it attends only within itself). Scores: s = scale * q.k, scale defaulting to
    1 / sqrt(d); with softcap > 0, s = softcap * tanh(s / softcap); the mask is attention_mask() with ``causal``
    meaning window_size[1] = 0. A row that sees no key outputs zeros and has lse = -inf.
    lse (natural log) is [b, hq, sq], or [hq, total_q] packed, in fp32 (fp64 for fp64 inputs).

    ``upcast=False`` does every step in the input dtype instead (the tests' yardstick for PyTorch's own error).
    """
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = window_size
    if causal:
        right = 0
    if cu_seqlens_q is None:
        return _dense_attention(q, k, v, scale, left, right, softcap, upcast)
    out = torch.zeros_like(q)  # rows outside every document stay zero
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device,
                     dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    for q0, q1, k0, k1 in _documents(cu_seqlens_q, cu_seqlens_k):
        o, l = _dense_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], scale, left, right, softcap, upcast)
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return out, lse


def _dense_attention_backward(dout, q, k, v, scale, window_left, window_right, softcap):
    """Gradients of one dense batch in fp32 math: dP = dO V^T, dS = P * (dP - rowsum(P * dP)) (times the softcap
    derivative 1 - tanh^2), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO; GQA gradients summed over the group."""
    if k.shape[1] == 0 or q.shape[1] == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    p, t, _ = _attention_probs(q, k, scale, window_left, window_right, softcap, True)
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    qf, dof = up(q).transpose(1, 2), up(dout).transpose(1, 2)
    kf = up(k).transpose(1, 2).repeat_interleave(g, dim=1)
    vf = up(v).transpose(1, 2).repeat_interleave(g, dim=1)
    dp = dof @ vf.transpose(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    if t is not None:
        ds = ds * (1 - t * t)
    dq = scale * ds @ kf
    dk = (scale * ds.transpose(-1, -2) @ qf).view(b, hk, g, sk, d).sum(2)
    dv = (p.transpose(-1, -2) @ dof).view(b, hk, g, sk, d).sum(2)
    return dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype), dv.transpose(1, 2).to(v.dtype)


def attention_backward(dout, q, k, v, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                       cu_seqlens_q=None, cu_seqlens_k=None):
    """(dq, dk, dv) of attention() for the output gradient ``dout``; lse carries no gradient."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = window_size
    if causal:
        right = 0
    if cu_seqlens_q is None:
        return _dense_attention_backward(dout, q, k, v, scale, left, right, softcap)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for q0, q1, k0, k1 in _documents(cu_seqlens_q, cu_seqlens_k):
        g = _dense_attention_backward(dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], scale,
                                      left, right, softcap)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
