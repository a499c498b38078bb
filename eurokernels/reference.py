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
# Softmax, log-softmax and cross-entropy over a (large) vocabulary
# ---------------------------------------------------------------------------------------------------------------


def softmax(x, log=False):
    """softmax (or log_softmax) over the last dimension in fp32 math, cast back to x's dtype; also returns the
    per-row log-sum-exp (fp32, fp64 kept) that the backward recomputes the probabilities from."""
    xf = up(x)
    lse = torch.logsumexp(xf, -1)
    y = xf - lse[..., None]
    return (y if log else torch.exp(y)).to(x.dtype), lse


def softmax_backward(dy, x, lse, log=False):
    """Gradient of softmax / log_softmax w.r.t. x, with p = exp(x - lse) recomputed in fp32 from the input (not
    from the rounded output, whose bf16 rounding would be amplified by sum(dy) on long rows):
    softmax: dx = p * (dy - sum(dy * p)); log_softmax: dx = dy - p * sum(dy)."""
    dyf = up(dy)
    p = torch.exp(up(x) - lse[..., None].to(up(x).dtype))
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
