"""The cross-entropy core shared by cross_entropy, linear_cross_entropy and the vocab-parallel losses: the kernel
table (one calling convention for every backend), the argument checks (one copy each), per-token weights and the
loss reduction. The op files only define ops; the tiling engine of the fused LM-head loss is _ce_tiling.py.
"""
import torch

from .. import _checks
from .. import reference as ref
from .._registry import kernel_table

REDUCTIONS = ("none", "sum", "mean")
LABEL_DTYPES = (torch.int64, torch.int32)
LOSS_DTYPES = (None, torch.float32)


# --- argument checks ------------------------------------------------------------------------------------------------

def check_loss_args(logits, labels, ignore_index, label_smoothing, z_loss, softcap, reduction, dtypes):
    """Validate the user arguments shared by every cross-entropy variant; returns softcap as a float (0: none)."""
    _checks.check_tensor("logits", logits, dtypes=dtypes, min_dim=1)
    _checks.check_tensor("labels", labels, dtypes=LABEL_DTYPES)
    _checks.check_same_device("labels", labels, "logits", logits)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:-1])} (logits' shape without the vocabulary "
                         f"dimension), got {tuple(labels.shape)}")
    if logits.shape[-1] == 0:
        raise ValueError("logits: expected at least one class (last dimension 0)")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    _checks.check_number("label_smoothing", label_smoothing, min_value=0.0)
    if label_smoothing > 1.0:
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing}")
    _checks.check_number("z_loss", z_loss, min_value=0.0)
    if softcap is not None:
        _checks.check_number("softcap", softcap)
        if softcap <= 0:
            raise ValueError(f"softcap: expected a positive number or None, got {softcap}")
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    return float(softcap or 0.0)


def check_lm_head(hidden, weight, bias, dtypes, weight_name="weight", bias_name="bias"):
    """hidden [..., H], weight [V, H] and bias [V] (or None): dtypes, shapes and devices agree."""
    _checks.check_tensor("hidden", hidden, dtypes=dtypes, min_dim=1)
    _checks.check_tensor(weight_name, weight, dtypes=dtypes, dim=2)
    _checks.check_same_device(weight_name, weight, "hidden", hidden)
    if weight.dtype != hidden.dtype or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{weight_name}: expected [V, {hidden.shape[-1]}] in {hidden.dtype} (hidden's size and "
                         f"dtype), got {tuple(weight.shape)} in {weight.dtype}")
    if bias is not None:
        _checks.check_tensor(bias_name, bias, dtypes=dtypes, dim=1)
        _checks.check_same_device(bias_name, bias, "hidden", hidden)
        if bias.shape[0] != weight.shape[0] or bias.dtype != hidden.dtype:
            raise ValueError(f"{bias_name}: expected [{weight.shape[0]}] in {hidden.dtype}, got "
                             f"{tuple(bias.shape)} in {bias.dtype}")


def check_weighting(token_weights, labels, loss_dtype):
    """token_weights: None or a float tensor shaped like labels, on labels' device; loss_dtype: None or float32."""
    if token_weights is not None:
        _checks.check_tensor("token_weights", token_weights, dtypes=_checks.REFERENCE_DTYPES)
        _checks.check_same_device("token_weights", token_weights, "labels", labels)
        if token_weights.shape != labels.shape:
            raise ValueError(f"token_weights: expected shape {tuple(labels.shape)} (that of labels), got "
                             f"{tuple(token_weights.shape)}")
    if loss_dtype not in LOSS_DTYPES:
        raise ValueError(f"loss_dtype: expected None (the input's dtype) or torch.float32, got {loss_dtype!r}")


# --- reduction ------------------------------------------------------------------------------------------------------

def row_scale(labels, ignore_index, reduction, token_weights=None):
    """What reduce_loss multiplies each token's loss by, as fp32 [...] (0 on ignored tokens): 1 or the token's
    weight, divided for "mean" by the count (or weight sum) of the non-ignored tokens, at least 1 (no NaN for an
    all-ignored batch, and no host sync)."""
    valid = labels != ignore_index
    scale = valid.float() if token_weights is None else torch.where(valid, token_weights.float(), 0.0)
    if reduction == "mean":
        scale = scale / (valid.sum().clamp(min=1) if token_weights is None else
                         torch.where(scale.sum() == 0, 1.0, scale.sum()))
    return scale


def reduce_loss(loss, labels, ignore_index, reduction, token_weights=None):
    """Reduce per-token fp32 losses: "none" returns them, "sum" their sum, "mean" divides by the non-ignored
    count. With token_weights (multilingual training balances languages this way) each token's loss is scaled by
    its weight first, and "mean" divides by the sum of the non-ignored tokens' weights; autograd hands each token's
    gradient the same factor."""
    if token_weights is None:
        if reduction == "none":
            return loss
        total = loss.sum()
        return total if reduction == "sum" else total / (labels != ignore_index).sum().clamp(min=1)
    weighted = loss * row_scale(labels, ignore_index, reduction, token_weights)
    return weighted if reduction == "none" else weighted.sum()


def finish(loss, input_dtype, loss_dtype):
    """The loss in the input's dtype (as torch's losses), or in fp32 when loss_dtype=torch.float32 (HF's models
    report an fp32 loss whatever their dtype)."""
    return loss.to(input_dtype if loss_dtype is None else loss_dtype)


# --- kernels: one calling convention for every backend ------------------------------------------------------------
# kernel(logits [rows, V] unit stride along V, labels [rows] int64 contiguous, lse_in, row_scale, dlse, grad_out,
#        ignore_index, label_smoothing, z_loss, softcap, vocab_start, vocab_total) -> (loss [rows], lse [rows])
# lse_in None: forward (loss, lse); grad_out given: also write the gradient (scaled per row by row_scale, plus
# dlse * p) into grad_out, which may be the logits themselves. lse_in given: backward only (gradient from lse_in).
# linear_cross_entropy and vocab_parallel_cross_entropy call these directly (inside their own ops).


def check_labels_on_cpu(labels, ignore_index, vocab_total):
    if labels.device.type == "cpu":  # a CPU tensor: checking costs no device sync
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_total))
        if bool(bad.any()):
            pos = int(bad.nonzero()[0, 0])
            raise ValueError(f"labels: label {int(labels[pos])} at position {pos} is out of range "
                             f"[0, {vocab_total}) and is not ignore_index ({ignore_index})")


def _reference_kernel(logits, labels, lse_in, row_scale, dlse, grad_out, ignore_index, label_smoothing, z_loss,
                      softcap, vocab_start, vocab_total):
    check_labels_on_cpu(labels, ignore_index, vocab_total)
    opts = (ignore_index, label_smoothing, z_loss, softcap, vocab_start, vocab_total)
    if lse_in is None:
        loss, lse = ref.cross_entropy(logits, labels, *opts)
    else:
        loss, lse = lse_in.new_empty(0), lse_in
    if grad_out is not None:
        grad_out.copy_(ref.cross_entropy_backward(row_scale, dlse, logits, labels, lse, *opts))
    return loss, lse


KERNELS = kernel_table("cross_entropy", "forward_backward", _reference_kernel)


def rows_2d(logits, labels):
    """logits as [rows, V] with a unit stride along V, labels as contiguous int64 [rows]."""
    return _checks.rows_view(logits), labels.reshape(-1).to(torch.int64).contiguous()


def flat(t):
    return None if t is None else t.reshape(-1).float().contiguous()


def vocab_sharded_dtensor(t, dim):
    """Whether ``t`` is a DTensor sharded along ``dim`` (the vocabulary): the losses then run the vocab-parallel
    algorithm (eurokernels/dtensor.py, imported only once a DTensor is seen)."""
    if type(t) is torch.Tensor or type(t).__name__ != "DTensor":
        return False
    from .. import dtensor
    return dtensor.vocab_sharded(t, dim) is not None
