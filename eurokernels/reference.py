"""Reference implementations: plain PyTorch, fp32 math, cast back to the input dtype once.

These are the oracles every backend is tested against (and the ``reference`` backend). They favour clarity over
speed: no fusion, no in-place tricks. Each op's exact rounding conventions are spelled out here first.
"""
import math

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
# Gated MLP activations: SwiGLU and GeGLU
# ---------------------------------------------------------------------------------------------------------------

_math = up  # the upcast helper, under a name the argument ``up`` (the up projection) does not shadow below


def _swiglu_halves(gate, up):
    """(gate, up); ``up=None`` splits a fused ``[..., 2 * intermediate]`` projection: gate first, then up."""
    return gate.chunk(2, dim=-1) if up is None else (gate, up)


def swiglu(gate, up=None, activation="silu"):
    """act(gate) * up in fp32 math, rounded once to gate's dtype; ``up=None``: gate is the fused projection.
    act is SiLU (SwiGLU) or GELU with the tanh approximation or exact (GeGLU), as torch.nn.functional computes it."""
    g, u = _swiglu_halves(gate, up)
    g, u = _math(g), _math(u)
    if activation == "silu":
        a = torch.nn.functional.silu(g)
    else:
        a = torch.nn.functional.gelu(g, approximate="tanh" if activation == "gelu_tanh" else "none")
        # PyTorch's exact GELU gives NaN at +inf on CPU; the limit is +inf, which its tanh form and every kernel
        # here give (the one place the reference departs from torch.nn.functional).
        a = torch.where(g == float("inf"), g, a)
    return (a * u).to(gate.dtype)


def swiglu_backward(dy, gate, up=None, activation="silu"):
    """Gradients of swiglu w.r.t. gate and up from the textbook derivatives, fp32 math, each rounded once:
    d_gate = dy * up * act'(gate), d_up = dy * act(gate). Nothing is saved by the forward: act is recomputed.
    With ``up=None`` returns ``(d_fused, None)``, one ``[..., 2 * intermediate]`` gradient."""
    g, u = _swiglu_halves(gate, up)
    g, u, dyf = _math(g), _math(u), _math(dy)
    if activation == "silu":
        s = torch.sigmoid(g)
        a, da = g * s, s * (1 + g * (1 - s))
    elif activation == "gelu_tanh":
        k, c = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(k * (g + c * g ** 3))
        a = 0.5 * g * (1 + t)
        # The sech^2 = 1 - t^2 term vanishes where tanh saturated; dropping it there also avoids 0 * inf for huge
        # finite g. At g = +-inf the derivative is NaN, as PyTorch's autograd and the kernels give.
        da = 0.5 * (1 + t) + torch.where((t.abs() < 1) | g.isinf(), 0.5 * g * (1 - t * t) * k * (1 + 3 * c * g * g),
                                         0.0)
    else:
        cdf = 0.5 * (1 + torch.erf(g / math.sqrt(2)))
        a, da = g * cdf, cdf + g * torch.exp(-0.5 * g * g) / math.sqrt(2 * math.pi)
    dgate, dup = (dyf * u * da).to(gate.dtype), (dyf * a).to(gate.dtype)
    return (torch.cat([dgate, dup], -1), None) if up is None else (dgate, dup)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embeddings
# ---------------------------------------------------------------------------------------------------------------


def rotary_positions(tokens_shape, position_ids=None, cu_seqlens=None, device=None):
    """The position of every token, as int64 of shape ``tokens_shape`` ([batch, seqlen] or [total_tokens]), and a
    bool mask of the tokens that have one.

    ``position_ids`` wins when given; else packed tokens (``cu_seqlens`` given, layout [total_tokens]) count from
    the start of their sequence; else the position is the index along seqlen. A packed token outside
    [cu_seqlens[0], cu_seqlens[-1]) belongs to no sequence and has no position.
    """
    if position_ids is not None:
        pos = position_ids.to(torch.int64).reshape(tokens_shape)
        return pos, torch.ones_like(pos, dtype=torch.bool)
    if cu_seqlens is not None:
        t = torch.arange(tokens_shape[0], device=device)
        cu = cu_seqlens.to(torch.int64)
        seq = torch.searchsorted(cu, t, right=True) - 1  # the last sequence start <= t
        valid = (seq >= 0) & (seq < cu.numel() - 1) & (t < cu[-1])
        pos = t - cu[seq.clamp(0, max(cu.numel() - 2, 0))]
        return pos, valid
    pos = torch.arange(tokens_shape[-1], device=device).expand(tokens_shape)
    return pos, torch.ones_like(pos, dtype=torch.bool)


def apply_rotary(q, k, cos, sin, position_ids=None, cu_seqlens=None, interleaved=False, conjugate=False):
    """Rotate the first ``rotary_dim = 2 * cos.shape[1]`` features of every head of q and k; returns (q_out, k_out).

    Layout [batch, seqlen, heads, head_dim], or [total_tokens, heads, head_dim] with ``cu_seqlens``. For the pair
    (x1, x2) at frequency i of a token at position p, with c = cos[p, i], s = sin[p, i]:
        out1 = x1 * c - x2 * s,   out2 = x2 * c + x1 * s        (a rotation by +theta)
    ``conjugate=True`` rotates by -theta (s -> -s): the transpose, hence the backward of the forward.
    Pairs: NeoX/Llama (``interleaved=False``) pairs feature i with i + rotary_dim / 2; GPT-J (``interleaved=True``)
    pairs 2i with 2i + 1. Features past rotary_dim pass through. fp32 math (fp64 kept), cast back once.
    A token without a valid position (outside the table, or outside every packed sequence) gets NaN in its
    rotated features: the kernels' behaviour where such positions cannot be checked without a host sync.
    """
    tokens_shape = q.shape[:-2]
    pos, valid = rotary_positions(tokens_shape, position_ids, cu_seqlens, q.device)
    n_pos = cos.shape[0]
    valid = valid & (pos >= 0) & (pos < n_pos)
    idx = torch.where(valid, pos, torch.zeros_like(pos))
    nan = torch.tensor(float("nan"), dtype=up(cos).dtype, device=cos.device)
    c = torch.where(valid[..., None], up(cos)[idx], nan)[..., None, :]  # [..., 1, half]: broadcast over heads
    s = torch.where(valid[..., None], up(sin)[idx], nan)[..., None, :]
    if conjugate:
        s = -s
    return _rotate(q, c, s, interleaved), _rotate(k, c, s, interleaved)


def _rotate(x, c, s, interleaved):
    half = c.shape[-1]
    xf = up(x)
    if interleaved:
        x1, x2 = xf[..., 0:2 * half:2], xf[..., 1:2 * half:2]
    else:
        x1, x2 = xf[..., :half], xf[..., half:2 * half]
    o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
    rotated = torch.stack((o1, o2), -1).flatten(-2) if interleaved else torch.cat((o1, o2), -1)
    return torch.cat((rotated, xf[..., 2 * half:]), -1).to(x.dtype)


def rotary_inv_freq(rotary_dim, base=10000.0, scaling=None, max_positions=None):
    """(inv_freq fp32 [rotary_dim // 2], attention_factor) with the same arithmetic (fp32 tensors, Python-float
    scalars) as Hugging Face's rope initialisation for rope_type default / linear / dynamic / yarn / llama3.

    ``scaling`` is validated by eurokernels.ops.rotary.rotary_cos_sin; here it is trusted.
    """
    import math
    dim = rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    rope_type = (scaling or {}).get("rope_type", scaling.get("type") if scaling else None) or "default"
    attention_factor = 1.0
    if rope_type == "dynamic":
        # HF: seq_len = max(seq_len, original); base' = base * (factor * seq_len / original - (factor - 1))^(d/(d-2))
        factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]
        seq_len = max(max_positions, orig)
        base = base * ((factor * seq_len / orig) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** exponents)
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "yarn":
        factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention_factor = scaling.get("attention_factor")
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if attention_factor is None:
            if mscale and mscale_all_dim:
                attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
            else:
                attention_factor = get_mscale(factor)
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

        def correction_dim(rotations):
            return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # avoid a division by zero, as HF does
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = base ** exponents
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
        extrapolation_factor = 1 - ramp
        inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    elif rope_type == "llama3":
        factor, low_ff, high_ff = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        orig = scaling["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = orig / low_ff, orig / high_ff
        wavelen = 2 * math.pi / inv_freq
        llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * llama / factor + smooth * llama
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, llama)
    return inv_freq, float(attention_factor)


def rotary_cos_sin(max_positions, rotary_dim, base=10000.0, scaling=None, dtype=torch.float32, device=None):
    """cos/sin tables [max_positions, rotary_dim // 2]: angle = position * inv_freq in fp32 (HF computes the same
    single fp32 product), times the attention factor (YaRN; 1 otherwise), then cast to ``dtype``."""
    inv_freq, attention_factor = rotary_inv_freq(rotary_dim, base, scaling, max_positions)
    inv_freq = inv_freq.to(device)
    angles = torch.outer(torch.arange(max_positions, device=device, dtype=torch.int64).float(), inv_freq)
    return ((angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype))


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
    m_raw = s.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m_raw), torch.zeros_like(m_raw), m_raw)  # a row that sees no key: exp(-inf - 0) = 0
    e = torch.exp(s - m)
    denom = e.sum(-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    # a +inf score: p is NaN (inf / inf) and so is lse, as every kernel gives (inf - inf)
    lse = torch.where(torch.isposinf(m_raw), float("nan"), m + torch.log(denom)).squeeze(-1)
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


def _dense_attention_backward(dout, q, k, v, scale, window_left, window_right, softcap, out=None, lse=None):
    """Gradients of one dense batch in fp32 math: dP = dO V^T, dS = P * (dP - rowsum(P * dP)) (times the softcap
    derivative 1 - tanh^2), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO; GQA gradients summed over the group.

    With ``out`` and ``lse`` ([b, hq, sq]) of a softmax over a larger key set that these keys are part of (ring
    attention's blocks), P = exp(S - lse) and rowsum(P * dP) = rowsum(dO * out), as FlashAttention's backward
    computes them: the gradients are this block's share of that attention's."""
    if k.shape[1] == 0 or q.shape[1] == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    p, t, lse_block = _attention_probs(q, k, scale, window_left, window_right, softcap, True)
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = hq // hk
    qf, dof = up(q).transpose(1, 2), up(dout).transpose(1, 2)
    kf = up(k).transpose(1, 2).repeat_interleave(g, dim=1)
    vf = up(v).transpose(1, 2).repeat_interleave(g, dim=1)
    dp = dof @ vf.transpose(-1, -2)
    if lse is None:
        ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    else:  # the block's probabilities renormalized to the whole softmax (rows that see no key here stay 0)
        lse_b, lse_all = lse_block[..., None], up(lse)[..., None]
        # -inf: no key seen; a NaN lse (a NaN score) must stay NaN, as PyTorch's autograd gives
        seen = (lse_b != float("-inf")) & (lse_all != float("-inf"))
        p = torch.where(seen, p * torch.exp(torch.where(seen, lse_b - lse_all, 0.0)), 0.0)
        ds = p * (dp - (dof * up(out).transpose(1, 2)).sum(-1, keepdim=True))
    if t is not None:
        ds = ds * (1 - t * t)
    # masked scores get exactly 0, as masked_fill's backward gives (p = 0 times a NaN row term would be NaN)
    ds = torch.where(attention_mask(sq, sk, window_left, window_right, q.device), ds, 0.0)
    dq = scale * ds @ kf
    dk = (scale * ds.transpose(-1, -2) @ qf).view(b, hk, g, sk, d).sum(2)
    dv = (p.transpose(-1, -2) @ dof).view(b, hk, g, sk, d).sum(2)
    return dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype), dv.transpose(1, 2).to(v.dtype)


def attention_backward(dout, q, k, v, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0,
                       cu_seqlens_q=None, cu_seqlens_k=None, out=None, lse=None):
    """(dq, dk, dv) of attention() for the output gradient ``dout``; lse carries no gradient. ``out`` and ``lse``
    (attention()'s layouts): those of a softmax over more keys than k holds (see _dense_attention_backward)."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = window_size
    if causal:
        right = 0
    if cu_seqlens_q is None:
        return _dense_attention_backward(dout, q, k, v, scale, left, right, softcap, out, lse)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for q0, q1, k0, k1 in _documents(cu_seqlens_q, cu_seqlens_k):
        block = {} if lse is None else dict(out=out[None, q0:q1], lse=lse[None, :, q0:q1])
        g = _dense_attention_backward(dout[None, q0:q1], q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], scale,
                                      left, right, softcap, **block)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------------------
# Softmax, log-softmax and cross-entropy over a (large) vocabulary
# ---------------------------------------------------------------------------------------------------------------


def softmax(x, log=False):
    """softmax (or log_softmax) over the last dimension in fp32 math, cast back to x's dtype; also returns the
    per-row log-sum-exp (fp32, fp64 kept) that the backward recomputes the probabilities from."""
    xf = up(x)
    lse = torch.logsumexp(xf, -1)
    # PyTorch's own functions give the values and, for non-finite rows, PyTorch's NaN / inf semantics (a row with
    # +inf is NaN throughout); x - lse would give 0 there instead of NaN.
    y = torch.log_softmax(xf, -1) if log else torch.softmax(xf, -1)
    return y.to(x.dtype), lse


def softmax_backward(dy, x, lse, log=False):
    """Gradient of softmax / log_softmax w.r.t. x, with p = exp(x - lse) recomputed in fp32 from the input (not
    from the rounded output, whose bf16 rounding would be amplified by sum(dy) on long rows):
    softmax: dx = p * (dy - sum(dy * p)); log_softmax: dx = dy - p * sum(dy)."""
    dyf = up(dy)
    lse = lse[..., None].to(up(x).dtype)
    # a row with +inf (lse +inf) is NaN throughout, as PyTorch's autograd gives (exp(x - lse) alone would give 0
    # at its finite entries)
    p = torch.where(torch.isposinf(lse), float("nan"), torch.exp(up(x) - lse))
    if log:
        dx = dyf - p * dyf.sum(-1, keepdim=True)
    else:
        dx = p * (dyf - (dyf * p).sum(-1, keepdim=True))
    return dx.to(x.dtype)


def _capped(x, softcap):
    """The logits after Gemma-2's soft cap ``softcap * tanh(x / softcap)`` (softcap 0: no cap)."""
    return softcap * torch.tanh(x / softcap) if softcap else x


def _target_terms(labels, ignore_index, vocab_start, v_local, vocab_total):
    valid = labels != ignore_index
    local = labels - vocab_start
    in_shard = valid & (local >= 0) & (local < v_local)
    bad = valid & ((labels < 0) | (labels >= vocab_total))  # out-of-range label: NaN (CPU kernels raise instead)
    return valid, local.clamp(0, max(v_local - 1, 0)), in_shard, bad


def cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=0.0,
                  vocab_start=0, vocab_total=None):
    """Per-token cross-entropy in fp32 math: ``(loss, lse)``, both fp32 (fp64 kept), shape ``labels.shape``.

    With ``z = softcap * tanh(logits / softcap)`` (or the logits), ``lse = logsumexp(z)`` and eps the smoothing,
        loss = lse + z_loss * lse^2 - (1 - eps) * z[label] - eps / V * sum(z)
    which is PyTorch's label smoothing ((1 - eps) * NLL + eps * mean over classes of -log p) plus PaLM's z-loss.
    Rows whose label is ``ignore_index`` have loss 0 (their lse is still returned). ``vocab_start`` /
    ``vocab_total`` describe a vocabulary shard (labels are global ids; the target term is only added where the
    label falls in the shard); by default the logits hold the whole vocabulary.
    """
    z = _capped(up(logits), softcap)
    v = z.shape[-1]
    vocab_total = v if vocab_total is None else vocab_total
    valid, local, in_shard, bad = _target_terms(labels, ignore_index, vocab_start, v, vocab_total)
    lse = torch.logsumexp(z, -1)
    # a +inf logit: the loss is NaN (inf - inf) and so is the lse every kernel returns (logsumexp would say +inf)
    lse = torch.where(torch.isposinf(z).any(-1), float("nan"), lse)
    zt = torch.gather(z, -1, local.unsqueeze(-1)).squeeze(-1)
    loss = lse + z_loss * lse * lse - (1.0 - label_smoothing) * torch.where(in_shard, zt, 0.0)
    if label_smoothing:
        loss = loss - label_smoothing / vocab_total * z.sum(-1)
    loss = torch.where(valid, loss, 0.0)
    return torch.where(bad, float("nan"), loss), lse


def cross_entropy_backward(dloss, dlse, logits, labels, lse, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                           softcap=0.0, vocab_start=0, vocab_total=None):
    """Gradient of (loss, lse) of ``cross_entropy`` w.r.t. the logits, fp32 math, cast to the logits' dtype:
        dz_j = g * (p_j * (1 + 2 z_loss lse) - (1 - eps) [j == label] - eps / V) + g_lse * p_j,  p = exp(z - lse)
        dx_j = dz_j * (1 - (z_j / softcap)^2)   with a soft cap (tanh' = 1 - tanh^2)
    where g is ``dloss`` (0 on ignored rows) and g_lse is ``dlse`` (None: 0). The true-class term is added in
    fp32 before the single rounding, so p - 1 never cancels in low precision.
    """
    x = up(logits)
    z = _capped(x, softcap)
    v = z.shape[-1]
    vocab_total = v if vocab_total is None else vocab_total
    valid, local, in_shard, bad = _target_terms(labels, ignore_index, vocab_start, v, vocab_total)
    lse = lse.to(z.dtype)
    g = torch.where(valid, up(dloss).to(z.dtype), 0.0)
    coef = g * (1.0 + 2.0 * z_loss * lse)
    if dlse is not None:
        coef = coef + up(dlse).to(z.dtype)
    dz = coef[..., None] * torch.exp(z - lse[..., None]) - (g * label_smoothing / vocab_total)[..., None]
    target = torch.where(in_shard, -(1.0 - label_smoothing) * g, 0.0)
    dz = dz.scatter_add(-1, local.unsqueeze(-1), target.unsqueeze(-1))
    if softcap:
        dz = dz * (1.0 - (z / softcap) ** 2)
    dz = torch.where(bad[..., None], float("nan"), dz)
    return dz.to(logits.dtype)


def linear(hidden, weight, bias=None):
    """The LM head's logits in fp32 math (not rounded to the inputs' dtype)."""
    return torch.nn.functional.linear(up(hidden), up(weight), up(bias))


def linear_cross_entropy_backward(dloss, dlse, hidden, weight, bias, labels, lse, ignore_index=-100,
                                  label_smoothing=0.0, z_loss=0.0, softcap=0.0):
    """Gradients (d_hidden, d_weight, d_bias or empty) of cross_entropy(linear(hidden, weight, bias)), fp32 math
    on the unrounded logits, each cast to its input's dtype once."""
    dlogits = cross_entropy_backward(dloss, dlse, linear(hidden, weight, bias), labels, lse, ignore_index,
                                     label_smoothing, z_loss, softcap)
    dh = dlogits @ up(weight)
    dw = dlogits.transpose(-1, -2) @ up(hidden)
    db = dlogits.sum(0).to(bias.dtype) if bias is not None else weight.new_empty(0)
    return dh.to(hidden.dtype), dw.to(weight.dtype), db
