"""Context-parallel attention on 2 and 4 gloo ranks equals single-rank eurokernels.attention on the whole sequence:
output, lse and the gradients of the local q, k and v shards, for causal, windows, softcap, GQA and packed documents
(documents crossing chunk and rank boundaries, tokens after the last document), with both K/V exchanges (ring,
all-gather). The ring's plan computes every visible chunk pair once and no masked one. Also: shard / unshard and their
gradients, ranks that disagree raise instead of hanging, bad input. One spawned run per world size holds every case
(process start-up dominates)."""
import pytest
import torch

import eurokernels as ek
from conftest import backends_for
from multirank import run_ranks

OP = "context_parallel"

CHUNK = 6  # tokens per chunk: every rank holds 2 chunks; 6 is not a multiple of the kernels' blocks
CASES = {  # name: (attention options, packed document lengths or None for dense [batch, seqlen])
    "causal_gqa": (dict(causal=True), None),
    "full": (dict(), None),
    "window_softcap": (dict(window_size=(7, 3), softcap=4.0), None),
    "causal_window": (dict(causal=True, window_size=(5, -1)), None),
    "packed_causal": (dict(causal=True), (5, 13, 1, 9)),
    "packed_window_gqa": (dict(window_size=(4, 2)), (8, 3, 14)),
    "packed_causal_window_softcap": (dict(causal=True, window_size=(3, -1), softcap=3.0), (11, 2, 7)),
}


def _doc_lengths(lengths, total):
    """The case's document lengths stretched over ``total`` tokens, leaving 2 tokens after the last document."""
    scale = (total - 2) / sum(lengths)
    out = [max(1, int(n * scale)) for n in lengths]
    out[-1] += total - 2 - sum(out)
    return out


def _check_case(rank, world, name, backend, exchange="ring"):
    opts, lengths = CASES[name]
    torch.manual_seed(len(name))  # the same full problem on every rank
    total = 2 * world * CHUNK
    hq, hk = (4, 2) if "gqa" in name else (2, 2)
    if lengths is None:
        q, k, v = torch.randn(2, total, hq, 16), torch.randn(2, total, hk, 16), torch.randn(2, total, hk, 16)
        dim, extra, cp_extra = 1, {}, {}
    else:
        q, k, v = torch.randn(total, hq, 16), torch.randn(total, hk, 16), torch.randn(total, hk, 16)
        cu = torch.tensor([0] + torch.tensor(_doc_lengths(lengths, total)).cumsum(0).tolist(), dtype=torch.int32)
        dim, extra, cp_extra = 0, dict(cu_seqlens_q=cu, cu_seqlens_k=cu), dict(cu_seqlens=cu)
    # the cuda attention takes fp16 / bf16 only: fp16 there, and the merges' roundings to it in the tolerance
    dtype = torch.float16 if backend == "cuda" else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ek.attention(*full, return_lse=True, backend=backend, **opts, **extra)
    dout = torch.randn_like(out)
    out.backward(dout)

    def shard(t, d=dim):
        return ek.context_parallel_shard(t, dim=d)

    local = [shard(t).detach().requires_grad_() for t in (q, k, v)]
    out_l, lse_l = ek.context_parallel_attention(*local, return_lse=True, backend=backend, exchange=exchange, **opts,
                                                 **cp_extra, check_ranks="gqa" not in name)  # (same without it)
    out_l.backward(shard(dout))
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=4e-3, rtol=4e-3)
    name = f"{name} ({exchange})"
    torch.testing.assert_close(out_l, shard(out.detach()), **tol, msg=lambda m: f"{name} out: {m}")
    torch.testing.assert_close(lse_l, shard(lse, lse.dim() - 1), **tol, msg=lambda m: f"{name} lse: {m}")
    for which, mine, ref in zip("qkv", local, full):
        torch.testing.assert_close(mine.grad, shard(ref.grad), **tol, msg=lambda m: f"{name} d{which}: {m}")


def _check_shard_unshard(rank, world):
    x = torch.arange(2 * 4 * world * 3, dtype=torch.float32).view(2, 4 * world, 3)  # chunks of 2 along dim 1
    mine = ek.context_parallel_shard(x)
    c = 2
    assert torch.equal(mine, torch.cat([x[:, rank * c:(rank + 1) * c], x[:, (2 * world - 1 - rank) * c:][:, :c]], 1))
    leaf = mine.detach().requires_grad_()
    back = ek.context_parallel_unshard(leaf)
    assert torch.equal(back, x)
    # unshard's backward sums the ranks' gradients into the owners' shards (each rank weighs by rank + 1 here)
    (back * (rank + 1) * torch.arange(x.numel()).view_as(x)).sum().backward()
    expected = ek.context_parallel_shard(torch.arange(x.numel()).view_as(x).float()) * sum(range(1, world + 1))
    assert torch.equal(leaf.grad, expected)
    # shard's backward: the gradient at the shard's positions of a full-size zero tensor
    xf = x.clone().requires_grad_()
    ek.context_parallel_shard(xf, dim=-2).sum().backward()
    assert xf.grad.sum() == mine.numel() and torch.equal(ek.context_parallel_shard(xf.grad), torch.ones_like(mine))


def _check_disagreement(rank, world):
    """Ranks passing different shapes or cu_seqlens get the same ValueError, not a hung all-gather."""
    q = torch.randn(1, 4 + 2 * rank, 2, 8)
    with pytest.raises(ValueError, match=r"disagree on q shape \(rank 0: \(1, 4, 2, 8\), rank 1: \(1, 6, 2, 8\)"):
        ek.context_parallel_attention(q, q, q, backend="reference")
    q = torch.randn(8, 2, 8)
    cu = torch.tensor([0, 5 + rank, 8 * world], dtype=torch.int32)
    with pytest.raises(ValueError, match="disagree on cu_seqlens"):
        ek.context_parallel_attention(q, q, q, cu_seqlens=cu, backend="reference")
    with pytest.raises(ValueError, match="disagree on causal / window"):
        ek.context_parallel_attention(q[None], q[None], q[None], causal=rank == 0, backend="reference")
    with pytest.raises(ValueError, match="disagree on x_local shape"):
        ek.context_parallel_unshard(torch.zeros(2, 2 + 2 * rank))
    # after the refusals the group still works: a collective completes
    torch.distributed.barrier()


def _check_all(rank, world, backends, extra):
    for backend in backends:  # every case on the cpu kernels; a dense, a windowed and a packed one on the others
        for name in CASES if backend == "cpu" else ("causal_gqa", "window_softcap", "packed_window_gqa"):
            _check_case(rank, world, name, backend)
    for name in CASES:  # the all-gather exchange: the same plans against the gathered keys
        _check_case(rank, world, name, "cpu", "all_gather")
    _check_shard_unshard(rank, world)
    if extra:
        _check_disagreement(rank, world)


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_matches_single_rank(world):
    # the cpu kernels on both world sizes; the Triton kernels (interpreted on CPU) and the reference once, on 2 ranks
    backends = ["cpu"] + ([b for b in backends_for("cpu", "context_parallel") if b != "cpu"] if world == 2 else [])
    run_ranks(_check_all, world, backends, world == 2)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_computes_no_masked_chunk_pair_and_balances_causal_work(world):
    # causal, dense: the ring's plan on each rank holds exactly the visible chunk pairs (key chunk <= query chunk),
    # 2W + 1 of them on every rank, each once
    from eurokernels.ops.context_parallel import _layout, _ring_pairs
    c, total = 3, 6 * world
    for rank in range(world):
        pairs = set()
        for step, todo in enumerate(_ring_pairs(world, rank, total, None, -1, 0)):
            theirs = _layout(world, (rank - step) % world, total)[0]
            for hq, hk, calls in todo:
                gq, gk = _layout(world, rank, total)[0][hq], theirs[hk]
                assert gk <= gq and (gq, gk) not in pairs
                pairs.add((gq, gk))
                # diagonal pairs are causal within the chunk; earlier chunks are seen whole
                assert calls == [(0, c, 0, c, None, None, None, None, (-1, 0 if gq == gk else (gq - gk) * c))]
        assert len(pairs) == 2 * world + 1


def test_bad_input():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="exchange: expected one of 'ring', 'all_gather'"):
        ek.context_parallel_attention(q, q, q, exchange="tree")
    with pytest.raises(ValueError, match="window_size"):
        ek.context_parallel_attention(q, q, q, window_size=(-2, 0))
    with pytest.raises(TypeError, match="causal"):
        ek.context_parallel_attention(q, q, q, causal="yes")
    with pytest.raises(ValueError, match="k: expected"):
        ek.context_parallel_attention(q, q[0], q)
    with pytest.raises(ValueError, match="q: expected"):
        ek.context_parallel_attention(q[0], q[0], q[0])  # 3-D without cu_seqlens
