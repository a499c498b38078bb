"""Vocab-parallel cross-entropy (logits and linear variants) over torch.distributed: gloo on CPU, 2 and 4 spawned
ranks, each asserting that its loss, lse and gradients equal the single-rank ones."""
import pytest
import torch

import eurokernels as ek
from multirank import run_ranks

IGNORE = -100


def _check_rank(rank, world, backend):
    torch.manual_seed(0)  # the same full problem on every rank
    n, hdim, v = 13, 8, 24 * world  # v divisible by the world size for the default equal slices
    logits = torch.randn(n, v) * 3
    labels = torch.randint(0, v, (n,))
    labels[2] = IGNORE
    h = torch.randn(n, hdim)
    w = torch.randn(v, hdim) * 0.3
    b = torch.randn(v)
    per = v // world
    sl = slice(rank * per, (rank + 1) * per)
    for opts in (dict(), dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0)):
        for reduction in ("mean", "none"):
            # logits variant (default equal slices: vocab_start=None)
            full = logits.clone().requires_grad_()
            loss_1, lse_1 = ek.cross_entropy(full, labels, reduction=reduction, return_lse=True, backend=backend,
                                             **opts)
            shard = logits[:, sl].clone().requires_grad_()
            loss_p, lse_p = ek.vocab_parallel_cross_entropy(shard, labels, reduction=reduction, return_lse=True,
                                                            backend=backend, **opts)
            torch.testing.assert_close(loss_p, loss_1, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lse_p, lse_1, atol=1e-5, rtol=1e-5)
            g = torch.linspace(0.5, 1.5, loss_1.numel()).view_as(loss_1)
            ((loss_1 * g).sum() + lse_1.sum() * 0.1).backward()
            ((loss_p * g).sum() + lse_p.sum() * 0.1).backward()
            torch.testing.assert_close(shard.grad, full.grad[:, sl], atol=1e-6, rtol=1e-5)
            # linear variant (explicit vocab_start / vocab_total this time)
            ins1 = [t.clone().requires_grad_() for t in (h, w, b)]
            l1 = ek.linear_cross_entropy(ins1[0], ins1[1], labels, bias=ins1[2], reduction=reduction,
                                         backend=backend, **opts)
            insp = [h.clone().requires_grad_(), w[sl].clone().requires_grad_(), b[sl].clone().requires_grad_()]
            lp = ek.vocab_parallel_linear_cross_entropy(insp[0], insp[1], labels, bias_shard=insp[2],
                                                        vocab_start=rank * per, vocab_total=v,
                                                        reduction=reduction, chunk_size=(5, 7), backend=backend,
                                                        **opts)
            torch.testing.assert_close(lp, l1, atol=1e-5, rtol=1e-5)
            (l1 * g).sum().backward()
            (lp * g).sum().backward()
            torch.testing.assert_close(insp[0].grad, ins1[0].grad, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(insp[1].grad, ins1[1].grad[sl], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(insp[2].grad, ins1[2].grad[sl], atol=1e-5, rtol=1e-5)
    # Per-token weights and an fp32 loss, both variants (the weighting is the shared reduction: the same values).
    weights = torch.linspace(0.2, 2.0, n)
    for reduction in ("mean", "sum"):
        kw = dict(reduction=reduction, token_weights=weights, loss_dtype=torch.float32, backend=backend)
        torch.testing.assert_close(ek.vocab_parallel_cross_entropy(logits[:, sl], labels, **kw),
                                   ek.cross_entropy(logits, labels, **kw), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ek.vocab_parallel_linear_cross_entropy(h, w[sl], labels, bias_shard=b[sl], **kw),
            ek.linear_cross_entropy(h, w, labels, bias=b, **kw), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_matches_single_rank(world):
    run_ranks(_check_rank, world, "cpu")


def test_vocab_parallel_errors():
    x, y = torch.randn(2, 8), torch.randint(0, 16, (2,))
    with pytest.raises(ValueError, match="vocab_total: required"):
        ek.vocab_parallel_cross_entropy(x, y, vocab_start=0)
    with pytest.raises(ValueError, match="vocab_start: the shard"):
        ek.vocab_parallel_cross_entropy(x, y, vocab_start=12, vocab_total=16)
