"""Context parallelism: one long sequence split over the ranks of a process group, attention computed exactly.

Sharding (``context_parallel_shard``): with W ranks the sequence is cut into 2W equal chunks and rank r keeps chunks
r and 2W-1-r. Under a causal mask chunk g attends to g + 1 chunks, so every rank does (r + 1) + (2W - r) = 2W + 1
chunk pairs of work: the load is balanced without any masking trick.

Exchange: all-gather of K and V (as Llama 3 was trained; one collective of 2 * seqlen * heads_k * head_dim elements per
call), then for each local query chunk one ``eurokernels.attention`` call on the contiguous key range it can see:
under a causal mask that is keys up to the chunk's end, under a window the window's span, so fully masked chunk
pairs are never computed. The call's bottom-right alignment is moved to the chunk's true position by shifting the
window (``_shifted_window``), which keeps causal, window and softcap semantics of the whole sequence exactly. The
backward of the all-gather reduce-scatters dK/dV to the ranks that own them. Memory per rank: the gathered K and V
(2 * seqlen * heads_k * head_dim elements, the same again for their gradients in the backward) plus the local
shards; a ring exchange would keep that at O(seqlen / W) at the price of 2W - 1 sequential steps (not built).

Packed documents (``cu_seqlens`` of the whole packed sequence, identical on every rank): each local chunk is cut at
document boundaries; consecutive documents whose shifted windows agree go in one varlen call (only the document that
crosses the chunk's end can need another window under a right-bounded window, so at most two calls per chunk).
cu_seqlens is read on the host once per call (it is small; on a GPU that is one device-to-host copy).

Not torch.library ops: Python functions around collectives (eager distributed training, as the vocab-parallel
losses), whose per-rank compute is the registered attention op on whichever backend is chosen.
"""
import struct

import torch
import torch.distributed as dist

from .. import _checks
from .attention import attention, check_args


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
                               softcap=0.0, cu_seqlens=None, return_lse=False, backend=None, check_ranks=True):
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
    world, rank = dist.get_world_size(group), dist.get_rank(group)
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
            ("causal / window", (int(causal), left, right)),
            ("softmax_scale / softcap", (_bits(softmax_scale), _bits(softcap))),
            ("cu_seqlens", (-1, -1) if bounds is None else (len(bounds), hash(tuple(bounds)) & (2 ** 62 - 1)))])
    kv = _Unshard.apply(torch.stack((k, v)), group, dim + 1)
    k_full, v_full = kv.unbind(0)
    opts = dict(softmax_scale=float(softmax_scale), softcap=float(softcap), backend=backend)
    chunks, c = _layout(world, rank, total)
    outs, lses = [], []
    for half, g in enumerate(chunks):
        q_chunk = q.narrow(dim, half * c, c)
        if packed:
            out, lse = _packed_chunk(q_chunk, k_full, v_full, g * c, bounds, left, right, opts)
        else:
            out, lse = _dense_chunk(q_chunk, k_full, v_full, g * c, total, left, right, opts)
        outs.append(out)
        lses.append(lse)
    out, lse = torch.cat(outs, dim), torch.cat(lses, -1)
    return (out, lse) if return_lse else out


def _shifted_window(left, right, query_end, key_end):
    """The window that makes a call on keys ending at ``key_end`` align its queries (ending at ``query_end``) to
    their true positions. attention() aligns bottom-right: the call's last query sits at its last key, i.e. at
    ``key_end - 1``; the truth is ``query_end - 1``, delta = query_end - key_end positions earlier (delta <= 0)."""
    delta = query_end - key_end
    return (left - delta if left >= 0 else -1), (right + delta if right >= 0 else -1)


def _key_span(start, end, qs, qe, left, right):
    """The keys [ks, ke) within [start, end) that queries [qs, qe) can see under the window (left, right)."""
    return (start if left < 0 else max(start, qs - left)), (end if right < 0 else min(end, qe + right))


def _dense_chunk(q_chunk, k_full, v_full, qa, total, left, right, opts):
    c = q_chunk.shape[1]
    k0, k1 = _key_span(0, total, qa, qa + c, left, right)
    window = _shifted_window(left, right, qa + c, k1)
    return attention(q_chunk, k_full[:, k0:k1], v_full[:, k0:k1], window_size=window, return_lse=True, **opts)


def _packed_chunk(q_chunk, k_full, v_full, qa, bounds, left, right, opts):
    """One local chunk of a packed sequence: the documents it intersects, grouped into varlen calls by window."""
    c = q_chunk.shape[0]
    qb = qa + c
    docs = []  # (qs, qe, ks, ke, window) per document with queries in the chunk, in order
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs, qe = max(s, qa), min(e, qb)
        if qs < qe:
            ks, ke = _key_span(s, e, qs, qe, left, right)
            docs.append((qs, qe, ks, ke, _shifted_window(left, right, qe, ke)))
    groups = []
    for doc in docs:  # consecutive documents with one window share a call (their q and k spans are contiguous)
        if groups and groups[-1][-1][4] == doc[4]:
            groups[-1].append(doc)
        else:
            groups.append([doc])
    outs, lses, at = [], [], qa
    for grp in groups:
        qs0, ks0 = grp[0][0], grp[0][2]
        _fill(outs, lses, q_chunk, grp[0][0] - at)  # rows before the first document see no key
        cu_q = [d[0] - qs0 for d in grp] + [grp[-1][1] - qs0]
        cu_k = [d[2] - ks0 for d in grp] + [grp[-1][3] - ks0]
        device = q_chunk.device
        out, lse = attention(q_chunk[qs0 - qa:grp[-1][1] - qa], k_full[ks0:grp[-1][3]], v_full[ks0:grp[-1][3]],
                             cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32, device=device),
                             cu_seqlens_k=torch.tensor(cu_k, dtype=torch.int32, device=device),
                             max_seqlen_q=max(d[1] - d[0] for d in grp), max_seqlen_k=max(d[3] - d[2] for d in grp),
                             window_size=grp[0][4], return_lse=True, **opts)
        outs.append(out)
        lses.append(lse)
        at = grp[-1][1]
    _fill(outs, lses, q_chunk, qb - at)  # rows after the last document
    return torch.cat(outs, 0), torch.cat(lses, -1)


def _fill(outs, lses, q, rows):
    """Rows outside every document: zeros and lse = -inf, as attention() gives them."""
    if rows > 0:
        outs.append(q.new_zeros((rows,) + q.shape[1:]))
        lses.append(q.new_full((q.shape[1], rows), float("-inf"),
                               dtype=torch.float64 if q.dtype == torch.float64 else torch.float32))


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
