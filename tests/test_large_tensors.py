"""Beyond int32: RMSNorm, softmax, cross-entropy and rotary on tensors of more than 2^31 elements.

An index computed as ``row * width`` in 32 bits wraps past 2^31 elements (Liger-Kernel issue 803): the first rows
come out right and the last ones read or write someone else's memory. So each test checks the *last* row (and the
first) of a tensor just over 2^31 elements against the reference on those rows alone.

- cpu backend: real tensors of 2^31 + 4096 bf16 elements (4 GiB each; the tests run one at a time and free them).
  The bulk is a constant fill (cheap); the first and last rows are random.
- cuda backend under the simulation: the same index math driven by strides instead of size — two rows 2^31 + 64
  elements apart in one (lazily allocated, mostly untouched) storage — since simulating half a million blocks would
  take hours. In-place variants (the cross-entropy gradient, rotary) cover the store side too.
- triton backend under the interpreter: strides just under 2^31 (i32 arguments) and an index taking their product
  past it (row, head or token 2 of a stride of 2^30 + 64), for every Triton op (see the section below).
Each needs ~9 GiB of memory; they are skipped, saying so, where the machine has less free.
"""
import pytest
import torch

import eurokernels as ek
from eurokernels import _backend
from conftest import backends_for

BIG = 2 ** 31
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _free_gib():
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2 ** 20


needs_memory = pytest.mark.skipif(_free_gib() < 12, reason="needs ~12 GiB of free memory for 4 GiB tensors")
sim = pytest.mark.skipif("cuda" not in backends_for("cpu", "rms_norm"),
                         reason="the CUDA simulation is not enabled or not built")


def _big_rows(width, dtype=torch.bfloat16):
    """A [rows, width] tensor with rows * width just over 2^31, filled with 1 except random first and last rows."""
    rows = BIG // width + 1
    x = torch.empty(rows, width, dtype=dtype)
    x[1:-1].fill_(1.0)
    x[0], x[-1] = torch.randn(width).to(dtype), (torch.randn(width) * 3).to(dtype)
    assert x.numel() > BIG
    return x


def _ends(t):
    return torch.stack([t[0], t[-1]])


def _strided_pair(width, dtype=torch.bfloat16):
    """Two rows of ``width`` whose second starts 2^31 + 64 elements after the first (row stride past int32)."""
    stride = BIG + 64
    storage = torch.empty(stride + width, dtype=dtype)  # untouched pages cost no memory
    x = storage.as_strided((2, width), (stride, 1))
    x.copy_(torch.randn(2, width).to(dtype))
    return x


@needs_memory
def test_rms_norm_cpu():
    x = _big_rows(4096)
    w = torch.randn(4096).to(torch.bfloat16)
    y = ek.rms_norm(x, w, backend="cpu")
    torch.testing.assert_close(_ends(y), ek.rms_norm(_ends(x), w, backend="reference"), rtol=0, atol=0)


@needs_memory
def test_softmax_cpu():
    x = _big_rows(8192)
    y = ek.log_softmax(x, backend="cpu")
    torch.testing.assert_close(_ends(y), ek.log_softmax(_ends(x), backend="reference"), rtol=2 ** -8, atol=1e-2)


@needs_memory
def test_cross_entropy_cpu_forward_and_inplace_backward():
    x = _big_rows(65536).requires_grad_()
    labels = torch.randint(0, 65536, (x.shape[0],))
    ends = _ends(x.detach()).clone().requires_grad_()
    loss, lse = ek.cross_entropy(x, labels, reduction="none", return_lse=True, inplace_backward=True, backend="cpu")
    want_loss, want_lse = ek.cross_entropy(ends, _ends(labels), reduction="none", return_lse=True,
                                           backend="reference")
    torch.testing.assert_close(_ends(lse), want_lse, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(_ends(loss), want_loss, rtol=1e-2, atol=1e-2)  # bf16 loss
    dloss = torch.zeros_like(loss)
    dloss[0], dloss[-1] = 1.0, -0.5
    loss.backward(dloss)
    want_loss.backward(torch.tensor([1.0, -0.5], dtype=want_loss.dtype))
    torch.testing.assert_close(_ends(x.grad), ends.grad, rtol=2 ** -8, atol=1e-6)


@needs_memory
def test_rotary_cpu_inplace():
    heads, d = 32, 128
    tokens = BIG // (heads * d) + 1
    q = torch.empty(1, tokens, heads, d, dtype=torch.bfloat16)
    q[:, 1:-1].fill_(1.0)
    q[:, 0], q[:, -1] = torch.randn(heads, d).to(q.dtype), torch.randn(heads, d).to(q.dtype)
    k = torch.randn(1, tokens, 1, d).to(torch.bfloat16)
    positions = (torch.arange(tokens) % 4096).view(1, tokens)
    cos, sin = ek.rotary_cos_sin(4096, d)
    ends_q, ends_k = q[:, [0, -1]].clone(), k[:, [0, -1]].clone()
    ek.apply_rotary(q, k, cos, sin, position_ids=positions, inplace=True, backend="cpu")
    want_q, want_k = ek.apply_rotary(ends_q, ends_k, cos, sin, position_ids=positions[:, [0, -1]],
                                     backend="reference")
    assert q.numel() > BIG
    torch.testing.assert_close(q[:, [0, -1]], want_q, rtol=0, atol=0)
    torch.testing.assert_close(k[:, [0, -1]], want_k, rtol=0, atol=0)


@sim
def test_cuda_kernels_row_offsets_past_int32():
    """The CUDA kernels' row offsets (row * row_stride) at 2^31 + 64 elements, under the simulation."""
    x = _strided_pair(1000)
    w = torch.randn(1000).to(torch.bfloat16)
    compact = x.contiguous()
    torch.testing.assert_close(ek.rms_norm(x, w, backend="cuda"), ek.rms_norm(compact, w, backend="cuda"),
                               rtol=0, atol=0)
    torch.testing.assert_close(ek.softmax(x, backend="cuda"), ek.softmax(compact, backend="cuda"), rtol=0, atol=0)

    labels = torch.tensor([3, 999])
    logits = _strided_pair(1000).requires_grad_()
    dense = logits.detach().contiguous().requires_grad_()
    loss = ek.cross_entropy(logits, labels, reduction="none", inplace_backward=True, backend="cuda")
    want = ek.cross_entropy(dense, labels, reduction="none", backend="cuda")
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    loss.backward(torch.tensor([1.0, -2.0]).to(loss.dtype))
    want.backward(torch.tensor([1.0, -2.0]).to(want.dtype))
    torch.testing.assert_close(logits.grad, dense.grad, rtol=0, atol=0)


@sim
def test_cuda_rotary_token_offsets_past_int32():
    """Rotary in place on q whose second token starts 2^31 + 64 elements after the first, under the simulation."""
    heads, d = 2, 64
    stride = BIG + 64
    storage = torch.empty(stride + heads * d, dtype=torch.bfloat16)
    q = storage.as_strided((1, 2, heads, d), (2 * stride, stride, d, 1))
    q.copy_(torch.randn(1, 2, heads, d).to(q.dtype))
    k = torch.randn(1, 2, 1, d).to(q.dtype)
    cos, sin = ek.rotary_cos_sin(16, d)
    want_q, want_k = ek.apply_rotary(q.contiguous(), k, cos, sin, backend="cuda")
    ek.apply_rotary(q, k, cos, sin, inplace=True, backend="cuda")
    torch.testing.assert_close(q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(k, want_k, rtol=0, atol=0)


# ---- triton backend under the interpreter: the same index math driven by strides --------------------------------
# The Triton kernels take their strides as i32 arguments when they fit (i64 otherwise), so a stride >= 2^31 alone
# would widen the product and hide an int32 index. These tests use strides just *under* 2^31 (or strides the kernel
# divides by ALIGN first) and an index that takes their product past it: row / head / token 2 of a stride of
# 2^30 + 64 starts 2^31 + 128 elements in. Each compares against a contiguous copy through the same kernels, exactly.

interp = pytest.mark.skipif(not _backend.triton_interpreter_enabled(),
                            reason="Triton's CPU interpreter is not enabled (TRITON_INTERPRET)")
lazy_memory = pytest.mark.skipif(_free_gib() < 6, reason="needs ~6 GiB of free memory to map a 4 GiB storage "
                                                          "(lazily allocated, mostly untouched)")
NEAR = 2 ** 30 + 64  # an i32 stride; index 2 times it is 2^31 + 128


def _lazy(shape, strides, dtype=torch.bfloat16, offset=0, storage=None):
    """A view of ``shape`` and ``strides`` into a (new, lazily allocated) storage, filled with random values."""
    if storage is None:
        storage = torch.empty(offset + sum((n - 1) * s for n, s in zip(shape, strides)) + 1, dtype=dtype)
    x = storage.as_strided(shape, strides, offset)
    x.copy_(torch.randn(shape).to(dtype))
    return x


def _grads(*ts):
    return [t.grad for t in ts]


@interp
@lazy_memory
def test_triton_rms_norm_and_softmax_rows_past_int32():
    """Row 2 of a row stride of 2^30 + 64 (int32 argument): forward and backward (which reads x with its stride)."""
    x = _lazy((3, 1000), (NEAR, 1)).requires_grad_()
    dense = x.detach().contiguous().requires_grad_()
    w = torch.randn(1000).to(torch.bfloat16).requires_grad_()
    dy = torch.randn(3, 1000).to(torch.bfloat16)
    for fn in (lambda t: ek.rms_norm(t, w, backend="triton"), lambda t: ek.softmax(t, backend="triton"),
               lambda t: ek.log_softmax(t, backend="triton")):
        y, want = fn(x), fn(dense)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        got_grads = torch.autograd.grad(y, (x,), dy)
        want_grads = torch.autograd.grad(want, (dense,), dy)
        torch.testing.assert_close(got_grads, want_grads, rtol=0, atol=0)


@interp
@lazy_memory
def test_triton_cross_entropy_rows_past_int32():
    logits = _lazy((3, 1000), (NEAR, 1)).requires_grad_()
    dense = logits.detach().contiguous().requires_grad_()
    labels = torch.tensor([3, 500, 999])
    loss = ek.cross_entropy(logits, labels, reduction="none", inplace_backward=True, backend="triton")
    want = ek.cross_entropy(dense, labels, reduction="none", backend="triton")
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    dloss = torch.tensor([1.0, -2.0, 0.5]).to(loss.dtype)
    loss.backward(dloss)
    want.backward(dloss)
    torch.testing.assert_close(logits.grad, dense.grad, rtol=0, atol=0)


@interp
@lazy_memory
def test_triton_swiglu_rows_past_int32():
    """gate and up (and a fused [rows, 2N] projection) with row strides of 2^30 + 64, forward and backward."""
    n = 300
    storage = torch.empty(2 * NEAR + 2 * n, dtype=torch.bfloat16)
    gate = _lazy((3, n), (NEAR, 1), storage=storage).requires_grad_()
    up = _lazy((3, n), (NEAR, 1), offset=n, storage=storage).requires_grad_()
    fused = _lazy((3, 2 * n), (NEAR, 1), storage=torch.empty(2 * NEAR + 2 * n, dtype=torch.bfloat16))
    fused.requires_grad_()
    dy = torch.randn(3, n).to(torch.bfloat16)
    for args in ((gate, up), (fused, None)):
        dense = [a.detach().contiguous().requires_grad_() if a is not None else None for a in args]
        y = ek.swiglu(*args, backend="triton")
        want = ek.swiglu(*dense, backend="triton")
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        inputs = [a for a in args if a is not None]
        got = torch.autograd.grad(y, inputs, dy)
        expect = torch.autograd.grad(want, [a for a in dense if a is not None], dy)
        torch.testing.assert_close(got, expect, rtol=0, atol=0)


@interp
@lazy_memory
@pytest.mark.parametrize("head_dim", [64, 36])  # ALIGN 8 (strides passed / 8) and ALIGN 1
def test_triton_rotary_head_offsets_past_int32(head_dim):
    """q's head 2 starts 2^31 + 128 elements in (head stride 2^30 + 64: a head index times an int32 stride);
    in place and out of place."""
    stride = NEAR if head_dim % 8 == 0 else NEAR + 1  # ALIGN 1: a stride that is not a multiple of 8
    cos, sin = ek.rotary_cos_sin(16, head_dim)
    q = _lazy((1, 1, 3, head_dim), (3 * stride, 3 * stride, stride, 1))
    k = torch.randn(1, 1, 1, head_dim).to(q.dtype)
    want_q, want_k = ek.apply_rotary(q.contiguous(), k, cos, sin, backend="triton")
    got_q, got_k = ek.apply_rotary(q, k, cos, sin, backend="triton")
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)
    ek.apply_rotary(q, k, cos, sin, inplace=True, backend="triton")
    torch.testing.assert_close(q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(k, want_k, rtol=0, atol=0)


@interp
@lazy_memory
def test_triton_rotary_token_offsets_past_int32():
    """Token stride 2^31 + 64: an i64 argument, but the kernel gets it divided by ALIGN = 8 (2^28 + 8, an i32) and
    multiplies it back; that product must not be formed in int32. In place, as in the cuda test above."""
    heads, d = 2, 64
    q = _lazy((1, 2, heads, d), (2 * (BIG + 64), BIG + 64, d, 1))
    k = torch.randn(1, 2, 1, d).to(q.dtype)
    cos, sin = ek.rotary_cos_sin(16, d)
    want_q, want_k = ek.apply_rotary(q.contiguous(), k, cos, sin, backend="triton")
    ek.apply_rotary(q, k, cos, sin, inplace=True, backend="triton")
    torch.testing.assert_close(q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(k, want_k, rtol=0, atol=0)


@interp
@lazy_memory
def test_triton_attention_token_offsets_past_int32():
    """The attention op passes q/k/v token and head strides through (it copies only a non-unit stride along
    head_dim): token 2 of a token stride of 2^30 + 64 starts 2^31 + 128 elements in, for q, k and v (one storage,
    interleaved), forward and backward (fp16: the interpreter's bf16 tl.dot is wrong, see test_attention.py)."""
    heads, d = 2, 16
    storage = torch.empty(2 * NEAR + 3 * heads * d, dtype=torch.float16)
    q, k, v = (_lazy((1, 3, heads, d), (3 * NEAR, NEAR, d, 1), offset=i * heads * d, storage=storage)
               for i in range(3))
    qkv = [t.requires_grad_() for t in (q, k, v)]
    dense = [t.detach().contiguous().requires_grad_() for t in qkv]
    out = ek.attention(*qkv, causal=True, backend="triton")
    want = ek.attention(*dense, causal=True, backend="triton")
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    dout = torch.randn(out.shape).to(out.dtype)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, dout), torch.autograd.grad(want, dense, dout),
                               rtol=0, atol=0)


@interp
@lazy_memory
def test_triton_attention_head_offsets_past_int32():
    """q's head 2 starts 2^31 + 128 elements in (head stride 2^30 + 64; GQA: 3 query heads on one kv head),
    forward and backward. (lse, delta and the outputs are the kernels' own contiguous tensors: their head x
    total_q and token x heads x head_dim products are bounded by a tensor that exists.)"""
    d = 16
    q = _lazy((1, 2, 3, d), (3 * NEAR, d, NEAR, 1), dtype=torch.float16).requires_grad_()
    k, v = (torch.randn(1, 2, 1, d).to(torch.float16).requires_grad_() for _ in range(2))
    dense = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    out = ek.attention(q, k, v, backend="triton")
    want = ek.attention(*dense, backend="triton")
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    dout = torch.randn(out.shape).to(out.dtype)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), dout), torch.autograd.grad(want, dense, dout),
                               rtol=0, atol=0)
