"""Cross-entropy over a large vocabulary: online softmax, never more than one read of the logits per pass.

Registered ops (schemas below):
  eurokernels::cross_entropy             (logits, labels, ...) -> (loss [...] fp32, lse [...] fp32), per token
  eurokernels::cross_entropy_backward    -> grad of the logits (a fresh tensor)
  eurokernels::cross_entropy_backward_   the same gradient written into the logits' own storage (mutates logits)
Backends: reference (eurokernels/reference.py), cpu (csrc/cross_entropy/cross_entropy_cpu.cpp),
triton (eurokernels/triton/cross_entropy.py), cuda (csrc/cross_entropy/cross_entropy.cu).

Design. The forward reads each row once (online log-sum-exp) and returns the per-token loss and lse; the reduction
(none / sum / mean over non-ignored tokens) is plain PyTorch on the [tokens] fp32 vector, so autograd hands the
backward one upstream gradient per token. The backward recomputes p = exp(z - lse) from the logits and the saved
lse and writes the gradient in one sweep, scaled by that upstream gradient. Writing the gradient already in the
forward (as Liger does) would cost more here, not less: the upstream gradient is only known in the backward, so a
second full pass (read + write of [tokens, V]) would be needed to scale it -- 8 bytes per bf16 element in total
against 6 -- unless it is read on the host (a sync, which breaks fullgraph compile). The fused forward + gradient
sweep does exist (``_ce_core.KERNELS[backend]`` with ``grad_out`` and no ``lse_in``): linear_cross_entropy's
grad_in_forward path uses it, because there the scaling applies to the much smaller hidden / weight gradients
instead.

``inplace_backward=True`` writes the gradient into the logits' storage (no fresh [tokens, V] buffer: on CPU a fresh
buffer costs page faults on first touch, and on any device it halves the peak memory of the loss head). The logits'
values are then gone after the backward; use it when nothing else reads them (e.g. they come straight from the LM
head matmul, whose backward needs only its inputs). Autograd's version counter catches misuse by saved tensors.
Non-contiguous logits fall back to a fresh gradient buffer (the kernels would need a contiguous copy anyway). Without
it, the cpu backend asks Linux for transparent huge pages on the fresh gradient buffer (as csrc/cpu_alloc.h), which
removes most of the page-fault cost where THP is in "madvise" mode (measured in the README's benchmark section).

Labels out of range (other than ignore_index): the cpu and reference backends raise on CPU tensors; on GPU (triton,
cuda, reference on CUDA) checking would need a host sync, so such a token gets a NaN loss and a NaN gradient row,
which makes the mistake visible in the loss without an out-of-bounds read.
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op
from ._ce_core import (KERNELS, check_loss_args, check_weighting, finish, flat, reduce_loss,
                       rows_2d, vocab_sharded_dtensor)


def cross_entropy(logits, labels, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None,
                  reduction="mean", return_lse=False, inplace_backward=False, token_weights=None, loss_dtype=None,
                  backend=None):
    """Cross-entropy of ``logits`` against class indices ``labels``, fused and memory-light for large vocabularies.

    Args:
        logits: ``[..., V]`` float32 / bfloat16 / float16, any V; a unit stride along V avoids a copy.
        labels: ``[...]`` (logits' leading shape) int64 / int32 class indices in [0, V), or ``ignore_index``.
        ignore_index: label value whose tokens contribute no loss and get a zero gradient.
        label_smoothing: eps in [0, 1], PyTorch's definition: (1 - eps) * NLL + eps * mean_j(-log p_j).
        z_loss: adds ``z_loss * lse^2`` per (non-ignored) token (PaLM's auxiliary loss).
        softcap: if given, the logits are first capped as ``softcap * tanh(logits / softcap)`` (Gemma 2).
        reduction: "none" (per token, labels' shape) | "sum" | "mean" (over non-ignored tokens; 0 when every token
            is ignored, and then the gradient is 0, not NaN).
        return_lse: also return the per-token log-sum-exp of the (capped) logits, fp32, labels' shape.
        inplace_backward: write the logits' gradient into their own storage (see the module docstring).
        token_weights: ``[...]`` float per-token weights (labels' shape), or None: each token's loss and gradient
            are scaled by its weight, and "mean" divides by the sum of the non-ignored tokens' weights (not by
            their count). Multilingual training balances languages this way. (Not ``weight``: torch's class
            weights.)
        loss_dtype: None (the logits' dtype, as torch) or torch.float32 (an fp32 loss, as Hugging Face reports).
        backend: "reference" | "cpu" | "triton" | "cuda" | None (see eurokernels.use_backend).

    Returns:
        ``loss`` (computed in fp32), or ``(loss, lse)`` with ``return_lse``.
    """
    _checks.check_tensor("logits", logits, dtypes=None, min_dim=1)
    if vocab_sharded_dtensor(logits, -1):
        from .. import dtensor
        return dtensor.cross_entropy(logits, labels, dict(
            ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            reduction=reduction, return_lse=return_lse, token_weights=token_weights, loss_dtype=loss_dtype,
            backend=backend))
    backend = _backend.resolve(backend, logits)
    softcap = check_loss_args(logits, labels, ignore_index, label_smoothing, z_loss, softcap, reduction,
                              _checks.float_dtypes(backend))
    check_weighting(token_weights, labels, loss_dtype)
    loss, lse = torch.ops.eurokernels.cross_entropy(logits, labels, int(ignore_index), float(label_smoothing),
                                                    float(z_loss), softcap, bool(inplace_backward), backend)
    loss = finish(reduce_loss(loss, labels, ignore_index, reduction, token_weights), logits.dtype, loss_dtype)
    return (loss, lse) if return_lse else loss


# --- ops ------------------------------------------------------------------------------------------------------------

def _forward_impl(backend):
    def run(logits, labels, ignore_index, label_smoothing, z_loss, softcap, inplace_backward):
        x2, l1 = rows_2d(logits, labels)
        loss, lse = KERNELS[backend](x2, l1, None, None, None, None, ignore_index, label_smoothing, z_loss, softcap,
                                     0, logits.shape[-1])
        return loss.view(labels.shape), lse.view(labels.shape)
    return run


def _backward_impl(backend, inplace):
    def run(dloss, dlse, logits, labels, lse, ignore_index, label_smoothing, z_loss, softcap, vocab_start,
            vocab_total):
        x2, l1 = rows_2d(logits, labels)
        # In place: the caller passes contiguous logits, so x2 is a view of their storage.
        grad = x2 if inplace else torch.empty(x2.shape, dtype=logits.dtype, device=logits.device)
        KERNELS[backend](x2, l1, flat(lse), flat(dloss), flat(dlse), grad, ignore_index, label_smoothing, z_loss,
                         softcap, vocab_start, vocab_total)
        return None if inplace else grad.view(logits.shape)
    return run


def _fake_forward(logits, labels, ignore_index, label_smoothing, z_loss, softcap, inplace_backward):
    return (logits.new_empty(labels.shape, dtype=torch.float32),
            logits.new_empty(labels.shape, dtype=torch.float32))


def _fake_backward(dloss, dlse, logits, *args):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


_OPTS = "int ignore_index, float label_smoothing, float z_loss, float softcap"
_BWD_ARGS = f"Tensor dloss, Tensor? dlse, {{logits}}, Tensor labels, Tensor lse, {_OPTS}, int vocab_start, " \
            "int vocab_total, str backend"

_fwd = define_op(
    "cross_entropy",
    f"(Tensor logits, Tensor labels, {_OPTS}, bool inplace_backward, str backend) -> (Tensor, Tensor)",
    impls={b: _forward_impl(b) for b in KERNELS},
    fake=_fake_forward, family="cross_entropy",
)

_bwd = define_op(
    "cross_entropy_backward",
    "(" + _BWD_ARGS.format(logits="Tensor logits") + ") -> Tensor",
    impls={b: _backward_impl(b, inplace=False) for b in KERNELS},
    fake=_fake_backward, family="cross_entropy",
)

_bwd_inplace = define_op(
    "cross_entropy_backward_",
    "(" + _BWD_ARGS.format(logits="Tensor(a!) logits") + ") -> ()",
    impls={b: _backward_impl(b, inplace=True) for b in KERNELS},
    fake=lambda *args: None, family="cross_entropy",
    mutates_args=("logits",),
)


def _setup_context(ctx, inputs, output):
    logits, labels, ignore_index, label_smoothing, z_loss, softcap, inplace_backward, backend = inputs
    _, lse = output
    ctx.save_for_backward(logits, labels, lse)
    ctx.opts = (ignore_index, label_smoothing, z_loss, softcap, 0, logits.shape[-1])
    ctx.inplace, ctx.backend = inplace_backward, backend
    ctx.set_materialize_grads(False)


def _backward(ctx, dloss, dlse):
    logits, labels, lse = ctx.saved_tensors
    if dloss is None:
        dloss = torch.zeros_like(lse)
    if ctx.inplace and logits.is_contiguous():  # (a strided view would need a copy anyway: no gain in place)
        _bwd_inplace(dloss, dlse, logits, labels, lse, *ctx.opts, ctx.backend)
        grad = logits
    else:
        grad = _bwd(dloss, dlse, logits, labels, lse, *ctx.opts, ctx.backend)
    return grad, None, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)
