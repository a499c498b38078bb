"""merge_attention_states: merging attention over two disjoint key sets equals attention over their union (every
attention backend's outputs, GQA, softcap, a causal mask that leaves rows empty on one side), the packed layout, rows
empty on either side or both, fp64 gradcheck in all four inputs, torch.compile, bad input."""
import pytest
import torch

import eurokernels as ek
from conftest import backends_for


def _split_attention(q, k, v, cut, backend, **kw):
    """attention over keys [0, cut) and over [cut, end): two partial states whose union is all keys. Query i sees key
    j under the window when j - i lies in [-left, right] (q and k have one length: top-left is bottom-right). Only
    windows that stay representable after the shift (no window, causal) are used here."""
    s = k.shape[1]
    left, right = kw.pop("window_size", (-1, -1))

    def part(k0, k1):
        # the window relative to the sub-call's bottom-right alignment (its last query sits at its last key)
        delta = s - k1
        window = (left - delta if left >= 0 else -1, right + delta if right >= 0 else -1)
        # the sub-call's queries 0..s-1 are aligned at i + (k1 - k0) - s; the truth is i - k0
        return ek.attention(q, k[:, k0:k1], v[:, k0:k1], window_size=window, return_lse=True, backend=backend,
                            **kw)
    return part(0, cut), part(cut, s)


@pytest.mark.parametrize("attn_backend", backends_for("cpu", "attention"))
@pytest.mark.parametrize("case", ["full", "causal", "softcap_gqa"])
def test_merge_equals_attention_over_the_union(attn_backend, case):
    kw = {"full": {}, "causal": dict(window_size=(-1, 0)), "softcap_gqa": dict(softcap=5.0)}[case]
    hk = 1 if case == "softcap_gqa" else 2
    # the cuda attention takes fp16 / bf16 only; the merge's own error is fp32 rounding of the 16-bit outputs
    dtype = torch.float16 if attn_backend == "cuda" else torch.float32
    tol = dict(atol=1e-3, rtol=1e-3) if dtype == torch.float16 else dict(atol=2e-6, rtol=2e-5)
    q = torch.randn(2, 24, 2, 16).to(dtype)
    k, v = torch.randn(2, 24, hk, 16).to(dtype), torch.randn(2, 24, hk, 16).to(dtype)
    (oa, la), (ob, lb) = _split_attention(q, k, v, 10, attn_backend, **dict(kw))
    if case == "causal":  # queries before the cut see no key in [10, 24)
        assert torch.isinf(lb[:, :, :10]).all() and torch.isfinite(lb[:, :, 10:]).all()
    out, lse = ek.merge_attention_states(oa, la, ob, lb)
    want, want_lse = ek.attention(q, k, v, return_lse=True, backend=attn_backend, **kw)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(lse, want_lse, **tol)
    assert out.dtype == q.dtype and lse.dtype == torch.float32


def test_merge_packed_layout_and_symmetry():
    # packed form: out [tokens, heads, d], lse [heads, tokens]; merging is symmetric in its two parts
    t, h, d = 11, 3, 8
    oa, ob = torch.randn(t, h, d), torch.randn(t, h, d)
    la, lb = torch.randn(h, t), torch.randn(h, t)
    out, lse = ek.merge_attention_states(oa, la, ob, lb)
    out2, lse2 = ek.merge_attention_states(ob, lb, oa, la)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(lse, lse2)
    wa = torch.exp(la - lse).t().unsqueeze(-1)
    torch.testing.assert_close(out, wa * oa + (1 - wa) * ob)
    torch.testing.assert_close(lse, torch.logaddexp(la, lb))


def test_empty_rows():
    # a row empty in one part takes the other part as is; a row empty in both gives zeros, -inf and zero gradients
    oa, ob = torch.randn(1, 3, 1, 8, dtype=torch.float64), torch.randn(1, 3, 1, 8, dtype=torch.float64)
    inf = float("-inf")
    la = torch.tensor([[[inf, 0.5, inf]]], dtype=torch.float64)
    lb = torch.tensor([[[1.5, inf, inf]]], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (oa, la, ob, lb)]
    out, lse = ek.merge_attention_states(*leaves)
    torch.testing.assert_close(out[0, 0], ob[0, 0])
    torch.testing.assert_close(out[0, 1], oa[0, 1])
    assert (out[0, 2] == 0).all()
    assert lse.tolist() == [[[1.5, 0.5, inf]]]
    (out.sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    assert (leaves[0].grad[0, 2] == 0).all() and (leaves[2].grad[0, 2] == 0).all()
    assert leaves[0].grad[0, 0].abs().sum() == 0  # part a is empty there: its out row is ignored


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_fp64(packed):
    shape, lse_shape = ((5, 2, 8), (2, 5)) if packed else ((2, 3, 2, 8), (2, 2, 3))
    inputs = [torch.randn(shape, dtype=torch.float64), torch.randn(lse_shape, dtype=torch.float64),
              torch.randn(shape, dtype=torch.float64), torch.randn(lse_shape, dtype=torch.float64)]
    inputs[1].view(-1)[0] = float("-inf")  # one row empty in part a
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(ek.merge_attention_states, inputs)
    assert torch.autograd.gradgradcheck(ek.merge_attention_states, inputs)


def test_low_precision_rounds_once():
    # bf16 outs: the math is fp32 and out is rounded once (equal to the fp32 merge rounded)
    oa, ob = torch.randn(1, 64, 2, 8), torch.randn(1, 64, 2, 8)
    la, lb = torch.randn(1, 2, 64) * 4, torch.randn(1, 2, 64) * 4
    out, lse = ek.merge_attention_states(oa.bfloat16(), la, ob.bfloat16(), lb)
    want, want_lse = ek.merge_attention_states(oa.bfloat16().float(), la, ob.bfloat16().float(), lb)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, want.bfloat16()) and torch.equal(lse, want_lse)


def test_compile_fullgraph():
    oa, ob = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    la, lb = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
    la[0, 0, 0] = lb[0, 0, 0] = float("-inf")
    compiled = torch.compile(ek.merge_attention_states, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(oa, la, ob, lb), ek.merge_attention_states(oa, la, ob, lb)):
        torch.testing.assert_close(got, want)


def test_bad_input():
    o, lse = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 4)
    with pytest.raises(ValueError, match="lse_a: expected \\[batch, heads, seqlen\\]"):
        ek.merge_attention_states(o, lse.transpose(1, 2), o, lse)
    with pytest.raises(ValueError, match="out_b: expected the shape and dtype of out_a"):
        ek.merge_attention_states(o, lse, o[:, :3], lse)
    with pytest.raises(TypeError, match="lse_b: expected dtype"):
        ek.merge_attention_states(o, lse, o, lse.double())
    with pytest.raises(TypeError, match="lse_a: expected dtype"):
        ek.merge_attention_states(o, lse.half(), o, lse)
    with pytest.raises(ValueError, match="out_a: expected"):
        ek.merge_attention_states(o[0, 0], lse, o, lse)
