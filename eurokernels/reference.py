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
