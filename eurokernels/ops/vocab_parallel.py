"""Vocab-parallel (tensor-parallel LM head) cross-entropy over torch.distributed.

Each rank holds a contiguous slice [vocab_start, vocab_start + V_local) of the vocabulary; labels are global ids and
the same on every rank. The forward runs the fused cross-entropy kernel on the rank's slice as a vocabulary shard
(eurokernels/ops/_ce_core.py, KERNELS), which returns the shard's lse and its share of the loss's linear terms
(-(1 - eps) z_label [label in shard] - eps / V sum(z_shard)); three all-reduces over the group (max of the shard lse,
sum of exp(lse_shard - max), sum of the linear terms) then give exactly the single-rank loss and lse on every rank.
The backward needs no communication: each rank's gradient depends only on its logits and the global lse. The
linear variant (the rank's shard of the LM-head weight, tiled as in linear_cross_entropy) all-reduces d_hidden.

Not torch.library ops: these are torch.autograd.Functions around collectives (eager distributed training; the
per-rank kernels are the registered ops' kernels; the linear variant uses the tiled loop for every backend, the
reference backend's tiles being plain PyTorch).
"""
import torch
import torch.distributed as dist

from .. import _backend, _checks
from ._ce_core import KERNELS, check_lm_head, check_loss_args, check_weighting, finish, reduce_loss, rows_2d
from ._ce_tiling import chunks, tiled_backward, tiled_forward


def _shard(group, v_local, vocab_start, vocab_total):
    if vocab_start is None:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        return rank * v_local, world * v_local if vocab_total is None else vocab_total
    if vocab_total is None:
        raise ValueError("vocab_total: required with an explicit vocab_start (the size of the whole vocabulary)")
    if not 0 <= vocab_start <= vocab_total - v_local:
        raise ValueError(f"vocab_start: the shard [{vocab_start}, {vocab_start + v_local}) does not fit in a "
                         f"vocabulary of {vocab_total}")
    return vocab_start, vocab_total


def _merge(lse_local, lin_local, labels, ignore_index, z_loss, group):
    """Global (loss, lse) per token from every rank's shard lse and linear loss terms (three all-reduces)."""
    m = lse_local.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    s = torch.exp(lse_local - m_safe)
    dist.all_reduce(s, group=group)
    lin = torch.where(labels != ignore_index, lin_local, 0.0)
    dist.all_reduce(lin, group=group)
    lse = m_safe + torch.log(s)
    loss = torch.where(labels != ignore_index, lse + z_loss * lse * lse + lin, 0.0)
    return loss, lse


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, opts, vocab_start, vocab_total, group, backend):
        ignore_index, label_smoothing, z_loss, softcap = opts
        x2, l1 = rows_2d(logits, labels)
        kernel = KERNELS[backend]
        loss_l, lse_l = kernel(x2, l1, None, None, None, None, ignore_index, label_smoothing, 0.0, softcap,
                               vocab_start, vocab_total)
        loss, lse = _merge(lse_l.float(), (loss_l - lse_l).float(), l1, ignore_index, z_loss, group)
        ctx.save_for_backward(logits, labels, lse)
        ctx.args = (opts, vocab_start, vocab_total, backend)
        ctx.set_materialize_grads(False)
        return loss.view(labels.shape), lse.view(labels.shape)

    @staticmethod
    def backward(ctx, dloss, dlse):
        logits, labels, lse = ctx.saved_tensors
        opts, vocab_start, vocab_total, backend = ctx.args
        x2, l1 = rows_2d(logits, labels)
        dloss = torch.zeros_like(lse) if dloss is None else dloss.reshape(-1).float().contiguous()
        dlse = None if dlse is None else dlse.reshape(-1).float().contiguous()
        grad = torch.empty(x2.shape, dtype=logits.dtype, device=logits.device)
        KERNELS[backend](x2, l1, lse, dloss, dlse, grad, *opts, vocab_start, vocab_total)
        return grad.view(logits.shape), None, None, None, None, None, None


def vocab_parallel_cross_entropy(logits_shard, labels, *, group=None, vocab_start=None, vocab_total=None,
                                 ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
                                 return_lse=False, token_weights=None, loss_dtype=None, backend=None):
    """Cross-entropy with the vocabulary split over the ranks of ``group`` (tensor parallelism).

    Args:
        logits_shard: ``[..., V_local]``: this rank's slice of the logits.
        labels: ``[...]`` global class ids (identical on every rank), or ignore_index.
        group: the process group holding the vocabulary (None: the default group).
        vocab_start, vocab_total: this rank's first class id and the whole vocabulary's size. With
            ``vocab_start=None`` rank r holds slice r of equal slices (vocab_total defaults to world * V_local).
        ignore_index, label_smoothing, z_loss, softcap, reduction, return_lse, token_weights, loss_dtype,
            backend: as in eurokernels.cross_entropy (the smoothing's eps / V uses the whole vocabulary).

    Returns:
        The same loss (and lse) on every rank, equal to the single-rank loss on the concatenated logits; the
        gradient flows to this rank's logits shard.
    """
    _checks.check_tensor("logits_shard", logits_shard, dtypes=None, min_dim=1)
    backend = _backend.resolve(backend, logits_shard)
    softcap = check_loss_args(logits_shard, labels, ignore_index, label_smoothing, z_loss, softcap, reduction,
                              _checks.float_dtypes(backend))
    check_weighting(token_weights, labels, loss_dtype)
    vocab_start, vocab_total = _shard(group, logits_shard.shape[-1], vocab_start, vocab_total)
    opts = (int(ignore_index), float(label_smoothing), float(z_loss), softcap)
    loss, lse = _VocabParallelCE.apply(logits_shard, labels, opts, vocab_start, vocab_total, group, backend)
    loss = finish(reduce_loss(loss, labels, ignore_index, reduction, token_weights), logits_shard.dtype, loss_dtype)
    return (loss, lse) if return_lse else loss


class _VocabParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, opts, chunks, vocab_start, vocab_total, group, backend):
        ignore_index, label_smoothing, z_loss, softcap = opts
        h2, l1 = _checks.rows_view(hidden), labels.reshape(-1).to(torch.int64).contiguous()
        l_l, lse_l = tiled_forward(KERNELS[backend], h2, weight, bias, l1, (ignore_index, label_smoothing, 0.0,
                                   softcap), *chunks, vocab_start, vocab_total)
        loss, lse = _merge(lse_l.float(), (l_l - lse_l).float(), l1, ignore_index, z_loss, group)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.args = (opts, chunks, vocab_start, vocab_total, group, backend)
        ctx.set_materialize_grads(False)
        return loss.view(labels.shape), lse.view(labels.shape)

    @staticmethod
    def backward(ctx, dloss, dlse):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        opts, chunks, vocab_start, vocab_total, group, backend = ctx.args
        h2, l1 = _checks.rows_view(hidden), labels.reshape(-1).to(torch.int64).contiguous()
        dloss = torch.zeros_like(lse) if dloss is None else dloss.reshape(-1).float().contiguous()
        dlse = None if dlse is None else dlse.reshape(-1).float().contiguous()
        dh, dw, db = tiled_backward(KERNELS[backend], dloss, dlse, h2, weight, bias, l1, lse, opts, *chunks,
                                    vocab_start, vocab_total, fp32_dh=True)
        dist.all_reduce(dh, group=group)  # every shard contributes dlogits_shard @ W_shard
        return (dh.to(hidden.dtype).view(hidden.shape), dw, db if bias is not None else None,
                None, None, None, None, None, None, None)


def vocab_parallel_linear_cross_entropy(hidden, weight_shard, labels, *, bias_shard=None, group=None,
                                        vocab_start=None, vocab_total=None, ignore_index=-100, label_smoothing=0.0,
                                        z_loss=0.0, softcap=None, reduction="mean", return_lse=False,
                                        chunk_size=None, token_weights=None, loss_dtype=None, backend=None):
    """``vocab_parallel_cross_entropy(hidden @ weight_shard.T + bias_shard, ...)`` without materializing the
    logits shard (tiled as in eurokernels.linear_cross_entropy). ``hidden`` is replicated over the group; its
    gradient is all-reduced, so every rank gets the full d_hidden. weight_shard: ``[V_local, H]``."""
    _checks.check_tensor("hidden", hidden, dtypes=None, min_dim=1)
    backend = _backend.resolve(backend, hidden)
    dtypes = _checks.float_dtypes(backend)
    check_lm_head(hidden, weight_shard, bias_shard, dtypes, "weight_shard", "bias_shard")
    logits_like = weight_shard.new_empty(()).expand(*hidden.shape[:-1], weight_shard.shape[0])
    softcap = check_loss_args(logits_like, labels, ignore_index, label_smoothing, z_loss, softcap, reduction, dtypes)
    check_weighting(token_weights, labels, loss_dtype)
    vocab_start, vocab_total = _shard(group, weight_shard.shape[0], vocab_start, vocab_total)
    opts = (int(ignore_index), float(label_smoothing), float(z_loss), softcap)
    loss, lse = _VocabParallelLinearCE.apply(hidden, weight_shard, bias_shard, labels, opts, chunks(chunk_size),
                                             vocab_start, vocab_total, group, backend)
    loss = finish(reduce_loss(loss, labels, ignore_index, reduction, token_weights), hidden.dtype, loss_dtype)
    return (loss, lse) if return_lse else loss
