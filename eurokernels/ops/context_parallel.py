"""Context parallelism: one long sequence split over the ranks of a process group, attention computed exactly.

Sharding (``context_parallel_shard``): with W ranks the sequence is cut into 2W equal chunks and rank r keeps chunks
r and 2W-1-r. Under a causal mask chunk g attends to g + 1 chunks, so every rank does (r + 1) + (2W - r) = 2W + 1
chunk pairs of work: the load is balanced without any masking trick.

The plan (``_plan``): a query chunk against a block of keys is one ``eurokernels.attention`` call on the rows that
see a key of the block and the keys those rows see (causal: nothing of a later chunk; a window: its band), so fully
masked chunk pairs are never computed. The call's bottom-right alignment is moved to the true positions by shifting
the window (``_shifted_window``), which keeps causal, window and softcap semantics of the whole sequence exactly.
Packed documents (``cu_seqlens`` of the whole packed sequence, identical on every rank) are cut at the chunk and
block boundaries; consecutive documents with one shifted window share a varlen call. cu_seqlens is read on the host
once per call (it is small; on a GPU that is one device-to-host copy).

Two K/V exchanges (``exchange=``):
  "ring" (default)   W steps; at each, the K/V block of another rank arrives (isend / irecv to the ring's
                     neighbours, overlapped with the compute on the block in hand), the local query chunks attend to
                     it and the partial results are merged (merge_attention_states). The backward runs the ring again,
                     recomputing from the final out and lse; each block's dK/dV travels with it and arrives home
                     after W shifts. K/V memory per rank: the local block, the block in flight and (backward) their
                     gradient accumulators: O(seqlen / W).
  "all_gather"       one all-gather of K and V (as Llama 3 was trained), then one call per local query chunk against
                     the whole sequence's keys; its backward reduce-scatters dK/dV. Memory per rank: the gathered K and
                     V, 2 * seqlen * heads_k * head_dim elements (as much again for their gradients): O(seqlen).
                     Fewer, larger messages and kernel calls: the better choice while seqlen * heads_k fits.

Not torch.library ops: Python functions around collectives (eager distributed training, as the vocab-parallel
losses), whose per-rank compute is the registered attention op on whichever backend is chosen.
"""
import collections
import struct

import torch
import torch.distributed as dist

from .. import _checks
from .attention import attention, check_args
from .merge_attention_states import merge_attention_states

EXCHANGES = ("ring", "all_gather")


def _layout(world, rank, n):
    """This rank's two chunk indices and the chunk length, for n positions over world ranks."""
    return (rank, 2 * world - 1 - rank), n // (2 * world)


def _check_dim(x, dim):
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    return dim % x.dim()


def context_parallel_shard(x, *, group=None, dim=1):
    """This rank's shard of the full sequence ``x``: chunks r and 2W-1-r of 2W equal chunks along ``dim``.

    Differentiable: the backward puts the gradient back at the shard's positions of a full-size zero tensor (no
    communication; each rank's full-size gradient covers its own positions only).
    """
    _checks.check_tensor("x", x, dtypes=None, min_dim=1)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dim = _check_dim(x, dim)
    if x.shape[dim] % (2 * world) != 0:
        raise ValueError(f"x: expected the size along dim {dim} ({x.shape[dim]}) to be a multiple of 2 * world size "
                         f"= {2 * world} (pad the sequence)")
    chunks, c = _layout(world, rank, x.shape[dim])
    return torch.cat([x.narrow(dim, g * c, c) for g in chunks], dim)


class _Unshard(torch.autograd.Function):
    """All-gather of the ranks' shards, reordered into the full sequence; backward: reduce-scatter (the adjoint:
    every rank's gradient of the full tensor is summed into the shards' owners)."""

    @staticmethod
    def forward(ctx, x, group, dim):
        world = dist.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        c = x.shape[dim] // 2
        order = [(g, 0) if g < world else (2 * world - 1 - g, 1) for g in range(2 * world)]
        ctx.group, ctx.dim, ctx.world = group, dim, world
        return torch.cat([parts[r].narrow(dim, h * c, c) for r, h in order], dim)

    @staticmethod
    def backward(ctx, grad):
        group, dim, world = ctx.group, ctx.dim, ctx.world
        c = grad.shape[dim] // (2 * world)
        shards = [torch.cat([grad.narrow(dim, g * c, c) for g in _layout(world, r, grad.shape[dim])[0]], dim)
                  for r in range(world)]
        out = torch.empty_like(shards[0])
        dist.reduce_scatter(out, shards, group=group)
        return out, None, None


def context_parallel_unshard(x_local, *, group=None, dim=1, check_ranks=True):
    """The full sequence from every rank's shard (the inverse of ``context_parallel_shard``): an all-gather and a
    reorder. Differentiable: the backward reduce-scatters, so each rank's shard gets the sum over ranks of the
    gradients at its positions (the adjoint of the all-gather; a loss computed identically on every rank therefore
    gives W times the single-rank gradient). check_ranks: as in ``context_parallel_attention``."""
    _checks.check_tensor("x_local", x_local, dtypes=None, min_dim=1)
    dim = _check_dim(x_local, dim)
    if x_local.shape[dim] % 2 != 0:
        raise ValueError(f"x_local: expected an even size along dim {dim} (two chunks), got {x_local.shape[dim]}")
    if check_ranks:
        _agree(group, x_local.device, "context_parallel_unshard",
               [("x_local shape", _padded(x_local.shape)), ("dim", (dim,)), ("dtype", (_dtype_code(x_local.dtype),))])
    return _Unshard.apply(x_local, group, dim)


def context_parallel_attention(q, k, v, *, group=None, causal=False, softmax_scale=None, window_size=(-1, -1),
                               softcap=0.0, cu_seqlens=None, return_lse=False, backend=None, exchange="ring",
                               check_ranks=True):
    """This rank's shard of ``eurokernels.attention`` over the whole sequence split across ``group``.

    Args:
        q, k, v: this rank's shards (``context_parallel_shard`` of the full tensors along the sequence):
            ``[batch, seqlen_local, heads, head_dim]``, or packed ``[tokens_local, heads, head_dim]`` with
            ``cu_seqlens``. Heads, head_dim and dtypes as in ``eurokernels.attention`` (GQA: heads_q a multiple of
            heads_k). seqlen_local (tokens_local) is even and the same on every rank.
        group: the context-parallel process group (None: the default group).
        causal, softmax_scale, window_size, softcap, backend: as in ``eurokernels.attention``, with the positions
            of the whole sequence (q and k have the same full length, so bottom-right alignment is top-left).
        cu_seqlens: int32 ``[n_docs + 1]``, the document boundaries of the whole packed sequence (all ranks' tokens,
            in the full order), identical on every rank; it must end at most at ``W * tokens_local``.
        return_lse: also return the shard of lse (``[batch, heads_q, seqlen_local]``; packed
            ``[heads_q, tokens_local]``), no gradient.
        exchange: "ring" (K/V blocks passed around the group, O(seqlen / W) K/V memory, communication overlapped
            with compute) or "all_gather" (one collective, O(seqlen) K/V memory); see the module docstring.
        check_ranks: first all-gather a small descriptor (shapes, dtype, options, a hash of cu_seqlens), so that
            ranks that disagree raise the same ValueError instead of hanging in the K/V all-gather. One small
            collective per call (with NCCL also a host sync); False skips it once a training loop is known good.

    Returns:
        This rank's shard of the output (and of lse). Gradients flow to the local q, k and v shards, equal to the
        shards of the single-rank gradients. Ranks that disagree on shapes, dtypes, options or cu_seqlens raise a
        ValueError on every rank (with ``check_ranks``) instead of hanging.
    """
    packed = cu_seqlens is not None
    backend, softmax_scale, left, right = check_args(q, k, v, packed, causal, softmax_scale, window_size, softcap,
                                                     backend)
    _checks.check_choice("exchange", exchange, EXCHANGES)
    world = dist.get_world_size(group)
    dim = 0 if packed else 1
    local = q.shape[dim]
    if k.shape[dim] != local:
        raise ValueError(f"k: expected {local} local positions (those of q; context parallelism shards q, k and v "
                         f"alike), got {k.shape[dim]}")
    if local % 2 != 0:
        raise ValueError(f"q: expected an even number of local positions (two chunks per rank), got {local}")
    total = local * world
    bounds = _check_cu_seqlens(cu_seqlens, q, total) if packed else None
    if check_ranks:
        _agree(group, q.device, "context_parallel_attention", [
            ("q shape", _padded(q.shape)), ("k shape", _padded(k.shape)), ("dtype", (_dtype_code(q.dtype),)),
            ("causal / window", (int(causal), left, right)), ("exchange", (EXCHANGES.index(exchange),)),
            ("softmax_scale / softcap", (_bits(softmax_scale), _bits(softcap))),
            ("cu_seqlens", (-1, -1) if bounds is None else (len(bounds), hash(tuple(bounds)) & (2 ** 62 - 1)))])
    opts = (float(softmax_scale), float(softcap), backend)
    if exchange == "all_gather":
        out, lse = _all_gather_attention(q, k, v, group, dim, bounds, left, right, opts)
    else:
        out, lse = _RingAttention.apply(q, k, v, group, dim, bounds, left, right, opts)
    return (out, lse) if return_lse else out


# --- the plan: which attention calls compute a query chunk against a key block -------------------------------------

_Call = collections.namedtuple("_Call", "q0 q1 k0 k1 cu_q cu_k max_q max_k window")


def _shifted_window(left, right, query_end, key_end):
    """The window that makes a call on keys ending at ``key_end`` align its queries (ending at ``query_end``) to
    their true positions. attention() aligns bottom-right: the call's last query sits at its last key, i.e. at
    ``key_end - 1``; the truth is ``query_end - 1``, delta = query_end - key_end positions earlier."""
    delta = query_end - key_end
    return (left - delta if left >= 0 else -1), (right + delta if right >= 0 else -1)


def _plan(qa, qb, ka, kb, bounds, left, right):
    """The calls computing queries [qa, qb) against keys [ka, kb) (positions in the whole sequence) under the window
    (left, right), within documents (``bounds``: the whole cu_seqlens, or None for dense rows). Each call's rows
    (q0, q1) count from qa, its keys (k0, k1) from ka; rows outside every call see no key of the block.

    Per document: keep the rows that see a key of the block, then the keys those rows see; the window is shifted so
    that the kernel's bottom-right alignment lands on the true positions, which stays representable (left' >= 0 and
    right' >= 0 where bounded) exactly because rows and keys were clipped to each other first. Consecutive
    documents with contiguous rows and keys and one window share a varlen call."""
    spans = [(qa, qb, ka, kb)] if bounds is None else [
        (max(qa, s), min(qb, e), max(ka, s), min(kb, e)) for s, e in zip(bounds[:-1], bounds[1:])]
    groups = []
    for qs, qe, ks, ke in spans:
        if right >= 0:
            qs = max(qs, ks - right)
        if left >= 0:
            qe = min(qe, ke + left)
        if qs >= qe or ks >= ke:
            continue
        if left >= 0:
            ks = max(ks, qs - left)
        if right >= 0:
            ke = min(ke, qe + right)
        doc = (qs, qe, ks, ke, _shifted_window(left, right, qe, ke))
        last = groups[-1][-1] if groups else None
        if last is not None and bounds is not None and (last[1], last[3], last[4]) == (qs, ks, doc[4]):
            groups[-1].append(doc)
        else:
            groups.append([doc])
    calls = []
    for grp in groups:
        (q0, _, k0, _, window), q1, k1 = grp[0], grp[-1][1], grp[-1][3]
        cu_q = cu_k = max_q = max_k = None
        if bounds is not None:
            cu_q, cu_k = [d[0] - q0 for d in grp] + [q1 - q0], [d[2] - k0 for d in grp] + [k1 - k0]
            max_q, max_k = max(d[1] - d[0] for d in grp), max(d[3] - d[2] for d in grp)
        calls.append(_Call(q0 - qa, q1 - qa, k0 - ka, k1 - ka, cu_q, cu_k, max_q, max_k, window))
    return calls


def _varlen(call, device):
    if call.cu_q is None:
        return dict(cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None)
    return dict(cu_seqlens_q=torch.tensor(call.cu_q, dtype=torch.int32, device=device),
                cu_seqlens_k=torch.tensor(call.cu_k, dtype=torch.int32, device=device),
                max_seqlen_q=call.max_q, max_seqlen_k=call.max_k)


def _attend(calls, q_chunk, k_block, v_block, dim, opts):
    """(out, lse) of a query chunk against a key block, along ``calls``; rows no call covers get zeros and lse -inf
    (as attention() gives a row that sees no key). Differentiable (eurokernels.attention)."""
    scale, softcap, backend = opts
    outs, lses, at = [], [], 0
    for call in calls:
        _fill(outs, lses, q_chunk, dim, call.q0 - at)
        out, lse = attention(q_chunk.narrow(dim, call.q0, call.q1 - call.q0),
                             k_block.narrow(dim, call.k0, call.k1 - call.k0),
                             v_block.narrow(dim, call.k0, call.k1 - call.k0), window_size=call.window,
                             softmax_scale=scale, softcap=softcap, return_lse=True, backend=backend,
                             **_varlen(call, q_chunk.device))
        outs.append(out)
        lses.append(lse)
        at = call.q1
    _fill(outs, lses, q_chunk, dim, q_chunk.shape[dim] - at)
    return torch.cat(outs, dim), torch.cat(lses, -1)


def _fill(outs, lses, q, dim, rows):
    if rows > 0:
        shape = list(q.shape)
        shape[dim] = rows
        outs.append(q.new_zeros(shape))
        lse_shape = (shape[0], shape[2], rows) if dim == 1 else (shape[1], rows)
        lses.append(q.new_full(lse_shape, float("-inf"), dtype=_lse_dtype(q)))


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# --- exchange 1: all-gather K/V -------------------------------------------------------------------------------------

def _all_gather_attention(q, k, v, group, dim, bounds, left, right, opts):
    """K and V all-gathered (differentiable: the backward reduce-scatters dK / dV), then per local query chunk the
    calls against the whole sequence's keys. Plain autograd."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    k_full, v_full = _Unshard.apply(torch.stack((k, v)), group, dim + 1).unbind(0)
    total = q.shape[dim] * world
    chunks, c = _layout(world, rank, total)
    outs, lses = [], []
    for half, g in enumerate(chunks):
        calls = _plan(g * c, (g + 1) * c, 0, total, bounds, left, right)
        out, lse = _attend(calls, q.narrow(dim, half * c, c), k_full, v_full, dim, opts)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs, dim), torch.cat(lses, -1)


# --- exchange 2: a ring -----------------------------------------------------------------------------------------------

def _ring_pairs(world, rank, total, bounds, left, right):
    """Per ring step (the K/V block of rank (rank - step) mod W): [(query half, key half, calls)] of the chunk
    pairs with something to compute; fully masked pairs are left out."""
    c = total // (2 * world)
    mine = _layout(world, rank, total)[0]
    steps = []
    for step in range(world):
        theirs = _layout(world, (rank - step) % world, total)[0]
        pairs = []
        for hq, gq in enumerate(mine):
            for hk, gk in enumerate(theirs):
                calls = _plan(gq * c, (gq + 1) * c, gk * c, (gk + 1) * c, bounds, left, right)
                if calls:
                    pairs.append((hq, hk, calls))
        steps.append(pairs)
    return steps


def _shift(t, group, world, rank):
    """Send ``t`` to the next rank of the ring, receive the previous rank's: (receive buffer, requests)."""
    recv = torch.empty_like(t)
    peer = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    ops = [dist.P2POp(dist.isend, t, peer((rank + 1) % world), group),
           dist.P2POp(dist.irecv, recv, peer((rank - 1) % world), group)]
    return recv, dist.batch_isend_irecv(ops)


def _wait(requests):
    for r in requests:
        r.wait()


class _RingAttention(torch.autograd.Function):
    """Ring exchange: W steps; at step s this rank holds the K/V block (two chunks) of rank (r - s) mod W, sends it
    on to rank r + 1 while computing its query chunks against it, and merges the partial results
    (merge_attention_states, fp32). Only the local K/V and one block in flight are held: O(seqlen / W) K/V memory.
    The backward runs the ring again: each step recomputes the pairs' gradients from the final out and lse
    (attention_backward: P = exp(S - lse) is already normalized), dq stays here, and the block's dK/dV accumulator
    travels with the block, arriving home after W shifts."""

    @staticmethod
    def forward(ctx, q, k, v, group, dim, bounds, left, right, opts):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        c = q.shape[dim] // 2
        steps = _ring_pairs(world, rank, c * 2 * world, bounds, left, right)
        acc_dtype = _lse_dtype(q)
        out_acc, lse_acc = [], []
        for half in range(2):
            outs, lses = [], []
            _fill(outs, lses, q.narrow(dim, half * c, c), dim, c)
            out_acc.append(outs[0].to(acc_dtype))
            lse_acc.append(lses[0])
        kv = torch.stack((k, v)).contiguous()
        for step, pairs in enumerate(steps):
            nxt, requests = _shift(kv, group, world, rank) if step < world - 1 else (None, [])
            for hq, hk, calls in pairs:
                out, lse = _attend(calls, q.narrow(dim, hq * c, c), kv[0].narrow(dim, hk * c, c),
                                   kv[1].narrow(dim, hk * c, c), dim, opts)
                out_acc[hq], lse_acc[hq] = merge_attention_states(out_acc[hq], lse_acc[hq], out.to(acc_dtype), lse)
            _wait(requests)
            kv = nxt
        out, lse = torch.cat(out_acc, dim).to(q.dtype), torch.cat(lse_acc, -1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (group, dim, steps, opts)
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        group, dim, steps, (scale, softcap, backend) = ctx.args
        if dout is None:  # only lse was used: it carries no gradient
            return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)) + (None,) * 6
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        c = q.shape[dim] // 2
        acc_dtype = _lse_dtype(q)
        dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        kv = torch.stack((k, v)).contiguous()
        dkv = torch.zeros(kv.shape, dtype=acc_dtype, device=q.device)
        for step, pairs in enumerate(steps):
            nxt, requests = _shift(kv, group, world, rank) if step < world - 1 else (None, [])
            for hq, hk, calls in pairs:
                for call in calls:
                    rows, keys = hq * c + call.q0, hk * c + call.k0
                    n, m = call.q1 - call.q0, call.k1 - call.k0
                    varlen = _varlen(call, q.device)
                    grads = torch.ops.eurokernels.attention_backward(
                        dout.narrow(dim, rows, n), q.narrow(dim, rows, n), kv[0].narrow(dim, keys, m),
                        kv[1].narrow(dim, keys, m), out.narrow(dim, rows, n), lse.narrow(-1, rows, n),
                        varlen["cu_seqlens_q"], varlen["cu_seqlens_k"], call.max_q or n, call.max_k or m, scale,
                        call.window[0], call.window[1], softcap, backend)
                    dq.narrow(dim, rows, n).add_(grads[0])
                    dkv[0].narrow(dim, keys, m).add_(grads[1])
                    dkv[1].narrow(dim, keys, m).add_(grads[2])
            if world > 1:  # the block's gradient follows the block; after W shifts it is home
                dkv, dkv_requests = _shift(dkv, group, world, rank)
                _wait(dkv_requests)
            _wait(requests)
            kv = nxt
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None, None


def _check_cu_seqlens(cu_seqlens, q, total):
    _checks.check_tensor("cu_seqlens", cu_seqlens, dtypes=(torch.int32,), dim=1)
    _checks.check_same_device("cu_seqlens", cu_seqlens, "q", q)
    bounds = cu_seqlens.tolist()  # the one host read (small); the chunk plan needs the boundaries
    if len(bounds) < 2 or bounds[0] < 0 or any(b < a for a, b in zip(bounds[:-1], bounds[1:])) or bounds[-1] > total:
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets in [0, {total}] (the whole packed sequence: "
                         f"world size x tokens_local), at least 2 entries, got {bounds}")
    return bounds


# --- rank agreement: a small all-gather before the big one, so that a mismatch raises instead of hanging --------

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_code(dtype):
    return _DTYPES.index(dtype) if dtype in _DTYPES else -1


def _padded(shape, n=8):
    if len(shape) > n:  # the descriptor has a fixed size on every rank, or its own all-gather could hang
        raise ValueError(f"expected a tensor of at most {n} dimensions, got shape {tuple(shape)}")
    return tuple(shape) + (-1,) * (n - len(shape))


def _bits(x):
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _agree(group, device, what, items):
    """All-gather the (name, ints) ``items`` and raise the same ValueError on every rank if any rank differs.
    ``device``: where the collective's tensor lives (the inputs' device: CPU for gloo, the GPU for NCCL)."""
    mine = [i for _, values in items for i in values]
    rows = torch.tensor(mine, dtype=torch.int64, device=device)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(rows) for _ in range(world)]
    dist.all_gather(gathered, rows, group=group)
    table = [row.tolist() for row in gathered]
    at = 0
    for name, values in items:
        seen = [tuple(row[at:at + len(values)]) for row in table]
        if len(set(seen)) > 1:
            detail = ", ".join(f"rank {r}: {_show(name, s)}" for r, s in enumerate(seen))
            raise ValueError(f"{what}: the ranks of the group disagree on {name} ({detail}); every rank must pass "
                             f"the same")
        at += len(values)


def _show(name, values):
    if "shape" in name:
        return tuple(v for v in values if v >= 0)
    if name == "dtype":
        return _DTYPES[values[0]] if values[0] >= 0 else "another dtype"
    if "softcap" in name:
        return tuple(struct.unpack("<d", struct.pack("<q", v))[0] for v in values)
    if name == "cu_seqlens":
        return f"{values[0]} entries, hash {values[1]}"
    return values
