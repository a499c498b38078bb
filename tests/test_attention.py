"""Attention: reference vs PyTorch SDPA, every backend vs the fp64 reference (forward, lse, backward), masks,
GQA, packed documents, determinism, autograd, opcheck, compile, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference as ref
from tolerances import assert_within_torch_error, max_err

OP = "attention"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}




def interpreted(device, backend):
    return backend == "triton" and device.type == "cpu"


def dtype_for(device, backend, name):
    if name == "bf16" and interpreted(device, backend):
        pytest.skip("Triton's CPU interpreter computes bf16 tl.dot wrongly (triton-lang/triton#11584); the bf16 "
                    "kernels are covered on a GPU and by the AOT compile")
    if name == "fp32" and backend == "cuda":
        pytest.skip("the cuda kernels take float16 / bfloat16 (tensor-core inputs); test_cuda_rejects_float32")
    return DTYPES[name]


def wide_dtype(backend):
    """The dtype of the tests that need no particular precision: float32, or float16 on cuda (16-bit inputs only)."""
    return torch.float16 if backend == "cuda" else torch.float32


def close_tol(dtype):
    """(atol, rtol) for results of one kernel compared with another computation in the same dtype."""
    return (1e-4, 1e-4) if dtype == torch.float32 else (5e-3, 5e-3)


def cu(lengths, device):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def make(device, dtype, *, b=1, sq=40, sk=None, hq=4, hk=1, d=32, lens_q=None, lens_k=None):
    """q/k/v and the packing kwargs: dense [b, s, h, d], or packed documents when lens_q is given."""
    if lens_q is not None:
        lens_k = lens_k or lens_q
        shapes = ((sum(lens_q), hq, d), (sum(lens_k), hk, d))
        extra = dict(cu_seqlens_q=cu(lens_q, device), cu_seqlens_k=cu(lens_k, device),
                     max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    else:
        shapes = ((b, sq, hq, d), (b, sk or sq, hk, d))
        extra = {}
    q = torch.randn(shapes[0], device=device).to(dtype)
    k = torch.randn(shapes[1], device=device).to(dtype)
    v = torch.randn(shapes[1], device=device).to(dtype)
    return q, k, v, extra


def reference_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if not k.startswith("max_seqlen")}


def check_against_reference(backend, q, k, v, **kwargs):
    """Forward, lse and gradients of ``backend`` vs fp64 truth, bounded by PyTorch's own error in q's dtype
    (the reference's math done entirely in that dtype, as FlashAttention's tests do)."""
    low = q.dtype != torch.float32
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse = ek.attention(*leaves, return_lse=True, backend=backend, **kwargs)
    dout = torch.randn_like(out)
    out.backward(dout)

    rk = reference_kwargs(kwargs)
    truth = [t.detach().double().requires_grad_() for t in (q, k, v)]
    t_out, t_lse = ref.attention(*truth, **rk)
    t_out.backward(dout.double())
    yard = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    y_out, _ = ref.attention(*yard, upcast=False, **rk)
    y_out.backward(dout)

    assert out.dtype == q.dtype and out.shape == q.shape
    assert_within_torch_error(out, t_out, y_out, factor=2.0 if low else 1.0, name=f"out ({backend})")
    # lse: fp32 math on the same rounded inputs; -inf exactly where a row sees no key.
    assert lse.dtype == torch.float32 and lse.shape == t_lse.shape
    assert torch.equal(torch.isinf(lse), torch.isinf(t_lse)), "lse must be -inf exactly for rows that see no key"
    finite = ~torch.isinf(t_lse)
    assert max_err(lse[finite], t_lse[finite]) <= 1e-4 * max(1.0, t_lse[finite].abs().max().item() if finite.any() else 1.0)
    for name, got, t, y in zip(("dq", "dk", "dv"), leaves, truth, yard):
        assert torch.isfinite(got.grad).all(), f"{name}: non-finite gradient"
        assert_within_torch_error(got.grad, t.grad, y.grad, factor=3.0 if low else 1.0,
                                  atol=1e-4 * max(1.0, t.grad.abs().max().item()), name=f"{name} ({backend})")
    return out, lse


def test_reference_matches_sdpa():
    # Where features overlap: GQA (enable_gqa), causal (sq == sk: both alignments agree), an explicit mask for
    # bottom-right causal with sq != sk and for sliding windows.
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        q, k, v, _ = make("cpu", dtype, b=2, sq=33, hq=8, hk=2, d=64)
        t = lambda x: x.transpose(1, 2)
        tol = 1e-12 if dtype == torch.float64 else (2e-6 if dtype == torch.float32 else 2e-2)
        for causal in (False, True):
            expected = t(F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=causal, enable_gqa=True))
            got = ref.attention(q, k, v, causal=causal)[0]
            assert max_err(got, expected) <= tol, (dtype, causal)
        k2, v2 = k[:, :20], v[:, :20]  # sq > sk would leave rows with no key (NaN in SDPA): use sq < sk instead
        q2 = q[:, :12]
        for window, causal in (((-1, -1), True), ((5, 3), False), ((7, -1), True)):
            mask = ref.attention_mask(12, 20, window[0], 0 if causal else window[1])
            expected = t(F.scaled_dot_product_attention(t(q2), t(k2), t(v2), attn_mask=mask, enable_gqa=True))
            got = ref.attention(q2, k2, v2, causal=causal, window_size=window)[0]
            assert max_err(got, expected) <= tol, (dtype, window, causal)
    # lse is logsumexp of the scaled scores.
    q, k, v, _ = make("cpu", torch.float64, b=1, sq=5, hq=2, hk=2, d=16)
    lse = ref.attention(q, k, v, softmax_scale=0.3)[1]
    expected = torch.logsumexp(0.3 * q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2), -1)
    assert max_err(lse, expected) < 1e-12


def test_error_bound_rejects_low_precision():
    # Negative control: attention on fp8-rounded q and k is what a careless kernel might compute; the bound that
    # the kernels pass must reject it.
    q, k, v, _ = make("cpu", torch.bfloat16, sq=64, hq=4, hk=1, d=64)
    truth = ref.attention(q.double(), k.double(), v.double(), causal=True)[0]
    yardstick = ref.attention(q, k, v, causal=True, upcast=False)[0]
    fp8 = lambda t: t.to(torch.float8_e4m3fn).to(t.dtype)
    sloppy = ref.attention(fp8(q), fp8(k), v, causal=True)[0]
    with pytest.raises(AssertionError, match="exceeds"):
        assert_within_torch_error(sloppy, truth, yardstick, factor=2.0)


def test_mask_convention():
    # Bottom-right alignment: with sq=2, sk=4 and causal, query 0 sees keys 0..2 and query 1 sees all four.
    m = ref.attention_mask(2, 4, -1, 0)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    m = ref.attention_mask(4, 2, -1, 0)  # sq > sk: the first two queries see nothing
    assert m.sum(1).tolist() == [0, 0, 1, 2]
    assert ref.attention_mask(3, 3, 1, 0).tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


# Small shapes (the interpreter is slow); with its 16 x 16 blocks these straddle block
# boundaries, include rows that see no key, key blocks that are skipped entirely, and GQA ratios 4/1 and 8/2.
CASES = {
    "full": dict(shape=dict(b=2, sq=40, hq=4, hk=1, d=64), kw=dict()),
    "causal": dict(shape=dict(sq=40, hq=8, hk=2, d=32), kw=dict(causal=True)),
    "causal_sq>sk": dict(shape=dict(sq=40, sk=24, hq=4, hk=1, d=32), kw=dict(causal=True)),
    "causal_sq<sk": dict(shape=dict(sq=24, sk=40, hq=4, hk=2, d=32), kw=dict(causal=True)),
    "window": dict(shape=dict(sq=40, hq=4, hk=1, d=32), kw=dict(window_size=(8, 4))),
    "window_causal_softcap": dict(shape=dict(sq=40, sk=33, hq=4, hk=2, d=32),
                                  kw=dict(causal=True, window_size=(10, -1), softcap=2.0)),
    "softcap_scale": dict(shape=dict(sq=20, sk=37, hq=4, hk=4, d=32), kw=dict(softcap=5.0, softmax_scale=0.3)),
    "varlen_causal": dict(shape=dict(lens_q=[1, 17, 0, 30, 5], hq=4, hk=2, d=64), kw=dict(causal=True)),
    "varlen_uneven": dict(shape=dict(lens_q=[3, 20, 1, 9, 4], lens_k=[10, 7, 1, 26, 0], hq=4, hk=1, d=32),
                          kw=dict(causal=True, window_size=(6, -1))),
}


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward(device, backend, case, dtype_name):
    dtype = dtype_for(device, backend, dtype_name)
    c = CASES[case]
    q, k, v, extra = make(device, dtype, **c["shape"])
    check_against_reference(backend, q, k, v, **extra, **c["kw"])


@pytest.mark.parametrize("case", ["causal_window", "varlen", "sq<sk"])
def test_many_blocks(device, backend, case):
    # Several blocks per sequence on the cpu backend (128-query / 128- or 64-key blocks) and on a GPU (up to 128):
    # ragged last blocks, blocks skipped outside the window, blocks crossing its edge, documents of 1 token.
    # The interpreter's 16-token blocks are crossed by the other tests' shapes already, so it runs a short version.
    n = 40 if interpreted(device, backend) else 300
    shape, kw = {
        "causal_window": (dict(sq=n, hq=4, hk=1, d=64), dict(causal=True, window_size=(n // 3, -1))),
        "varlen": (dict(lens_q=[n // 2 + 7, 1, n - 3], lens_k=[n // 2 + 7, 1, n - 3], hq=4, hk=2, d=32),
                   dict(causal=True)),
        "sq<sk": (dict(sq=n // 3, sk=n, hq=2, hk=1, d=32), dict(causal=True, window_size=(n // 4, 2))),
    }[case]
    dtype = torch.float16 if interpreted(device, backend) else torch.bfloat16
    q, k, v, extra = make(device, dtype, **shape)
    check_against_reference(backend, q, k, v, **extra, **kw)


@pytest.mark.parametrize("d", [32, 64, 80, 96, 128, 192, 256])
def test_head_dims(device, backend, d):
    # 100 queries/keys (a ragged block on every backend; test_many_blocks covers several blocks).
    if interpreted(device, backend) and d not in (80, 256):
        pytest.skip("interpreter: a subset of head dims (80: padded block, 256: the largest) keeps CI short")
    dtype = torch.float16 if interpreted(device, backend) else torch.bfloat16
    sq = 40 if interpreted(device, backend) else 100
    q, k, v, _ = make(device, dtype, sq=sq, hq=4, hk=2, d=d)
    check_against_reference(backend, q, k, v, causal=True)


def test_gqa_32_8_and_8_1(device, backend):
    # Llama-3 / Mistral style 32 q / 8 kv heads and MQA 8/1 (the interpreter runs the smaller ratio only).
    configs = [(8, 1)] if interpreted(device, backend) else [(32, 8), (8, 1)]
    for hq, hk in configs:
        q, k, v, _ = make(device, torch.float16, sq=70 if not interpreted(device, backend) else 20, hq=hq, hk=hk, d=64)
        check_against_reference(backend, q, k, v, causal=True)


def test_no_key_rows_are_zero(device, backend):
    # Window (0, 0) with sq > sk: early queries see nothing (zeros, lse -inf, zero gradients, no NaN).
    q, k, v, _ = make(device, wide_dtype(backend), sq=20, sk=8, hq=2, hk=1, d=16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ek.attention(*leaves, causal=True, window_size=(2, 0), return_lse=True, backend=backend)
    assert torch.all(out[:, :12] == 0) and torch.all(torch.isinf(lse[:, :, :12]))
    out.sum().backward()
    assert torch.all(leaves[0].grad[:, :12] == 0) and all(torch.isfinite(t.grad).all() for t in leaves)


def test_keys_outside_the_band_are_never_read(device, backend):
    # 64 queries, 256 keys, causal with a 16-key window: no query sees keys 0..175, so the key tiles 0..127 (every
    # backend's tiles are <= 128 keys) must be skipped, not loaded and masked. NaN there would poison anything that
    # multiplies them (0 * NaN = NaN): the result must equal that with zeros, bitwise, and be finite. (The
    # reference, which forms every score and so fails this, is the negative control that the check bites.)
    if backend == "reference":
        pytest.skip("the reference materializes every score (the oracle, not a tiled kernel)")
    q, k, v, _ = make(device, torch.bfloat16 if not interpreted(device, backend) else torch.float16, sq=64, sk=256,
                      hq=2, hk=1, d=32)
    runs = []
    for fill in (0.0, float("nan")):
        kf, vf = k.clone(), v.clone()
        kf[:, :128] = fill
        vf[:, :128] = fill
        leaves = [t.clone().requires_grad_() for t in (q, kf, vf)]
        out = ek.attention(*leaves, causal=True, window_size=(16, -1), backend=backend)
        out.float().square().sum().backward()
        runs.append([out] + [t.grad for t in leaves])
    for zeros, nans in zip(*runs):
        assert torch.isfinite(nans).all() and torch.equal(zeros, nans)


def test_softmax_properties(device, backend):
    # Shift invariance along keys: adding a constant vector c to every key shifts each score row by q.c, which the
    # softmax ignores; and v = ones gives out = 1 for every row that sees a key.
    # (16-bit inputs: k + c is rounded again, and P is rounded before P V while its sum is not.)
    dtype = wide_dtype(backend)
    q, k, v, _ = make(device, dtype, sq=24, hq=2, hk=1, d=32)
    out = ek.attention(q, k, v, causal=True, backend=backend)
    shifted = ek.attention(q, k + torch.randn(32, device=device).to(dtype), v, causal=True, backend=backend)
    atol, rtol = close_tol(dtype)
    torch.testing.assert_close(out, shifted, atol=atol * 4, rtol=rtol)
    ones = ek.attention(q, k, torch.ones_like(v), causal=True, backend=backend)
    torch.testing.assert_close(ones, torch.ones_like(ones), atol=1e-5 if dtype == torch.float32 else 2e-3, rtol=0)


def test_strided_inputs(device, backend):
    # q, k, v as slices of one fused qkv projection [b, s, (hq + 2 hk) * d]: token stride != heads * d, no copies.
    b, s, hq, hk, d = 1, 24, 4, 2, 32
    dtype = wide_dtype(backend)
    qkv = torch.randn(b, s, (hq + 2 * hk) * d, device=device).to(dtype)
    q = qkv[..., : hq * d].view(b, s, hq, d)
    k = qkv[..., hq * d: (hq + hk) * d].view(b, s, hk, d)
    v = qkv[..., (hq + hk) * d:].view(b, s, hk, d)
    out = ek.attention(q, k, v, causal=True, backend=backend)
    expected = ref.attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)[0]
    atol, rtol = close_tol(dtype)
    torch.testing.assert_close(out, expected, atol=atol / 10 if dtype == torch.float32 else atol, rtol=rtol / 10
                               if dtype == torch.float32 else rtol)
    # A view whose data pointer is not 16-byte aligned (the cuda kernels' cp.async copies it first): the same
    # result as the aligned, contiguous inputs.
    buf = torch.randn(b, s, hq * d + 8, device=device).to(dtype)
    q_odd = buf[..., 4: 4 + hq * d].view(b, s, hq, d)
    torch.testing.assert_close(ek.attention(q_odd, k, v, causal=True, backend=backend),
                               ek.attention(q_odd.contiguous(), k.contiguous(), v.contiguous(), causal=True,
                                            backend=backend), atol=0, rtol=0)


def test_backward_deterministic(device, backend):
    # MQA with one sequence: on the cpu backend this splits each q-head group over several tasks (partial dK/dV
    # summed in a fixed order); the Triton dk/dv programs loop over the group in order.
    q, k, v, extra = make(device, torch.float16 if interpreted(device, backend) else torch.bfloat16,
                          lens_q=[30, 7], hq=8, hk=1, d=32)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        ek.attention(*leaves, causal=True, backend=backend, **extra).float().square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_gradcheck_fp64_reference(device):
    q, k, v, _ = make(device, torch.float64, b=1, sq=5, sk=7, hq=2, hk=1, d=8)
    fn = lambda q, k, v: ek.attention(q, k, v, causal=True, window_size=(3, -1), softcap=1.5, backend="reference")
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)))
    q, k, v, extra = make(device, torch.float64, lens_q=[1, 3, 2], lens_k=[2, 3, 4], hq=2, hk=1, d=8)
    fn = lambda q, k, v: ek.attention(q, k, v, causal=True, backend="reference", **extra)
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)))


def test_gradcheck_kernels_fp32(device, backend):
    # The kernels compute in fp32 (no fp64 path), so finite differences need a wide step and tolerance; the precise
    # gradient check is test_forward_backward against fp64 autograd.
    if backend == "cuda":
        pytest.skip("the cuda kernels take 16-bit inputs, too coarse for finite differences; their gradients are "
                    "checked against fp64 autograd by test_forward_backward")
    q, k, v, extra = make(device, torch.float32, lens_q=[3, 6], lens_k=[5, 6], hq=2, hk=1, d=16)
    fn = lambda q, k, v: ek.attention(q, k, v, causal=True, softcap=3.0, backend=backend, **extra)
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, k, v)), eps=1e-2, atol=2e-2,
                                    rtol=2e-2, fast_mode=True)


@pytest.mark.parametrize("varlen", [False, True])
def test_opcheck(device, backend, varlen):
    if varlen:
        q, k, v, extra = make(device, wide_dtype(backend), lens_q=[5, 11], lens_k=[7, 9], hq=2, hk=1, d=16)
        cq, ck, mq, mk = extra["cu_seqlens_q"], extra["cu_seqlens_k"], 11, 9
    else:
        q, k, v, _ = make(device, wide_dtype(backend), b=2, sq=9, sk=12, hq=2, hk=1, d=16)
        cq = ck = None
        mq, mk = 9, 12
    for t in (q, k, v):
        t.requires_grad_()
    args = (q, k, v, cq, ck, mq, mk, 0.25, 3, 0, 0.0, backend)
    torch.library.opcheck(torch.ops.eurokernels.attention.default, args)
    out, lse = torch.ops.eurokernels.attention(*args)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.eurokernels.attention_backward.default,
                          (dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, cq, ck, mq, mk, 0.25, 3, 0,
                           0.0, backend))


@pytest.mark.parametrize("varlen", [False, True])
def test_compile_fullgraph(device, backend, varlen):
    if varlen:
        q, k, v, extra = make(device, wide_dtype(backend), lens_q=[5, 11, 1], hq=4, hk=2, d=16)
    else:
        q, k, v, extra = make(device, wide_dtype(backend), b=2, sq=12, hq=4, hk=2, d=16)

    def step(q, k, v):
        out, lse = ek.attention(q, k, v, causal=True, return_lse=True, backend=backend, **extra)
        return (out.float() ** 2).sum() + lse.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled(*leaves).backward()
    eager = [t.clone().requires_grad_() for t in (q, k, v)]
    step(*eager).backward()
    for a, b in zip(leaves, eager):
        torch.testing.assert_close(a.grad, b.grad)


def test_max_seqlen_derived():
    # Without max_seqlen_* the op reads them from cu_seqlens (one host sync) and gives the same result.
    q, k, v, extra = make("cpu", torch.float32, lens_q=[3, 9], lens_k=[4, 9], hq=2, hk=1, d=16)
    with_max = ek.attention(q, k, v, causal=True, **extra)
    derived = ek.attention(q, k, v, causal=True, cu_seqlens_q=extra["cu_seqlens_q"],
                           cu_seqlens_k=extra["cu_seqlens_k"])
    torch.testing.assert_close(with_max, derived, atol=0, rtol=0)


def test_triton_fp32_head_dim_limit(device):
    # fp32 tiles of head_dim 256 do not fit a GPU's registers without spills: the triton backend says so.
    q, k, v, _ = make(device, torch.float32, sq=8, hq=2, hk=1, d=256)
    with pytest.raises(NotImplementedError, match="float32 inputs support head_dim <= 128"):
        ek.attention(q, k, v, backend="triton")


def test_cuda_rejects_float32():
    # The tensor cores take 16-bit inputs: float32 is refused with the supported dtypes named, not converted.
    # (On CPU the cuda backend is reached through the CUDA simulation, EUROKERNELS_CUDA_SIM=1, set by conftest.)
    q, k, v, _ = make("cuda" if torch.cuda.is_available() else "cpu", torch.float32, sq=8, hq=2, hk=1, d=16)
    with pytest.raises(TypeError, match=r"q: expected dtype in \(torch.float16, torch.bfloat16\)"):
        ek.attention(q, k, v, backend="cuda")


def test_packed_documents_1_to_300(device, backend):
    # Documents of every size class from 1 to 300 tokens in one packed batch: single tokens, lengths around the
    # 64-token GPU tiles and the 128-token CPU blocks, and a long one with several tiles; causal + GQA 2/1.
    if interpreted(device, backend):
        pytest.skip("interpreter: test_many_blocks' varlen case covers packed documents with short lengths")
    lens = [1, 300, 2, 63, 64, 65, 17, 129, 1, 200]
    q, k, v, extra = make(device, torch.bfloat16, lens_q=lens, hq=2, hk=1, d=32)
    check_against_reference(backend, q, k, v, causal=True, **extra)


def test_errors(monkeypatch):
    monkeypatch.delenv("EUROKERNELS_CUDA_SIM", raising=False)  # without the simulation, cuda on CPU is an error
    q, k, v, _ = make("cpu", torch.float32, b=2, sq=8, hq=4, hk=2, d=16)
    cq = cu([3, 5], "cpu")
    qp = q[0]
    cases = [
        (dict(q=q.int()), TypeError, "q: expected dtype"),
        (dict(k=k.half()), TypeError, "k: expected dtype torch.float16|k: expected dtype"),
        (dict(q=q[0]), ValueError, r"q: expected \[batch, seqlen, heads, head_dim\]"),
        (dict(v=v[:, :4]), ValueError, "v: expected the shape of k"),
        (dict(k=k[:1], v=v[:1]), ValueError, "k: expected batch size 2"),
        (dict(q=q[..., :12], k=k[..., :12], v=v[..., :12]), ValueError, "head_dim a multiple of 8"),
        (dict(q=torch.randn(2, 8, 4, 264), k=torch.randn(2, 8, 2, 264), v=torch.randn(2, 8, 2, 264)), ValueError,
         "head_dim a multiple of 8 in"),
        (dict(k=torch.randn(2, 8, 3, 16), v=torch.randn(2, 8, 3, 16)), ValueError, "dividing q's 4"),
        (dict(window_size=(-2, 0)), ValueError, "window_size: expected ints >= 0 or -1"),
        (dict(window_size=3), ValueError, "window_size: expected a pair"),
        (dict(softcap=-1.0), ValueError, "softcap: expected a number >= 0"),
        (dict(causal=None), TypeError, "causal: expected a bool"),
        (dict(max_seqlen_q=8), ValueError, "max_seqlen_q: only meaningful with cu_seqlens"),
        (dict(q=qp, k=k[0], v=v[0], cu_seqlens_q=cq), ValueError, "cu_seqlens_k: expected an int32 tensor"),
        (dict(q=qp, k=k[0], v=v[0], cu_seqlens_q=cq.long(), cu_seqlens_k=cq), TypeError, "cu_seqlens_q: expected dtype"),
        (dict(q=qp, k=k[0], v=v[0], cu_seqlens_q=cq, cu_seqlens_k=cu([8], "cpu")), ValueError,
         "cu_seqlens_k: expected the shape of cu_seqlens_q"),
        (dict(q=qp, k=k[0], v=v[0], cu_seqlens_q=cq, cu_seqlens_k=cq, max_seqlen_q=-1), ValueError,
         "max_seqlen_q: expected a Python int"),
        (dict(backend="cuda"), ValueError, "backend 'cuda' needs CUDA tensors"),
        (dict(backend="tpu"), ValueError, "backend: expected one of"),
    ]
    for kwargs, exc, msg in cases:
        args = dict(q=q, k=k, v=v)
        args.update(kwargs)
        with pytest.raises(exc, match=msg):
            ek.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
    # A malformed cu_seqlens reaching the cpu kernel fails loudly instead of reading out of bounds.
    with pytest.raises(RuntimeError, match="cu_seqlens_q must be non-decreasing"):
        ek.attention(qp, k[0], v[0], cu_seqlens_q=cu([3, 9], "cpu"), cu_seqlens_k=cq, max_seqlen_q=9,
                     max_seqlen_k=5, backend="cpu")
