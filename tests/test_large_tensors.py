"""Beyond int32: RMSNorm, softmax, cross-entropy and rotary on tensors of more than 2^31 elements.

An index computed as ``row * width`` in 32 bits wraps past 2^31 elements (Liger-Kernel issue 803): the first rows
come out right and the last ones read or write someone else's memory. So each test checks the *last* row (and the
first) of a tensor just over 2^31 elements against the reference on those rows alone.

- cpu backend: real tensors of 2^31 + 4096 bf16 elements (4 GiB each; the tests run one at a time and free them).
  The bulk is a constant fill (cheap); the first and last rows are random.
- cuda backend under the simulation: the same index math driven by strides instead of size — two rows 2^31 + 64
  elements apart in one (lazily allocated, mostly untouched) storage — since simulating half a million blocks would
  take hours. In-place variants (the cross-entropy gradient, rotary) cover the store side too.
Each needs ~9 GiB of memory; they are skipped, saying so, where the machine has less free.
"""
import pytest
import torch

import eurokernels as ek
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
