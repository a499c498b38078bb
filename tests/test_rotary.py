"""Rotary embeddings: the reference against an independent complex-number rotation, every backend vs the fp64
reference (forward and backward), layouts (GQA, partial rotary, packed varlen, position_ids, strided views,
in place), the cos/sin tables of every scaling type against the formulas, autograd, opcheck, compile, errors."""
import math

import pytest
import torch

import eurokernels as ek
from eurokernels import _ext
from eurokernels import reference as ref
from tolerances import assert_within_torch_error

OP = "rotary"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# --- an independent rotation: complex multiplication by e^{i * angle} -------------------------------------------

def angles_for(positions, rotary_dim, base=10000.0):
    """fp64 angles [..., rotary_dim / 2] = position * base^(-2i / rotary_dim)."""
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    return positions.double()[..., None] * inv_freq.to(positions.device)


def complex_rotary(x, angles, rotary_dim, interleaved, conjugate=False):
    """x [..., heads, head_dim], angles [..., rotary_dim / 2] per token: the rotated x in fp64.
    Each pair of features is one complex number (re, im); rotating it is multiplying by e^{+-i * angle}."""
    half = rotary_dim // 2
    x = x.double()
    xr = x[..., :rotary_dim]
    pairs = xr.unflatten(-1, (half, 2)) if interleaved else torch.stack((xr[..., :half], xr[..., half:]), -1)
    z = torch.view_as_complex(pairs.contiguous())
    w = torch.polar(torch.ones_like(angles), -angles if conjugate else angles)[..., None, :]
    r = torch.view_as_real(z * w)
    rotated = r.flatten(-2) if interleaved else torch.cat((r[..., 0], r[..., 1]), -1)
    return torch.cat((rotated, x[..., rotary_dim:]), -1)


def table(max_positions, rotary_dim, dtype=torch.float32, device="cpu"):
    a = angles_for(torch.arange(max_positions), rotary_dim)
    return a.cos().to(dtype).to(device), a.sin().to(dtype).to(device)


def packed_positions(cu_seqlens):
    """Positions restarting at 0 in each packed sequence, written as a plain loop."""
    pos = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        pos += list(range(end - start))
    return torch.tensor(pos, dtype=torch.int64)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [64, 32, 2])
def test_reference_matches_complex_rotation(interleaved, rotary_dim):
    q, k = torch.randn(2, 7, 4, 64), torch.randn(2, 7, 2, 64)
    cos, sin = table(16, rotary_dim)
    a = angles_for(torch.arange(7).expand(2, 7), rotary_dim)
    for conj in (False, True):
        qo, ko = ref.apply_rotary(q, k, cos, sin, interleaved=interleaved, conjugate=conj)
        torch.testing.assert_close(qo.double(), complex_rotary(q, a, rotary_dim, interleaved, conj), atol=2e-6, rtol=0)
        torch.testing.assert_close(ko.double(), complex_rotary(k, a, rotary_dim, interleaved, conj), atol=2e-6, rtol=0)
    # Packed sequences and explicit positions.
    cu = torch.tensor([0, 3, 3, 10, 14], dtype=torch.int32)
    qp, kp = torch.randn(14, 4, 64), torch.randn(14, 1, 64)
    a = angles_for(packed_positions(cu), rotary_dim)
    qo, ko = ref.apply_rotary(qp, kp, cos, sin, cu_seqlens=cu, interleaved=interleaved)
    torch.testing.assert_close(qo.double(), complex_rotary(qp, a, rotary_dim, interleaved), atol=2e-6, rtol=0)
    torch.testing.assert_close(ko.double(), complex_rotary(kp, a, rotary_dim, interleaved), atol=2e-6, rtol=0)
    pid = torch.randint(0, 16, (2, 7))
    qo, _ = ref.apply_rotary(q, k, cos, sin, position_ids=pid, interleaved=interleaved)
    torch.testing.assert_close(qo.double(), complex_rotary(q, angles_for(pid, rotary_dim), rotary_dim, interleaved),
                               atol=2e-6, rtol=0)


def test_rotation_properties():
    # A rotation keeps the norm of each pair; conjugate undoes it; position 0 is the identity.
    q, k = torch.randn(1, 5, 3, 32, dtype=torch.float64), torch.randn(1, 5, 1, 32, dtype=torch.float64)
    cos, sin = table(8, 32, torch.float64)
    qo, ko = ref.apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(qo.norm(dim=-1), q.norm(dim=-1))
    back, _ = ref.apply_rotary(qo, ko, cos, sin, conjugate=True)
    torch.testing.assert_close(back, q)
    torch.testing.assert_close(qo[:, 0], q[:, 0])


# --- every backend vs the fp64 reference ---------------------------------------------------------------------------

def torch_rotary(x, cos, sin, positions, interleaved):
    """What a model computes in x's dtype (Hugging Face style: tables cast to x's dtype, x*cos + rotate(x)*sin, each
    op rounded): the yardstick for the low-precision error bound."""
    rd = 2 * cos.shape[1]
    c, s = cos.to(x.dtype)[positions][..., None, :], sin.to(x.dtype)[positions][..., None, :]
    xr = x[..., :rd]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), -1).flatten(-2)
    else:
        x1, x2 = xr[..., :rd // 2], xr[..., rd // 2:]
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1)
    return torch.cat((out, x[..., rd:]), -1)


def check_backend(backend, q, k, cos, sin, interleaved, *, position_ids=None, cu_seqlens=None, positions=None):
    """Forward and backward of `backend` vs fp64 (reference op on fp64 inputs), bounded by PyTorch's own error."""
    qs, ks = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    qo, ko = ek.apply_rotary(qs, ks, cos, sin, position_ids=position_ids, cu_seqlens=cu_seqlens,
                             interleaved=interleaved, backend=backend)
    assert qo.shape == q.shape and ko.shape == k.shape and qo.dtype == q.dtype
    qd, kd = q.double().requires_grad_(), k.double().requires_grad_()
    tq, tk = ek.apply_rotary(qd, kd, cos.double(), sin.double(), position_ids=position_ids,
                             cu_seqlens=cu_seqlens, interleaved=interleaved, backend="reference")
    if positions is None:
        positions = position_ids if position_ids is not None else torch.arange(q.shape[1], device=q.device)
    pq, pk = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    yq, yk = torch_rotary(pq, cos, sin, positions, interleaved), torch_rotary(pk, cos, sin, positions, interleaved)
    factor = 1.0 if q.dtype == torch.float32 else 1.5
    assert_within_torch_error(qo, tq, yq, factor=factor, name=f"q_out ({backend})")
    assert_within_torch_error(ko, tk, yk, factor=factor, name=f"k_out ({backend})")
    dq, dk = torch.randn_like(qo), torch.randn_like(ko)
    torch.autograd.backward([qo, ko], [dq, dk])
    torch.autograd.backward([tq, tk], [dq.double(), dk.double()])
    torch.autograd.backward([yq, yk], [dq, dk])
    assert_within_torch_error(qs.grad, qd.grad, pq.grad, factor=factor, name=f"dq ({backend})")
    assert_within_torch_error(ks.grad, kd.grad, pk.grad, factor=factor, name=f"dk ({backend})")


def test_checker_rejects_wrong_rotations():
    # Negative controls: the bound used below must reject the other pair convention and the unconjugated backward.
    q, k = torch.randn(1, 4, 2, 16, dtype=torch.bfloat16), torch.randn(1, 4, 1, 16, dtype=torch.bfloat16)
    cos, sin = table(8, 16)
    truth = ref.apply_rotary(q.double(), k.double(), cos.double(), sin.double())[0]
    yardstick = torch_rotary(q, cos, sin, torch.arange(4), False)
    assert_within_torch_error(ref.apply_rotary(q, k, cos, sin)[0], truth, yardstick, factor=1.5)
    for wrong in (ref.apply_rotary(q, k, cos, sin, interleaved=True)[0],
                  ref.apply_rotary(q, k, cos, sin, conjugate=True)[0]):
        with pytest.raises(AssertionError):
            assert_within_torch_error(wrong, truth, yardstick, factor=1.5)


# Head dims of the models in use (64, 80: not a power of two, a masked block; 128; 256), each with one GQA layout:
# 32 q / 8 kv heads (Llama / EuroLLM) or 8 / 1 (MQA-like). Seqlen 5 and batch 2: small for the interpreter.
SHAPES = [(64, 32, 8), (80, 8, 1), (128, 32, 8), (256, 8, 1)]


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("head_dim,hq,hk", SHAPES, ids=[f"d{d}-{a}x{b}" for d, a, b in SHAPES])
def test_forward_backward(device, backend, head_dim, hq, hk, dtype, interleaved):
    q = torch.randn(2, 5, hq, head_dim, dtype=dtype, device=device)
    k = torch.randn(2, 5, hk, head_dim, dtype=dtype, device=device)
    cos, sin = table(4096, head_dim, device=device)
    # Positions far into the table: large angles, where the rounding of the tables matters.
    pid = torch.randint(0, 4096, (2, 5), device=device)
    check_backend(backend, q, k, cos, sin, interleaved, position_ids=pid)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("rotary_dim", [2, 24, 64], ids=lambda r: f"rot{r}")
def test_partial_rotary_and_table_dtype(device, backend, rotary_dim, interleaved):
    # rotary_dim < head_dim (features past it pass through, copied bit-exactly) and tables in q's dtype.
    q = torch.randn(2, 6, 4, 96, dtype=torch.bfloat16, device=device)
    k = torch.randn(2, 6, 2, 96, dtype=torch.bfloat16, device=device)
    for table_dtype in (torch.float32, torch.bfloat16):
        cos, sin = table(8, rotary_dim, table_dtype, device)
        check_backend(backend, q, k, cos, sin, interleaved)
        qo, ko = ek.apply_rotary(q, k, cos, sin, interleaved=interleaved, backend=backend)
        assert torch.equal(qo[..., rotary_dim:], q[..., rotary_dim:])
        assert torch.equal(ko[..., rotary_dim:], k[..., rotary_dim:])


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_packed_varlen(device, backend, interleaved):
    # Several documents, one empty, of different lengths; positions restart at 0 in each.
    cu = torch.tensor([0, 5, 5, 12, 13, 20], dtype=torch.int32, device=device)
    q = torch.randn(20, 8, 64, dtype=torch.bfloat16, device=device)
    k = torch.randn(20, 2, 64, dtype=torch.bfloat16, device=device)
    cos, sin = table(16, 64, device=device)
    check_backend(backend, q, k, cos, sin, interleaved, cu_seqlens=cu,
                  positions=packed_positions(cu.cpu()).to(device))
    # Explicit positions with the packed layout win over cu_seqlens.
    pid = torch.randint(0, 16, (20,), device=device)
    check_backend(backend, q, k, cos, sin, interleaved, cu_seqlens=cu, position_ids=pid.int(), positions=pid)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_inplace(device, backend, interleaved):
    # q and k as views of one fused QKV projection output [batch, seqlen, (hq + 2 hk) * d], rotated in place:
    # outputs, the untouched v, and gradients through the fused buffer must match the out-of-place path.
    b, s, hq, hk, d, rd = 2, 5, 4, 2, 64, 48
    cos, sin = table(8, rd, device=device)
    x = torch.randn(b, s, (hq + 2 * hk) * d, dtype=torch.bfloat16, device=device, requires_grad=True)
    g = torch.randn(b, s, hq + 2 * hk, d, dtype=torch.bfloat16, device=device)

    def run(inplace):
        qkv = (x * 1).view(b, s, hq + 2 * hk, d)
        q, k, v = qkv[:, :, :hq], qkv[:, :, hq:hq + hk], qkv[:, :, hq + hk:]
        qo, ko = ek.apply_rotary(q, k, cos, sin, interleaved=interleaved, inplace=inplace, backend=backend)
        if inplace:
            assert qo is q and ko is k
            out = qkv
        else:
            out = torch.cat((qo, ko, v), 2)
        (out.float() * g.float()).sum().backward()
        grad, x.grad = x.grad, None
        return out.detach(), grad

    out_ip, grad_ip = run(True)
    out_oop, grad_oop = run(False)
    assert torch.equal(out_ip, out_oop)
    assert torch.equal(grad_ip, grad_oop)
    # Without autograd, and with a non-unit stride along head_dim (rotated through a copy, then written back).
    q = torch.randn(2, 5, 3, 32, device=device)
    k = torch.randn(2, 5, 1, 32, device=device)
    cos, sin = table(8, 32, device=device)
    expected = ek.apply_rotary(q, k, cos, sin, interleaved=interleaved, backend="reference")
    qt, kt = q.transpose(-1, -2).contiguous().transpose(-1, -2), k.clone()
    ek.apply_rotary(qt, kt, cos, sin, interleaved=interleaved, inplace=True, backend=backend)
    torch.testing.assert_close((qt, kt), expected, atol=2e-6, rtol=2e-6)


def test_strided_views(device, backend):
    # Strided q/k: split from a fused QKV buffer, a [batch, heads, seqlen, d] buffer transposed, a sliced seqlen.
    cos, sin = table(16, 32, device=device)
    qkv = torch.randn(2, 10, 7, 32, dtype=torch.float16, device=device)
    bhsd = torch.randn(2, 3, 10, 32, dtype=torch.float16, device=device)
    cases = [(qkv[:, :, :4], qkv[:, :, 4:6]), (bhsd.transpose(1, 2), qkv[:, :, 6:]),
             (qkv[:, ::2, :3], qkv[:, 1::2, 3:5])]
    for q, k in cases:
        got = ek.apply_rotary(q, k, cos, sin, backend=backend)
        expected = ek.apply_rotary(q.contiguous(), k.contiguous(), cos, sin, backend="reference")
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


def test_empty(device, backend):
    cos, sin = table(4, 16, device=device)
    q, k = torch.randn(2, 0, 3, 16, device=device), torch.randn(2, 0, 1, 16, device=device)
    qo, ko = ek.apply_rotary(q, k, cos, sin, backend=backend)
    assert qo.shape == q.shape and ko.shape == k.shape
    q, k = torch.randn(1, 3, 2, 16, device=device), torch.randn(1, 3, 0, 16, device=device)  # no k heads
    qo, ko = ek.apply_rotary(q, k, cos, sin, backend=backend)
    torch.testing.assert_close(qo, ek.apply_rotary(q, k, cos, sin, backend="reference")[0])


def test_kernel_invalid_positions_give_nan(device, backend):
    # The GPU contract (no host checks): a token without a valid position gets NaN in its rotated features and the
    # kernel reads nothing outside the table. Called below the public checks, which reject these on CPU.
    if backend == "reference":
        kernel = None
    elif backend == "cpu":
        kernel = _ext.cpu().rotary_fwd
    elif backend == "triton":
        from eurokernels.triton.rotary import rotary as kernel
    else:  # the CUDA kernel, on CPU tensors through the simulation
        kernel = _ext.cuda_for(torch.empty(0, device=device)).rotary_fwd
    cos, sin = table(8, 16, device=device)
    q, k = torch.randn(1, 6, 2, 32, device=device), torch.randn(1, 6, 1, 32, device=device)
    pos = torch.tensor([0, 7, 8, -1, 3, 100], device=device)
    cu = torch.tensor([0, 2, 4], dtype=torch.int32, device=device)  # tokens 4 and 5 belong to no sequence
    for position_ids, cu_seqlens, bad in ((pos, None, [2, 3, 5]), (None, cu, [4, 5])):
        if kernel is None and cu_seqlens is None:
            qo, ko = ref.apply_rotary(q, k, cos, sin, position_ids.view(1, 6))
        elif kernel is None:
            qo, ko = (t[None] for t in ref.apply_rotary(q[0], k[0], cos, sin, None, cu_seqlens))
        else:
            qo, ko = torch.empty_like(q), torch.empty_like(k)
            kernel(q, k, qo, ko, cos, sin, position_ids, cu_seqlens, False, False)
        good = [i for i in range(6) if i not in bad]
        assert torch.isnan(qo[0, bad, :, :16]).all() and torch.isnan(ko[0, bad, :, :16]).all()
        assert not torch.isnan(qo[0, good]).any() and not torch.isnan(qo[0, :, :, 16:]).any()


def test_gradcheck_fp64_reference(device):
    q = torch.randn(1, 3, 2, 8, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.randn(1, 3, 1, 8, dtype=torch.float64, device=device, requires_grad=True)
    cos, sin = table(4, 6, torch.float64, device)
    for interleaved in (False, True):
        fn = lambda q, k: ek.apply_rotary(q, k, cos, sin, interleaved=interleaved, backend="reference")
        assert torch.autograd.gradcheck(fn, (q, k))
        fn = lambda q, k: ek.apply_rotary(q * 1, k * 1, cos, sin, interleaved=interleaved, inplace=True,
                                          backend="reference")
        assert torch.autograd.gradcheck(fn, (q, k))


def test_gradcheck_kernels_fp32(device, backend):
    q = torch.randn(1, 3, 2, 8, device=device, requires_grad=True)
    k = torch.randn(1, 3, 1, 8, device=device, requires_grad=True)
    cos, sin = table(4, 8, device=device)
    fn = lambda q, k: ek.apply_rotary(q, k, cos, sin, interleaved=True, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-2, atol=1e-2, rtol=1e-2, fast_mode=True)


@pytest.mark.parametrize("layout", ["batched", "packed", "position_ids"])
def test_opcheck(device, backend, layout):
    cos, sin = table(16, 24, device=device)
    pid, cu = None, None
    if layout == "packed":
        q, k = torch.randn(9, 3, 32, device=device), torch.randn(9, 1, 32, device=device)
        cu = torch.tensor([0, 4, 9], dtype=torch.int32, device=device)
    else:
        q, k = torch.randn(2, 4, 3, 32, device=device), torch.randn(2, 4, 1, 32, device=device)
        if layout == "position_ids":
            pid = torch.randint(0, 16, (2, 4), device=device)
    for interleaved in (False, True):
        args = (cos, sin, pid, cu, interleaved, False, backend)
        torch.library.opcheck(torch.ops.eurokernels.rotary.default,
                              (q.clone().requires_grad_(), k.clone().requires_grad_()) + args)
        torch.library.opcheck(torch.ops.eurokernels.rotary_.default, (q.clone(), k.clone()) + args)


def test_compile_fullgraph(device, backend):
    rope = ek.nn.RotaryEmbedding(32, 16, rotary_dim=16, backend=backend).to(device)

    def step(x):
        qkv = (x * 2).view(2, 5, 5, 32)
        q, k = rope(qkv[:, :, :3], qkv[:, :, 3:4])
        q2, k2 = rope(qkv[:, :, :3], qkv[:, :, 3:4], inplace=True)  # rotates the buffer itself
        return (q.float() ** 2).sum() + k.float().sum() + (qkv.float() * 3).sum() + q2.float().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 5, 160, device=device, requires_grad=True)
    loss = compiled(x)
    loss.backward()
    gx = x.grad.clone()
    x.grad = None
    loss_eager = step(x)
    loss_eager.backward()
    torch.testing.assert_close(loss, loss_eager)
    torch.testing.assert_close(gx, x.grad)


def test_compile_inductor_cpu():
    # One end-to-end inductor compile (slow on CPU, so once), including the in-place op on a view of a buffer the
    # graph goes on using: functionalization must keep the mutation visible.
    cos, sin = ek.rotary_cos_sin(16, 32)

    def f(x):
        qkv = (x * 2).view(2, 5, 5, 32)
        ek.apply_rotary(qkv[:, :, :3], qkv[:, :, 3:4], cos, sin, inplace=True)
        q, k = ek.apply_rotary(qkv[:, :, :3], qkv[:, :, 3:4], cos, sin, interleaved=True)
        return qkv + 1, q, k

    x = torch.randn(2, 5, 160)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))


# --- cos/sin tables: every scaling type against its formula, written out here -----------------------------------

def hf_table(positions, inv_freq, attention_factor=1.0):
    """cos/sin from fp64 inverse frequencies, in fp64."""
    a = positions.double()[:, None] * inv_freq[None, :]
    return a.cos() * attention_factor, a.sin() * attention_factor


def check_table(max_positions, rotary_dim, base, scaling, inv_freq, attention_factor=1.0):
    cos, sin = ek.rotary_cos_sin(max_positions, rotary_dim, base=base, scaling=scaling)
    assert cos.shape == (max_positions, rotary_dim // 2) and cos.dtype == torch.float32
    ec, es = hf_table(torch.arange(max_positions), inv_freq, attention_factor)
    # fp32 inverse frequencies and fp32 angle products: the phase error grows with position * angle * 2^-23.
    atol = 4 * max_positions * 2.0 ** -23 * attention_factor + 1e-6
    torch.testing.assert_close(cos.double(), ec, atol=atol, rtol=0)
    torch.testing.assert_close(sin.double(), es, atol=atol, rtol=0)


def default_inv_freq(rotary_dim, base):
    return torch.tensor([1.0 / base ** (2 * i / rotary_dim) for i in range(rotary_dim // 2)], dtype=torch.float64)


def test_cos_sin_default_and_linear():
    check_table(512, 64, 10000.0, None, default_inv_freq(64, 10000.0))
    check_table(512, 128, 500000.0, {"rope_type": "linear", "factor": 4.0}, default_inv_freq(128, 500000.0) / 4)
    cos, sin = ek.rotary_cos_sin(8, 16, dtype=torch.bfloat16)
    assert cos.dtype == torch.bfloat16 and torch.equal(cos[0], torch.ones(8, dtype=torch.bfloat16))


def test_cos_sin_dynamic():
    # Dynamic NTK: base' = base * (factor * L / L_orig - (factor - 1)) ^ (d / (d - 2)) for L = max_positions tokens
    # beyond the trained L_orig; the plain table up to L_orig.
    d, base, factor, orig = 64, 10000.0, 2.0, 128
    for L in (512, 100):
        scaled = base * (factor * max(L, orig) / orig - (factor - 1)) ** (d / (d - 2))
        check_table(L, d, base, {"rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": orig},
                    default_inv_freq(d, scaled))


def test_cos_sin_yarn():
    d, base, factor, orig = 64, 10000.0, 4.0, 256
    inv = default_inv_freq(d, base)
    # Correction range: the dims whose wavelength completes beta_fast (32) / beta_slow (1) turns in orig tokens.
    dim_for = lambda rotations: d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(dim_for(32)), 0), min(math.ceil(dim_for(1)), d - 1)
    ramp = torch.tensor([min(max((i - low) / (high - low), 0.0), 1.0) for i in range(d // 2)], dtype=torch.float64)
    # ramp 0 (high frequencies): keep (extrapolate); ramp 1 (low frequencies): interpolate by 1 / factor.
    expected = inv * (1 - ramp) + inv / factor * ramp
    mscale = 0.1 * math.log(factor) + 1.0
    check_table(512, d, base, {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig},
                expected, mscale)
    # Explicit attention_factor, and DeepSeek's mscale / mscale_all_dim ratio.
    check_table(64, d, base, {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
                              "attention_factor": 0.5}, expected, 0.5)
    ratio = (0.1 * 0.707 * math.log(factor) + 1) / (0.1 * 1.0 * math.log(factor) + 1)
    check_table(64, d, base, {"type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
                              "mscale": 0.707, "mscale_all_dim": 1.0}, expected, ratio)


def test_cos_sin_llama3():
    d, base = 128, 500000.0
    factor, low_ff, high_ff, orig = 8.0, 1.0, 4.0, 8192
    expected = []
    for f in default_inv_freq(d, base).tolist():
        wavelen = 2 * math.pi / f
        if wavelen < orig / high_ff:       # high frequency: unchanged
            expected.append(f)
        elif wavelen > orig / low_ff:      # low frequency: interpolated by 1 / factor
            expected.append(f / factor)
        else:                              # in between: smooth blend
            smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
            expected.append((1 - smooth) * f / factor + smooth * f)
    check_table(512, d, base, {"rope_type": "llama3", "factor": factor, "low_freq_factor": low_ff,
                               "high_freq_factor": high_ff, "original_max_position_embeddings": orig},
                torch.tensor(expected, dtype=torch.float64))


def test_module():
    rope = ek.nn.RotaryEmbedding(64, 32, base=500000.0, rotary_dim=32, interleaved=True)
    cos, sin = ek.rotary_cos_sin(32, 32, base=500000.0)
    assert torch.equal(rope.cos, cos) and "cos" not in rope.state_dict()
    q, k = torch.randn(2, 7, 4, 64), torch.randn(2, 7, 2, 64)
    torch.testing.assert_close(rope(q, k), ek.apply_rotary(q, k, cos, sin, interleaved=True))
    with pytest.raises(ValueError, match="q: expected head_dim 64"):
        rope(torch.randn(2, 7, 4, 32), torch.randn(2, 7, 2, 32))


def test_errors():
    q, k = torch.randn(2, 6, 4, 16), torch.randn(2, 6, 2, 16)
    cos, sin = table(8, 16)
    qp, kp = torch.randn(10, 4, 16), torch.randn(10, 2, 16)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    cases = [
        (dict(q=q.int()), TypeError, "q: expected dtype"),
        (dict(q=torch.randn(2, 6, 4, 15), k=torch.randn(2, 6, 2, 15), cos=cos[:, :7], sin=sin[:, :7]), ValueError,
         "q: head_dim must be even"),
        (dict(q=qp, k=kp), ValueError, r"q: expected \[batch, seqlen, heads, head_dim\]"),
        (dict(k=k.half()), TypeError, "k: expected dtype"),
        (dict(k=torch.randn(2, 5, 2, 16)), ValueError, "k: expected the tokens and head_dim of q"),
        (dict(cos=table(8, 18)[0], sin=table(8, 18)[1]), ValueError, "cos: expected"),
        (dict(cos=cos.double()), TypeError, "cos: expected dtype"),
        (dict(cos=cos[:0], sin=sin[:0]), ValueError, r"cos: expected \[max_positions >= 1"),
        (dict(sin=sin[:4]), ValueError, "sin: expected the shape"),
        (dict(cos=cos[:5], sin=sin[:5]), ValueError, "q: seqlen 6 exceeds the 5 positions"),
        (dict(position_ids=torch.zeros(2, 5, dtype=torch.long)), ValueError, "position_ids: expected shape"),
        (dict(position_ids=torch.zeros(2, 6)), TypeError, "position_ids: expected dtype"),
        (dict(position_ids=torch.full((2, 6), 8)), ValueError, r"position_ids: expected values in \[0, 8\)"),
        (dict(position_ids=torch.full((2, 6), -1)), ValueError, r"position_ids: expected values in \[0, 8\)"),
        (dict(q=qp, k=kp, cu_seqlens=cu.float()), TypeError, "cu_seqlens: expected dtype"),
        (dict(q=qp, k=kp, cu_seqlens=cu[:1]), ValueError, "cu_seqlens: expected"),
        (dict(q=qp, k=kp, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), ValueError,
         "cu_seqlens: expected non-decreasing offsets from 0 to the total length 10"),
        (dict(q=qp, k=kp, cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)), ValueError,
         "cu_seqlens: expected non-decreasing"),
        (dict(q=qp, k=kp, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32)), ValueError,
         "cu_seqlens: a sequence of 10 tokens exceeds the 8 positions"),
        (dict(interleaved=1), TypeError, "interleaved: expected a bool"),
        (dict(cos=cos.clone().requires_grad_()), ValueError, "cos: the cos/sin table gets no gradient"),
        (dict(backend="tpu"), ValueError, "backend: expected one of"),
    ]
    for kwargs, exc, msg in cases:
        for backend in ("reference", "cpu"):
            args = dict(q=q, k=k, cos=cos, sin=sin, backend=backend)
            args.update(kwargs)
            with pytest.raises(exc, match=msg):
                ek.apply_rotary(**args)
    leaf = torch.randn(2, 6, 2, 16, requires_grad=True)
    q_copy = q.clone()
    with pytest.raises(RuntimeError, match="k: a leaf tensor that requires grad cannot be rotated in place"):
        ek.apply_rotary(q_copy, leaf, cos, sin, inplace=True)
    assert torch.equal(q_copy, q), "nothing may be written before the error"
    scaling_cases = [
        (dict(scaling={"rope_type": "ntk"}), ValueError, r"scaling\['rope_type'\]: expected one of"),
        (dict(scaling={"rope_type": "yarn", "factor": 4.0}), ValueError, "needs 'original_max_position_embeddings'"),
        (dict(scaling={"rope_type": "linear", "factor": 0.0}), ValueError, r"scaling\['factor'\]"),
        (dict(scaling=[1]), TypeError, "scaling: expected None or a dict"),
    ]
    for kwargs, exc, msg in scaling_cases:
        with pytest.raises(exc, match=msg):
            ek.rotary_cos_sin(16, 8, **kwargs)
    with pytest.raises(ValueError, match="rotary_dim: expected an even integer"):
        ek.rotary_cos_sin(16, 7)
