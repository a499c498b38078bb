"""Cross-entropy of a linear layer's output (the LM head) without materializing the [tokens, V] logits.

Registered ops:
  eurokernels::linear_cross_entropy           (hidden, weight, bias, labels, ...) -> (loss [N] fp32, lse [N] fp32)
  eurokernels::linear_cross_entropy_backward  -> (d_hidden, d_weight, d_bias)
Backends: reference (plain fp32 math, unchunked: the oracle), cpu / triton / cuda (tiles of logits, each through that
backend's fused cross-entropy kernel: the engine in _ce_tiling.py).

How the cpu / triton / cuda backends work (what is fused and what is not): the logits are computed one tile of
[token_chunk, vocab_chunk] at a time by a torch matmul (``addmm``: MKL / oneDNN on CPU, cuBLAS on GPU); the
cross-entropy of a tile is our fused kernel, treating the tile as a vocabulary shard exactly as the vocab-parallel
loss treats a rank's slice:
  forward   per tile: one kernel call -> the tile's lse and its linear loss terms; tiles are merged with an online
            log-sum-exp. Nothing but [N] vectors survives a tile. (1 matmul per tile.)
  backward  per tile: recompute the tile's logits, one kernel call writes the gradient of the logits *into the tile
            itself* (no second buffer), then d_hidden += dlogits @ W_c and d_weight[c] += dlogits^T @ h_t.
            (3 matmuls per tile.)
So 4 matmuls in all against 3 for an unfused LM head + loss: the price of never holding [N, V]. Extra memory is
one tile in the logits' dtype plus fp32 accumulators of the size of the gradients' own chunks (d_hidden [N, H],
d_weight [vocab_chunk, H]), never N x V. Vocabulary chunks are the outer loop of the backward, so each slice of
d_weight is accumulated over token chunks in fp32 and rounded to the weight's dtype once (when the tokens fit in one
chunk -- the default up to 8192 tokens -- it is a single matmul, no cross-chunk accumulation at all). The
true-class term of the gradient (p - 1) is formed in fp32 inside the kernel before the one rounding to the logits'
dtype. The matmuls run in the inputs' dtype with fp32 accumulation inside each matmul, as F.linear does -- except
on a CPU without native 16-bit GEMMs (no AMX tiles oneDNN may use; _ce_tiling.cpu_gemm16_native), where torch's
bf16 / fp16 matmul is 8x (Zen 2) to 300x (oneDNN at AVX2) slower than fp32: there each 16-bit matmul runs on fp32
copies of its operands and is rounded once to the 16-bit output, the same arithmetic at fp32 GEMM speed (bf16 at
1.06x the fp32 time of the op, 1024 x 1024 x 32000 fwd+bwd, emulated AVX2 path). EUROKERNELS_CPU_GEMM16=native |
fp32 overrides the choice.

``grad_in_forward=True`` trades memory for one matmul (where matmuls dominate, e.g. on CPU): token chunks of whole
vocabulary rows; per chunk one matmul for the logits [T, V], one kernel call computing loss, lse and the gradient
of the logits in the same sweep (in place), then d_hidden of the chunk (one matmul, complete) and the chunk's share
of d_weight, accumulated over token chunks in an fp32 [V, H] buffer (in vocabulary slices, so the temporary is
small; when all tokens fit in one chunk, d_weight is a single matmul and there is no buffer). 3 matmuls in all, all
during the forward; the backward only scales the stored gradients by the upstream gradient of the (scalar) loss.
Extra memory: the [T, V] chunk plus, with several chunks, the fp32 [V, H] accumulator (twice a bf16 weight) --
more than the tiled path, still far below N x V. Used for reduction "sum" / "mean" without return_lse when a
gradient is needed; otherwise the tiled path runs.

The automatic mode (``grad_in_forward=None``, the default, with ``chunk_size=None``) picks the path that is both fast
and small. The 3-matmul path holds one chunk of whole vocabulary rows plus whatever d_weight needs to be summed over
the chunks. An fp32 d_weight needs nothing: each chunk's GEMM adds into it in place. So fp32 weights take the
3-matmul path, with chunks of at most AUTO_TILE_BYTES of logits (224 MiB; never under 256 tokens, so the d_weight
GEMMs stay tall). A 16-bit d_weight would need an fp32 [V, H] accumulator, twice the weight, which is more than the
logits an unfused loss holds at the token counts of LM training. So 16-bit weights take the 4-matmul tiled path,
except when all tokens fit in one such chunk: one d_weight matmul, nothing to accumulate.
Measured on 2 cores against Cut Cross-Entropy's CPU path (benchmarks/lm_head.py, one process per run; README, "The
LM head"): fp32 at 0.92-0.97x CCE's time with 0.06-0.22x its workspace, 0.97-1.03x the three bare matmuls; bf16 at
2048 x 1024 x 128000 0.83x its time, 0.10x its memory. bf16 at 4096 x 2304 x 256000 is 1.24x CCE's time: the tiled
path's 4 matmuls cost 1.33x the 3 (CCE's CPU path holds the [N, V] logits instead, 2 GB there), and the fp32
accumulator the 3-matmul path would need is 2.4 GB; ``grad_in_forward=True`` buys the speed with that memory.
``grad_in_forward=True`` / ``False`` force a path.

Batch invariance. A token's loss and lse come from its row of each logits tile, and a matmul's row can change in
the last bit with the number of rows it is computed with: on CPU, fp32 ``mm`` with 1 to 7 rows takes another MKL
path than with 16 or more (measured), and GPU libraries pick tilings (split-K among them) by shape. So with the
default chunks a token's results may differ bitwise between batches. ``batch_invariant=True`` pads the tokens to
a multiple of BATCH_INVARIANT_TOKENS (zero rows with ignored labels) and tiles them by exactly that many, so every
matmul has the same shape whatever the batch, and the kernels own whole rows: each token's loss and lse are then
bitwise independent of the batch (tests/test_batch_invariance.py). Cost: up to BATCH_INVARIANT_TOKENS - 1 padded
rows, and narrower tiles (the weight is re-read once per 64 tokens).
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op
from ._ce_core import (KERNELS, check_labels_on_cpu, check_lm_head, check_loss_args, check_weighting, finish,
                       reduce_loss, row_scale, vocab_sharded_dtensor)
from ._ce_tiling import (DEFAULT_CHUNKS, FORWARD_GRAD_CHUNK_ELEMENTS, auto_token_chunk, chunks, forward_with_grads,
                         scaled, tiled_backward, tiled_forward)

BATCH_INVARIANT_TOKENS = 64  # rows of every matmul with batch_invariant=True (16 or more take MKL's blocked path)


def linear_cross_entropy(hidden, weight, labels, *, bias=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, reduction="mean", return_lse=False, chunk_size=None, grad_in_forward=None,
                         token_weights=None, loss_dtype=None, batch_invariant=False, backend=None):
    """``cross_entropy(hidden @ weight.T + bias, labels, ...)`` without materializing the logits.

    Args:
        hidden: ``[..., H]`` float32 / bfloat16 / float16.
        weight: ``[V, H]``, the LM head (same dtype as hidden). bias: ``[V]`` or None.
        labels: ``[...]`` (hidden's leading shape) int64 / int32 class indices, or ignore_index. A label outside
            [0, V): a ValueError on the cpu and reference backends; on triton / cuda (no host sync) that token's
            loss and lse are NaN, and so are the gradients, as eurokernels.cross_entropy's kernels do.
        ignore_index, label_smoothing, z_loss, softcap, reduction, return_lse, token_weights, loss_dtype: as in
            eurokernels.cross_entropy.
        chunk_size: vocabulary columns per tile (int) or ``(tokens, vocabulary)`` per tile; default (4096, 8192).
            Extra memory is about one tile of logits, independent of N x V. With grad_in_forward, the tokens per
            chunk (default: 2^27 // V, about 1000 at V = 128K: CPU matmuls need tall chunks; the automatic mode's
            own choice when chunk_size is None).
        grad_in_forward: None (default): automatic, see the module docstring (fp32 weights: 3 matmuls in
            bounded token chunks; 16-bit weights: the tiled path unless the tokens fit in one chunk). True: 3
            matmuls instead of 4, gradients computed in the forward, with an fp32 [V, H] accumulator for a 16-bit
            weight over several chunks. False: the 4-matmul tiled path. Reduction "sum" / "mean" without
            return_lse only; otherwise the tiled path runs.
        batch_invariant: make each token's loss and lse bitwise independent of the rest of the batch (see the
            module docstring; for reinforcement learning's log-probability comparisons). Not with grad_in_forward
            or chunk_size. The reference backend is PyTorch's own unchunked math and makes no such promise.
        backend: "reference" | "cpu" | "triton" | "cuda" | None.

    Returns:
        ``loss`` in hidden's dtype (or loss_dtype), or ``(loss, lse)`` with ``return_lse``. Gradients flow to
        hidden, weight, bias.
    """
    _checks.check_tensor("hidden", hidden, dtypes=None, min_dim=1)
    if vocab_sharded_dtensor(weight, 0):  # a column-wise parallel LM head (tensor parallelism)
        from .. import dtensor
        return dtensor.linear_cross_entropy(hidden, weight, labels, dict(
            bias=bias, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            reduction=reduction, return_lse=return_lse, chunk_size=chunk_size, token_weights=token_weights,
            loss_dtype=loss_dtype, backend=backend))
    backend = _backend.resolve(backend, hidden)
    dtypes = _checks.float_dtypes(backend)
    check_lm_head(hidden, weight, bias, dtypes)
    # The loss options are checked against a [..., V] stand-in for the logits (no memory: an expanded view).
    logits_like = weight.new_empty(()).expand(*hidden.shape[:-1], weight.shape[0])
    softcap = check_loss_args(logits_like, labels, ignore_index, label_smoothing, z_loss, softcap, reduction, dtypes)
    check_weighting(token_weights, labels, loss_dtype)
    token_chunk, vocab_chunk = chunks(chunk_size)
    token_chunk_auto = None
    if not isinstance(batch_invariant, bool):
        raise TypeError(f"batch_invariant: expected a bool, got {batch_invariant!r}")
    if batch_invariant:
        if grad_in_forward or chunk_size is not None:
            raise ValueError("batch_invariant: fixes the tiling itself; leave grad_in_forward False and chunk_size "
                             "None")
        return _batch_invariant(hidden, weight, labels, bias=bias, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap or None,
                                reduction=reduction, return_lse=return_lse, token_weights=token_weights,
                                loss_dtype=loss_dtype, backend=backend)
    if grad_in_forward is not None and not isinstance(grad_in_forward, bool):
        raise TypeError(f"grad_in_forward: expected None (automatic), True or False, got {grad_in_forward!r}")
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if grad_in_forward is None and chunk_size is None and backend != "reference":  # the automatic mode
        token_chunk_auto = auto_token_chunk(hidden.numel() // max(1, hidden.shape[-1]), weight.shape[0], weight.dtype)
        grad_in_forward = token_chunk_auto is not None
    if grad_in_forward and needs_grad and reduction != "none" and not return_lse:
        if chunk_size is None and token_chunk_auto is not None:
            token_chunk = token_chunk_auto
        elif chunk_size is None or isinstance(chunk_size, int):
            token_chunk = max(1, FORWARD_GRAD_CHUNK_ELEMENTS // weight.shape[0])
        scale = row_scale(labels, ignore_index, reduction, token_weights)
        loss = torch.ops.eurokernels.linear_cross_entropy_grad_in_forward(
            hidden, weight, bias, labels, int(ignore_index), float(label_smoothing), float(z_loss), softcap,
            token_chunk, scale, backend)[0]
        return finish(loss, hidden.dtype, loss_dtype)
    loss, lse = torch.ops.eurokernels.linear_cross_entropy(
        hidden, weight, bias, labels, int(ignore_index), float(label_smoothing), float(z_loss), softcap, token_chunk,
        vocab_chunk, backend)
    loss = finish(reduce_loss(loss, labels, ignore_index, reduction, token_weights), hidden.dtype, loss_dtype)
    return (loss, lse) if return_lse else loss


def _batch_invariant(hidden, weight, labels, *, reduction, return_lse, token_weights, ignore_index, **kw):
    """The tokens padded to a multiple of BATCH_INVARIANT_TOKENS rows (zeros, ignored labels, zero weights) and
    tiled by exactly that many rows (see the module docstring); per-token results sliced back."""
    rows = BATCH_INVARIANT_TOKENS
    h2, l1 = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    n = h2.shape[0]
    pad = -n % rows
    if pad:
        h2 = torch.cat([h2, h2.new_zeros(pad, h2.shape[1])])
        l1 = torch.cat([l1, l1.new_full((pad,), ignore_index)])
    w1 = None
    if token_weights is not None:
        w1 = token_weights.reshape(-1)
        w1 = torch.cat([w1, w1.new_zeros(pad)]) if pad else w1
    per_token = reduction == "none"
    out = linear_cross_entropy(h2, weight, l1, reduction=reduction, return_lse=return_lse, token_weights=w1,
                               ignore_index=ignore_index, chunk_size=(rows, DEFAULT_CHUNKS[1]), **kw)
    loss, lse = out if return_lse else (out, None)
    if per_token:
        loss = loss[:n].view(labels.shape)
    return (loss, lse[:n].view(labels.shape)) if return_lse else loss


def _rows(hidden, labels):
    return _checks.rows_view(hidden), labels.reshape(-1).to(torch.int64).contiguous()


# --- backends: the reference is the plain formula on materialized logits (the oracle); every compiled backend runs
# the tiling engine (_ce_tiling.py) over its own cross-entropy kernel ------------------------------------------------

def _reference_forward(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap, token_chunk,
                       vocab_chunk):
    h2, l1 = _rows(hidden, labels)
    check_labels_on_cpu(l1, ignore_index, weight.shape[0])
    loss, lse = ref.cross_entropy(ref.linear(h2, weight, bias), l1, ignore_index, label_smoothing, z_loss, softcap)
    return loss.view(labels.shape), lse.view(labels.shape)


def _tiled_forward(kernel):
    def run(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap, token_chunk, vocab_chunk):
        h2, l1 = _rows(hidden, labels)
        opts = (ignore_index, label_smoothing, z_loss, softcap)
        loss, lse = tiled_forward(kernel, h2, weight, bias, l1, opts, token_chunk, vocab_chunk)
        return loss.view(labels.shape), lse.view(labels.shape)
    return run


def _backward_impl(engine):
    """engine(dloss, dlse, h2, weight, bias, l1, lse, opts, token_chunk, vocab_chunk) -> (dh2, dw, db)."""
    def run(dloss, dlse, hidden, weight, bias, labels, lse, ignore_index, label_smoothing, z_loss, softcap,
            token_chunk, vocab_chunk):
        h2, l1 = _rows(hidden, labels)
        opts = (ignore_index, label_smoothing, z_loss, softcap)
        dloss = dloss.reshape(-1).float().contiguous()
        dlse = None if dlse is None else dlse.reshape(-1).float().contiguous()
        lse = lse.reshape(-1).float().contiguous()
        dh, dw, db = engine(dloss, dlse, h2, weight, bias, l1, lse, opts, token_chunk, vocab_chunk)
        return dh.view(hidden.shape), dw, db
    return run


def _reference_backward_engine(dloss, dlse, h2, weight, bias, l1, lse, opts, token_chunk, vocab_chunk):
    return ref.linear_cross_entropy_backward(dloss, dlse, h2, weight, bias, l1, lse, *opts)


def _tiled_backward_engine(kernel):
    def engine(dloss, dlse, h2, weight, bias, l1, lse, opts, token_chunk, vocab_chunk):
        return tiled_backward(kernel, dloss, dlse, h2, weight, bias, l1, lse, opts, token_chunk, vocab_chunk)
    return engine


_COMPILED = {b: k for b, k in KERNELS.items() if b != "reference"}
_FORWARD = {"reference": _reference_forward, **{b: _tiled_forward(k) for b, k in _COMPILED.items()}}
_BACKWARD = {"reference": _backward_impl(_reference_backward_engine),
             **{b: _backward_impl(_tiled_backward_engine(k)) for b, k in _COMPILED.items()}}


def _fake_forward(hidden, weight, bias, labels, *args):
    return (hidden.new_empty(labels.shape, dtype=torch.float32),
            hidden.new_empty(labels.shape, dtype=torch.float32))


def _fake_backward(dloss, dlse, hidden, weight, bias, *args):
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format), torch.empty_like(weight),
            torch.empty_like(bias) if bias is not None else weight.new_empty(0))


_OPTS = "int ignore_index, float label_smoothing, float z_loss, float softcap, int token_chunk, int vocab_chunk"

_fwd = define_op(
    "linear_cross_entropy",
    f"(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, {_OPTS}, str backend) -> (Tensor, Tensor)",
    impls=_FORWARD,
    fake=_fake_forward, family="linear_cross_entropy",
)

_bwd = define_op(
    "linear_cross_entropy_backward",
    f"(Tensor dloss, Tensor? dlse, Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor lse, {_OPTS}, "
    "str backend) -> (Tensor, Tensor, Tensor)",
    impls=_BACKWARD,
    fake=_fake_backward, family="linear_cross_entropy",
)


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, labels = inputs[:4]
    ctx.save_for_backward(hidden, weight, bias, labels, output[1])
    ctx.opts, ctx.backend = inputs[4:10], inputs[10]
    ctx.set_materialize_grads(False)


def _backward(ctx, dloss, dlse):
    hidden, weight, bias, labels, lse = ctx.saved_tensors
    if dloss is None:
        dloss = torch.zeros_like(lse)
    dh, dw, db = _bwd(dloss, dlse, hidden, weight, bias, labels, lse, *ctx.opts, ctx.backend)
    return dh, dw, (db if bias is not None else None), None, None, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def _reference_grad_in_forward(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap,
                               token_chunk, scale):
    h2, l1 = _rows(hidden, labels)
    opts = (ignore_index, label_smoothing, z_loss, softcap)
    check_labels_on_cpu(l1, ignore_index, weight.shape[0])
    loss_rows, lse = ref.cross_entropy(ref.linear(h2, weight, bias), l1, *opts)
    scale = scale.reshape(-1).to(loss_rows.dtype)
    dh, dw, db = ref.linear_cross_entropy_backward(scale, None, h2, weight, bias, l1, lse, *opts)
    return (loss_rows * scale).sum(), dh.view(hidden.shape), dw, db


def _tiled_grad_in_forward(kernel):
    def run(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap, token_chunk, scale):
        h2, l1 = _rows(hidden, labels)
        opts = (ignore_index, label_smoothing, z_loss, softcap)
        loss, dh, dw, db = forward_with_grads(kernel, h2, weight, bias, l1, opts, token_chunk,
                                              scale.reshape(-1).float().contiguous())
        return loss, dh.view(hidden.shape), dw, db
    return run


def _fake_grad_in_forward(hidden, weight, bias, labels, *args):
    return (hidden.new_empty((), dtype=torch.float32),) + _fake_backward(None, None, hidden, weight, bias)


_fwd_grads = define_op(
    "linear_cross_entropy_grad_in_forward",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, int ignore_index, float label_smoothing, "
    "float z_loss, float softcap, int token_chunk, Tensor row_scale, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    impls={"reference": _reference_grad_in_forward,
           **{b: _tiled_grad_in_forward(k) for b, k in _COMPILED.items()}},
    fake=_fake_grad_in_forward, family="linear_cross_entropy",
)


def _setup_context_grads(ctx, inputs, output):
    _, dh, dw, db = output
    ctx.save_for_backward(dh, dw, db)
    ctx.has_bias = inputs[2] is not None
    ctx.set_materialize_grads(False)


def _backward_grads(ctx, dloss, *_):
    dh, dw, db = ctx.saved_tensors
    if dloss is None:
        return (None,) * 11
    g = dloss.float()
    if _unit_and_final(g):
        # The usual upstream gradient of a loss, in a backward that frees the graph: the stored gradients are the
        # answer. Handing them over uncopied saves a [V, H] copy of d_weight (as large as the weight in fp32: it
        # doubled the automatic mode's peak memory); .grad accumulation may then take them over, which is safe only
        # because no later backward of this graph can read them (with retain_graph one would: copies then).
        return (dh.detach(), dw.detach(), db.detach() if ctx.has_bias else None) + (None,) * 8
    return (scaled(dh, g), scaled(dw, g), scaled(db, g) if ctx.has_bias else None) + (None,) * 8


def _unit_and_final(g):
    """g is a real CPU scalar equal to 1 (no device sync to read it; not a trace's stand-in) and this backward
    frees the graph (retain_graph=False)."""
    if type(g) is not torch.Tensor or g.device.type != "cpu" or g.dim() != 0 or torch.compiler.is_compiling():
        return False
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep is not None and not keep() and g.item() == 1.0


_fwd_grads.register_autograd(_backward_grads, setup_context=_setup_context_grads)
