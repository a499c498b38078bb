"""Batch invariance: a row's (a document's) results are bitwise the same whatever else is in the batch.

Reinforcement-learning trainers compare log-probabilities of the same tokens computed in different batches (the
rollout batch and the training batch) and need them bitwise equal. The promise, per op (README, "Batch
invariance"):
- cross_entropy: per-token loss and lse; softmax / log_softmax rows; rms_norm rows (forward and dx): every
  backend but the reference — one program (CPU: one thread) owns a whole row, so nothing depends on the others;
- attention: each packed document's output and lse, whatever documents are packed beside it;
- linear_cross_entropy: per-token loss and lse with ``batch_invariant=True`` (the default path's matmul tiling
  follows the token count, so its rows may differ in the last bit between batches: see its docstring).
The reference backend is excluded: it is PyTorch's own reductions, whose blocking follows the tensor's shape.
"""
import pytest
import torch

import eurokernels as ek
from conftest import DEVICES, backends_for


def compiled(op):
    """(device, backend) pairs of op's compiled backends: the reference is left out (see the module docstring)."""
    return pytest.mark.parametrize(("device", "backend"), [
        pytest.param(torch.device(d), b, id=f"{d}-{b}") for d in DEVICES for b in backends_for(d, op)
        if b != "reference"])


def _same_bits(a, b):
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _batches(rows, make_other):
    """The rows in batches of other sizes and compositions. rows: a tuple of tensors whose first dim is the row
    (logits and their labels, say); make_other(n): such a tuple of n other rows. Yields (batch, positions, ids):
    batch[positions] are rows[ids] — all rows alone, each row alone, the rows among others (before, after, spread)."""
    n = rows[0].shape[0]
    every = torch.arange(n)
    yield rows, every, every
    for i in range(n):
        yield tuple(t[i:i + 1] for t in rows), torch.tensor([0]), torch.tensor([i])
    for before, after in ((1, 0), (5, 31), (0, 60)):
        parts = (make_other(before), rows, make_other(after))
        yield tuple(torch.cat(ts) for ts in zip(*parts)), torch.arange(before, before + n), every
    spread = torch.randperm(n + 40)[:n].sort().values  # the rows spread out among 40 others
    batch = make_other(n + 40)
    for t, r in zip(batch, rows):
        t[spread.to(t.device)] = r
    yield batch, spread, every


def _check_rows(name, run, rows, make_other):
    """run(*batch) -> tuple of per-row results ([rows, ...] each): each row's results equal bitwise those of the
    first batch (the rows alone)."""
    expected = None
    for batch, positions, ids in _batches(rows, make_other):
        got = [t[positions.to(t.device)] for t in run(*batch)]
        if expected is None:
            expected = got
            continue
        for j, (g, e) in enumerate(zip(got, expected)):
            assert _same_bits(g, e[ids.to(e.device)]), (
                f"{name}: output {j} of rows {ids.tolist()} changed with the batch ({batch[0].shape[0]} rows, at "
                f"{positions.tolist()})")


def _rand(device, dtype, scale=1.0):
    return lambda n, *shape: (torch.randn(n, *shape, device=device) * scale).to(dtype)


@compiled("cross_entropy")
def test_cross_entropy_rows(device, backend):
    # 20000 columns: several of the kernels' column blocks, and a scalar tail on the CPU's 16-wide vectors.
    v = 20000
    logits = _rand(device, torch.bfloat16, 3.0)

    def make(n):
        labels = torch.randint(0, v, (n,), device=device)
        labels[1::4] = -100  # ignored tokens among them
        return logits(n, v), labels

    def run(x, labels):
        return ek.cross_entropy(x, labels, label_smoothing=0.1, z_loss=1e-4, softcap=30.0, reduction="none",
                                return_lse=True, backend=backend)
    _check_rows("cross_entropy", run, make(6), make)


@compiled("softmax")
def test_softmax_rows(device, backend):
    make = lambda n: (_rand(device, torch.float16, 4.0)(n, 5000),)  # noqa: E731
    run = lambda x: (ek.softmax(x, backend=backend), ek.log_softmax(x, backend=backend))  # noqa: E731
    _check_rows("softmax", run, make(5), make)


@compiled("rms_norm")
def test_rms_norm_rows(device, backend):
    """Forward rows and the rows of dx (the weight's gradient sums over rows: no per-row promise there)."""
    h = 3000
    weight = torch.randn(h, device=device).to(torch.bfloat16)
    make = lambda n: (_rand(device, torch.bfloat16)(n, h), _rand(device, torch.bfloat16)(n, h))  # noqa: E731

    def run(x, dy):
        x = x.clone().requires_grad_()
        y = ek.rms_norm(x, weight, casting="gemma", backend=backend)
        y.backward(dy)
        return y.detach(), x.grad
    _check_rows("rms_norm", run, make(5), make)


def _cu(lengths, device):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


@compiled("attention")
def test_attention_documents(device, backend):
    """One document's output and lse, packed alone and beside other documents (before, after, several), and the
    same document as one sequence of a dense batch."""
    d, hq, hk = 64, 4, 2
    # fp16: bf16 tl.dot is wrong under the Triton interpreter (tests/test_attention.py)
    dtype = torch.float16
    make = lambda n: tuple(torch.randn(n, h, d, device=device).to(dtype) for h in (hq, hk, hk))  # noqa: E731
    doc = make(37)
    opts = dict(causal=True, window_size=(20, 0), softcap=20.0, return_lse=True, backend=backend)

    def packed(lengths, index):
        parts = [make(n) for n in lengths]
        parts[index] = doc
        q, k, v = (torch.cat(ts) for ts in zip(*parts))
        cu = _cu(lengths, device)
        out, lse = ek.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lengths),
                                max_seqlen_k=max(lengths), **opts)
        lo, hi = int(cu[index]), int(cu[index + 1])
        return out[lo:hi], lse[:, lo:hi]

    expected = packed([37], 0)
    for lengths, index in (([5, 37], 1), ([37, 64, 1], 0), ([3, 90, 37, 12, 7], 2)):
        got = packed(lengths, index)
        for g, e in zip(got, expected):
            assert _same_bits(g, e), f"attention: the document's results changed when packed as {lengths}"

    q, k, v = (t.unsqueeze(0) for t in doc)
    dense = ek.attention(q, k, v, **opts)
    for b, index in ((3, 0), (4, 2)):
        batch = [tuple(t.unsqueeze(0) for t in make(37)) for _ in range(b)]
        batch[index] = (q, k, v)
        out, lse = ek.attention(*(torch.cat(ts) for ts in zip(*batch)), **opts)
        assert _same_bits(out[index], dense[0][0]) and _same_bits(lse[index], dense[1][0]), (
            f"attention: a sequence's results changed in a dense batch of {b}")


@compiled("linear_cross_entropy")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_linear_cross_entropy_rows(device, backend, dtype):
    """With batch_invariant=True, a token's loss and lse do not depend on the batch (fp32 on CPU: without it, a
    batch of 1 to 7 tokens takes another MKL path than a batch of 16 or more)."""
    h, v = 96, 3000
    weight = (torch.randn(v, h, device=device) * 0.1).to(dtype)

    def make(n):
        labels = torch.randint(0, v, (n,), device=device)
        labels[2::5] = -100
        return torch.randn(n, h, device=device).to(dtype), labels

    def run(x, labels):
        return ek.linear_cross_entropy(x, weight, labels, reduction="none", return_lse=True, batch_invariant=True,
                                       softcap=20.0, backend=backend)
    _check_rows("linear_cross_entropy", run, make(7), make)


def test_linear_cross_entropy_batch_invariant_matches_default():
    """The invariant path is the same math: its losses equal the default path's to fp32 rounding, and the mean
    over a padded batch counts only the real tokens."""
    hidden, weight = torch.randn(70, 32), torch.randn(500, 32)
    labels = torch.randint(0, 500, (70,))
    labels[::9] = -100
    for reduction in ("none", "mean", "sum"):
        a = ek.linear_cross_entropy(hidden, weight, labels, reduction=reduction, batch_invariant=True)
        b = ek.linear_cross_entropy(hidden, weight, labels, reduction=reduction)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch_invariant"):
        ek.linear_cross_entropy(hidden, weight, labels, batch_invariant=True, grad_in_forward=True)
    with pytest.raises(TypeError, match="batch_invariant"):
        ek.linear_cross_entropy(hidden, weight, labels, batch_invariant=1)
