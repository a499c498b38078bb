"""Cross-entropy of a linear layer's output (the LM head) without materializing the [tokens, V] logits.

Registered ops:
  eurokernels::linear_cross_entropy           (hidden, weight, bias, labels, ...) -> (loss [N] fp32, lse [N] fp32)
  eurokernels::linear_cross_entropy_backward  -> (d_hidden, d_weight, d_bias)
Backends: reference (plain fp32 math, unchunked: the oracle), cpu / triton / cuda (the tiled loop below, with each
backend's fused cross-entropy kernel).

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
dtype. The matmuls run in the inputs' dtype with fp32 accumulation inside each matmul, as F.linear does.

``grad_in_forward=True`` trades memory for one matmul (where matmuls dominate, e.g. on CPU): token chunks of whole
vocabulary rows; per chunk one matmul for the logits [T, V], one kernel call computing loss, lse and the gradient
of the logits in the same sweep (in place), then d_hidden of the chunk (one matmul, complete) and the chunk's share
of d_weight, accumulated over token chunks in an fp32 [V, H] buffer (in vocabulary slices, so the temporary is
small; when all tokens fit in one chunk, d_weight is a single matmul and there is no buffer). 3 matmuls in all, all
during the forward; the backward only scales the stored gradients by the upstream gradient of the (scalar) loss.
Extra memory: the [T, V] chunk plus, with several chunks, the fp32 [V, H] accumulator (twice a bf16 weight) --
more than the default path, still far below N x V. Used for reduction "sum" / "mean" without return_lse when a
gradient is needed; otherwise the default path runs.
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._ext import cpu as _cpu_ext
from .._registry import define_op
from .cross_entropy import KERNELS, _check, _check_labels_on_cpu, reduce_loss

DEFAULT_CHUNKS = (4096, 8192)  # (tokens, vocabulary) per tile: 64 MB of bf16 logits at most (still wide for CPU matmuls)
FORWARD_GRAD_CHUNK_ELEMENTS = 1 << 27  # grad_in_forward: tokens per chunk = this // V (256 MB of bf16 logits)


def linear_cross_entropy(hidden, weight, labels, *, bias=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, reduction="mean", return_lse=False, chunk_size=None, grad_in_forward=False,
                         backend=None):
    """``cross_entropy(hidden @ weight.T + bias, labels, ...)`` without materializing the logits.

    Args:
        hidden: ``[..., H]`` float32 / bfloat16 / float16.
        weight: ``[V, H]``, the LM head (same dtype as hidden). bias: ``[V]`` or None.
        labels: ``[...]`` (hidden's leading shape) int64 / int32 class indices, or ignore_index.
        ignore_index, label_smoothing, z_loss, softcap, reduction, return_lse: as in eurokernels.cross_entropy.
        chunk_size: vocabulary columns per tile (int) or ``(tokens, vocabulary)`` per tile; default (4096, 8192).
            Extra memory is about one tile of logits, independent of N x V. With grad_in_forward, the tokens per
            chunk (default: 2^27 // V, about 1000 at V = 128K: CPU matmuls need tall chunks).
        grad_in_forward: 3 matmuls instead of 4, gradients computed in the forward, at the cost of an fp32
            [V, H] accumulator (see the module docstring); reduction "sum" / "mean" without return_lse only.
        backend: "reference" | "cpu" | "triton" | "cuda" | None.

    Returns:
        ``loss`` in hidden's dtype, or ``(loss, lse)`` with ``return_lse``. Gradients flow to hidden, weight, bias.
    """
    _checks.check_tensor("hidden", hidden, dtypes=None, min_dim=1)
    backend = _backend.resolve(backend, hidden)
    dtypes = _checks.float_dtypes(backend)
    _checks.check_tensor("hidden", hidden, dtypes=dtypes)
    _checks.check_tensor("weight", weight, dtypes=dtypes, dim=2)
    _checks.check_same_device("weight", weight, "hidden", hidden)
    if weight.dtype != hidden.dtype or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight: expected [V, {hidden.shape[-1]}] in {hidden.dtype} (hidden's size and dtype), "
                         f"got {tuple(weight.shape)} in {weight.dtype}")
    if bias is not None:
        _checks.check_tensor("bias", bias, dtypes=dtypes, dim=1)
        _checks.check_same_device("bias", bias, "hidden", hidden)
        if bias.shape[0] != weight.shape[0] or bias.dtype != hidden.dtype:
            raise ValueError(f"bias: expected [{weight.shape[0]}] in {hidden.dtype}, got {tuple(bias.shape)} in "
                             f"{bias.dtype}")
    # The loss options are checked against a [..., V] stand-in for the logits (no memory: an expanded view).
    logits_like = weight.new_empty(()).expand(*hidden.shape[:-1], weight.shape[0])
    softcap = _check(logits_like, labels, ignore_index, label_smoothing, z_loss, softcap, reduction, dtypes)
    token_chunk, vocab_chunk = _chunks(chunk_size)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if grad_in_forward and needs_grad and reduction != "none" and not return_lse:
        if chunk_size is None or isinstance(chunk_size, int):
            token_chunk = max(1, FORWARD_GRAD_CHUNK_ELEMENTS // weight.shape[0])
        loss = torch.ops.eurokernels.linear_cross_entropy_grad_in_forward(
            hidden, weight, bias, labels, int(ignore_index), float(label_smoothing), float(z_loss), softcap,
            token_chunk, reduction == "mean", backend)[0]
        return loss.to(hidden.dtype)
    loss, lse = torch.ops.eurokernels.linear_cross_entropy(
        hidden, weight, bias, labels, int(ignore_index), float(label_smoothing), float(z_loss), softcap, token_chunk,
        vocab_chunk, backend)
    loss = reduce_loss(loss, labels, ignore_index, reduction).to(hidden.dtype)
    return (loss, lse) if return_lse else loss


def _chunks(chunk_size):
    if chunk_size is None:
        return DEFAULT_CHUNKS
    sizes = (DEFAULT_CHUNKS[0], chunk_size) if isinstance(chunk_size, int) else tuple(chunk_size)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"chunk_size: expected a positive int (vocabulary columns) or a (tokens, vocabulary) pair "
                         f"of positive ints, got {chunk_size!r}")
    return sizes


# --- the tiled implementation (cpu / triton / cuda) ----------------------------------------------------------------

class _Scratch:
    """A reusable buffer for the tiles of one loop, handed out as contiguous [rows, cols] views. On CPU a fresh
    tile would be page-faulted again every time (a freed large block goes back to the OS), which costs more than
    the matmul filling it; on GPU the caching allocator would reuse the memory anyway."""

    def __init__(self, numel, dtype, device):
        self.buf = _empty(numel, dtype=dtype, device=device)

    def get(self, rows, cols):
        return self.buf[: rows * cols].view(rows, cols)


def _empty(*shape, dtype, device):
    """torch.empty, on CPU with huge pages and prefaulted (csrc/cpu_alloc.h): the matmuls writing these buffers
    would otherwise pay a 4 KiB page fault per page of a fresh multi-hundred-MB block on every call."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    if type(t) is torch.Tensor and t.device.type == "cpu" and t.numel():  # a real tensor, not a traced stand-in
        _cpu_ext().prepare_fresh(t)
    return t


def _tile_logits(h, weight, bias, c0, c1, out):
    w = weight[c0:c1]
    return torch.addmm(bias[c0:c1], h, w.t(), out=out) if bias is not None else torch.mm(h, w.t(), out=out)


def tiled_forward(kernel, hidden2, weight, bias, labels1, opts, token_chunk, vocab_chunk, vocab_start=0,
                  vocab_total=None):
    """Per-token (loss, lse) in fp32 over [token_chunk, vocab_chunk] tiles (see the module docstring).

    Each tile is a vocabulary shard [c0, c1) for the kernel, called without z-loss: it returns the tile's lse and
    loss_tile = lse_tile - (1 - eps) z_label [label in tile] - eps / V sum(z_tile), so loss_tile - lse_tile is the
    tile's share of the loss's linear terms, which add up over tiles. The z-loss is added once lse is complete.
    ``weight`` may itself be a shard [vocab_start, vocab_start + rows) of a vocabulary of vocab_total classes.
    """
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, v = hidden2.shape[0], weight.shape[0]
    vocab_total = v if vocab_total is None else vocab_total
    loss = torch.empty(n, dtype=torch.float32, device=hidden2.device)
    lse = torch.empty(n, dtype=torch.float32, device=hidden2.device)
    tiles = _Scratch(min(n, token_chunk) * min(v, vocab_chunk), hidden2.dtype, hidden2.device)
    for t0 in range(0, n, token_chunk):
        t1 = min(n, t0 + token_chunk)
        h, lab = hidden2[t0:t1], labels1[t0:t1]
        m = None
        for c0 in range(0, v, vocab_chunk):
            c1 = min(v, c0 + vocab_chunk)
            tile = _tile_logits(h, weight, bias, c0, c1, tiles.get(t1 - t0, c1 - c0))
            l_c, lse_c = kernel(tile, lab, None, None, None, None, ignore_index, label_smoothing, 0.0, softcap,
                                vocab_start + c0, vocab_total)
            lin_c = l_c - lse_c
            if m is None:
                m, lin = lse_c, lin_c
            else:
                m, lin = torch.logaddexp(m, lse_c), lin + lin_c
        valid = lab != ignore_index
        lse[t0:t1] = m
        # lin is -lse_tile on ignored rows (the kernel zeroes their loss): mask them, keep NaN of bad labels.
        loss[t0:t1] = torch.where(valid, m + z_loss * m * m + lin, 0.0)
    return loss, lse


def tiled_backward(kernel, dloss, dlse, hidden2, weight, bias, labels1, lse, opts, token_chunk, vocab_chunk,
                   vocab_start=0, vocab_total=None, fp32_dh=False):
    """(d_hidden, d_weight, d_bias) over tiles; vocabulary chunks outermost so d_weight needs only a chunk-sized
    fp32 accumulator. Each tile's logits are recomputed and overwritten in place by their gradient. With a weight
    shard, d_hidden is this shard's share only (the vocab-parallel caller all-reduces it, in fp32: ``fp32_dh``)."""
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, (v, hdim) = hidden2.shape[0], weight.shape
    vocab_total = v if vocab_total is None else vocab_total
    dev, dt = hidden2.device, hidden2.dtype
    dh = torch.zeros(hidden2.shape, dtype=torch.float32, device=dev)
    dw = _empty(weight.shape, dtype=weight.dtype, device=dev)
    db = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    tn, tv = min(n, token_chunk), min(v, vocab_chunk)
    one_token_chunk = n <= token_chunk
    tiles, dh_part = _Scratch(tn * tv, dt, dev), _Scratch(tn * hdim, dt, dev)
    if not one_token_chunk:
        dw_part = _Scratch(tv * hdim, dt, dev)
        dw_acc = _Scratch(tv * hdim, torch.float32, dev)
    for c0 in range(0, v, vocab_chunk):
        c1 = min(v, c0 + vocab_chunk)
        w = weight[c0:c1]
        acc = None if one_token_chunk else dw_acc.get(c1 - c0, hdim)
        db_acc = torch.zeros(c1 - c0, dtype=torch.float32, device=dev) if bias is not None else None
        for t0 in range(0, n, token_chunk):
            t1 = min(n, t0 + token_chunk)
            h = hidden2[t0:t1]
            tile = _tile_logits(h, weight, bias, c0, c1, tiles.get(t1 - t0, c1 - c0))
            kernel(tile, labels1[t0:t1], lse[t0:t1], dloss[t0:t1], None if dlse is None else dlse[t0:t1], tile,
                   ignore_index, label_smoothing, z_loss, softcap, vocab_start + c0, vocab_total)
            # the tile's share of d_hidden, rounded once, summed over vocabulary chunks in fp32
            dh[t0:t1] += torch.mm(tile, w, out=dh_part.get(t1 - t0, hdim))
            if one_token_chunk:
                torch.mm(tile.t(), h, out=dw[c0:c1])
            else:
                part = torch.mm(tile.t(), h, out=dw_part.get(c1 - c0, hdim))
                if t0 == 0:
                    acc.copy_(part)  # the first token chunk initializes (no zero fill)
                else:  # the last one writes d_weight's slice, rounded once
                    _accumulate(acc, part, dw[c0:c1] if t1 == n else None)
            if db_acc is not None:
                db_acc += tile.sum(0, dtype=torch.float32)
        if db_acc is not None:
            db[c0:c1] = db_acc
    return dh if fp32_dh else dh.to(dt), dw, db


def forward_with_grads(kernel, hidden2, weight, bias, labels1, opts, token_chunk, mean):
    """grad_in_forward: (loss scalar fp32, d_hidden, d_weight, d_bias) for the unit upstream gradient, in 3 matmuls
    (see the module docstring). The loss and the gradients already carry the mean's 1 / (non-ignored count)."""
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, (v, hdim) = hidden2.shape[0], weight.shape
    dev, dt = hidden2.device, hidden2.dtype
    valid = labels1 != ignore_index
    row_scale = valid.float()
    if mean:
        row_scale = row_scale / valid.sum().clamp(min=1)
    loss = torch.zeros((), dtype=torch.float32, device=dev)
    dh = _empty(hidden2.shape, dtype=dt, device=dev)
    one_chunk = n <= token_chunk
    # One token chunk: d_weight is one matmul written straight into its dtype (fp32 accumulation inside it, as in
    # F.linear's backward); no fp32 [V, H] buffer at all. Several: accumulated over chunks in fp32, in slices.
    dw = _empty(weight.shape, dtype=weight.dtype, device=dev)
    acc = None if one_chunk else _empty(weight.shape, dtype=torch.float32, device=dev)
    db = torch.zeros(v, dtype=torch.float32, device=dev) if bias is not None else None
    slice_v = min(v, max(1, (1 << 24) // max(1, hdim)))  # d_weight updated in slices: small temporaries
    tiles = _Scratch(min(n, token_chunk) * v, dt, dev)
    dw_part = None if one_chunk else _Scratch(slice_v * hdim, dt, dev)
    for t0 in range(0, n, token_chunk):
        t1 = min(n, t0 + token_chunk)
        h = hidden2[t0:t1]
        logits = _tile_logits(h, weight, bias, 0, v, tiles.get(t1 - t0, v))
        l_t, _ = kernel(logits, labels1[t0:t1], None, row_scale[t0:t1], None, logits, ignore_index, label_smoothing,
                        z_loss, softcap, 0, v)  # logits now hold d_logits
        loss += (l_t * row_scale[t0:t1]).sum()
        torch.mm(logits, weight, out=dh[t0:t1])
        if one_chunk:
            torch.mm(logits.t(), h, out=dw)
        else:
            for c0 in range(0, v, slice_v):
                c1 = min(v, c0 + slice_v)
                part = torch.mm(logits[:, c0:c1].t(), h, out=dw_part.get(c1 - c0, hdim))
                if t0 == 0:
                    acc[c0:c1] = part  # the first chunk initializes: no zero fill of the fp32 buffer
                else:  # the last chunk writes d_weight, rounded once
                    _accumulate(acc[c0:c1], part, dw[c0:c1] if t1 == n else None)
        if db is not None:
            db += logits.sum(0, dtype=torch.float32)
    return loss, dh, dw, (db.to(bias.dtype) if db is not None else weight.new_empty(0))


def _accumulate(acc, part, out=None):
    """acc += part (acc fp32, part in the weight's dtype), or for the last token chunk out = round(acc + part).
    On CPU one pass (csrc/cross_entropy/accumulate_cpu.cpp): torch's add_ would first convert part to an fp32
    temporary, and rounding acc afterwards is another pass over a [V, H] fp32 buffer."""
    if acc.device.type == "cpu":
        _cpu_ext().accumulate(acc, part, out)
    elif out is None:
        acc += part
    else:
        torch.add(acc, part, out=out)


# --- ops ------------------------------------------------------------------------------------------------------------

def _rows(hidden, labels):
    return _checks.rows_view(hidden), labels.reshape(-1).to(torch.int64).contiguous()


# --- backends: the reference is the plain formula on materialized logits (the oracle); every compiled backend runs
# the tiling engine above over its own cross-entropy kernel ---------------------------------------------------------

def _reference_forward(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap, token_chunk,
                       vocab_chunk):
    h2, l1 = _rows(hidden, labels)
    _check_labels_on_cpu(l1, ignore_index, weight.shape[0])
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
                               token_chunk, mean):
    h2, l1 = _rows(hidden, labels)
    opts = (ignore_index, label_smoothing, z_loss, softcap)
    _check_labels_on_cpu(l1, ignore_index, weight.shape[0])
    loss_rows, lse = ref.cross_entropy(ref.linear(h2, weight, bias), l1, *opts)
    valid = l1 != ignore_index
    scale = valid.to(loss_rows.dtype) / (valid.sum().clamp(min=1) if mean else 1)
    dh, dw, db = ref.linear_cross_entropy_backward(scale, None, h2, weight, bias, l1, lse, *opts)
    return (loss_rows * scale).sum(), dh.view(hidden.shape), dw, db


def _tiled_grad_in_forward(kernel):
    def run(hidden, weight, bias, labels, ignore_index, label_smoothing, z_loss, softcap, token_chunk, mean):
        h2, l1 = _rows(hidden, labels)
        opts = (ignore_index, label_smoothing, z_loss, softcap)
        loss, dh, dw, db = forward_with_grads(kernel, h2, weight, bias, l1, opts, token_chunk, mean)
        return loss, dh.view(hidden.shape), dw, db
    return run


def _fake_grad_in_forward(hidden, weight, bias, labels, *args):
    return (hidden.new_empty((), dtype=torch.float32),) + _fake_backward(None, None, hidden, weight, bias)


_fwd_grads = define_op(
    "linear_cross_entropy_grad_in_forward",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, int ignore_index, float label_smoothing, "
    "float z_loss, float softcap, int token_chunk, bool mean, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
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
    return (_scaled(dh, g), _scaled(dw, g), _scaled(db, g) if ctx.has_bias else None) + (None,) * 8


def _scaled(t, g, step=1 << 24):
    """t * g with one rounding (exact when g == 1, the usual case; no host sync to find out).

    On CPU one multiply: PyTorch's CPU kernels read a 0-dim CPU g in fp32 (opmath), so t * g is rounded once
    (checked bit for bit in the tests), with no fp32 temporary. (Not in place on the saved gradient: autograd's
    functionalization forbids mutating a forward output in the backward, and a retained graph would see it.)
    Elsewhere through fp32 in slices of ``step`` elements: the fp32 temporary of a whole [V, H] weight gradient
    would be twice the gradient itself."""
    if t.device.type == "cpu" and g.device.type == "cpu" and g.dim() == 0:
        return torch.mul(t, g, out=_empty(t.shape, dtype=t.dtype, device=t.device))
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    src, dst = t.reshape(-1), out.view(-1)
    for i in range(0, src.numel(), step):
        torch.mul(src[i:i + step].float(), g, out=dst[i:i + step])
    return out


_fwd_grads.register_autograd(_backward_grads, setup_context=_setup_context_grads)
