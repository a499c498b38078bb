"""linear_cross_entropy (the LM head + loss, logits never materialized): every backend against fp64 truth from
F.linear + F.cross_entropy, chunk sizes, the grad_in_forward path, low precision, memory bounded by the chunk,
autograd, compile, bad input. Helpers shared with the cross-entropy tests come from test_cross_entropy.py."""
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import eurokernels as ek
from eurokernels import _ext
from test_cross_entropy import DTYPES, IGNORE, assert_compiled_grads_match, truth
from tolerances import assert_within_torch_error

OP = "linear_cross_entropy"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run


def linear_truth(h, w, b, labels, reduction, **opts):
    return truth(F.linear(h, w, b), labels, reduction=reduction, **opts)[0]


@pytest.mark.parametrize("chunk_size", [None, (16, 40), 48], ids=["default", "16x40", "v48"])
@pytest.mark.parametrize("case", [
    dict(reduction="mean"),
    dict(reduction="none", bias=True),
    dict(reduction="sum", label_smoothing=0.1, z_loss=1e-2, softcap=4.0, bias=True),
], ids=["mean", "none-bias", "sum-all-options"])
def test_linear_cross_entropy(device, backend, case, chunk_size):
    # Several tiles in both directions, ragged tails (29 tokens, 100 classes), ignored tokens, 3-D hidden.
    case = dict(case)
    use_bias, reduction = case.pop("bias", False), case.pop("reduction")
    n, hdim, v = 29, 24, 100
    h = torch.randn(n, hdim, device=device)
    w = torch.randn(v, hdim, device=device) * 0.3
    b = torch.randn(v, device=device) if use_bias else None
    labels = torch.randint(0, v, (n,), device=device)
    labels[[0, 5]] = IGNORE
    ins = [t.clone().requires_grad_() for t in (h, w, b) if t is not None]
    loss = ek.linear_cross_entropy(ins[0].view(1, n, hdim), ins[1], labels.view(1, n),
                                   bias=ins[2] if use_bias else None, reduction=reduction, chunk_size=chunk_size,
                                   backend=backend, **case)
    tru = [t.double().requires_grad_() for t in (h, w, b) if t is not None]
    loss_t = linear_truth(tru[0], tru[1], tru[2] if use_bias else None, labels, reduction, **case)
    torch.testing.assert_close(loss.double().view_as(loss_t), loss_t, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(loss_t)
    (loss.double().view_as(loss_t) * g).sum().backward()
    (loss_t * g).sum().backward()
    for name, got, t in zip(("d_hidden", "d_weight", "d_bias"), ins, tru):
        torch.testing.assert_close(got.grad.double(), t.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("token_chunk", [8, 64])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_grad_in_forward(device, backend, reduction, token_chunk):
    # The 3-matmul path: gradients computed in the forward over token chunks (8: ragged, 29 tokens in 4 chunks,
    # d_weight accumulated in fp32; 64: one chunk, d_weight one matmul), scaled in the backward by a non-unit
    # upstream gradient.
    n, hdim, v = 29, 24, 100
    h = torch.randn(n, hdim, device=device)
    w = torch.randn(v, hdim, device=device) * 0.3
    b = torch.randn(v, device=device)
    labels = torch.randint(0, v, (n,), device=device)
    labels[[0, 5]] = IGNORE
    opts = dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0)
    ins = [t.clone().requires_grad_() for t in (h, w, b)]
    loss = ek.linear_cross_entropy(ins[0], ins[1], labels, bias=ins[2], reduction=reduction,
                                   chunk_size=(token_chunk, 16), grad_in_forward=True, backend=backend, **opts)
    assert "grad_in_forward" in type(loss.grad_fn).__name__  # the path under test actually ran
    tru = [t.double().requires_grad_() for t in (h, w, b)]
    loss_t = linear_truth(*tru, labels, reduction, **opts)
    torch.testing.assert_close(loss.double(), loss_t, atol=1e-5, rtol=1e-5)
    (loss * 2.5).backward()
    (loss_t * 2.5).backward()
    for name, got, t in zip(("d_hidden", "d_weight", "d_bias"), ins, tru):
        torch.testing.assert_close(got.grad.double(), t.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_weight_gradient_accumulation(dtype):
    # The cpu backend's one-pass fp32 accumulation of d_weight over token chunks (csrc accumulate_cpu.cpp):
    # acc += part exactly in fp32, and the last chunk's out = round(acc + part), one rounding. CPU-only by nature.
    acc = torch.randn(1000, 37)
    part = torch.randn(1000, 37).to(dtype)
    out = torch.empty(1000, 37, dtype=dtype)
    _ext.cpu().accumulate(acc.clone(), part, out)
    torch.testing.assert_close(out, (acc + part.float()).to(dtype), atol=0, rtol=0)
    a = acc.clone()
    _ext.cpu().accumulate(a, part, None)
    torch.testing.assert_close(a, acc + part.float(), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="same shape"):
        _ext.cpu().accumulate(acc, part[:10], None)


def test_linear_grad_in_forward_upstream_scaling(device):
    # The backward scales the forward's gradients by the upstream gradient with one rounding (on CPU one bf16
    # multiply read in fp32), and leaves the saved gradients intact for a second backward (retain_graph).
    h = torch.randn(12, 8, device=device).bfloat16().requires_grad_()
    w = torch.randn(30, 8, device=device).bfloat16().requires_grad_()
    labels = torch.randint(0, 30, (12,), device=device)
    loss = ek.linear_cross_entropy(h, w, labels, grad_in_forward=True)
    (loss.float() * 3.0).backward(retain_graph=True)
    g3 = h.grad.clone()
    h.grad = None
    (loss.float() * 0.75).backward()  # (a bf16 loss receives a bf16 gradient: use factors bf16 holds)
    unit = torch.autograd.grad(ek.linear_cross_entropy(h, w, labels, grad_in_forward=True), h)[0]
    torch.testing.assert_close(g3, (unit.float() * 3.0).bfloat16(), atol=0, rtol=0)
    torch.testing.assert_close(h.grad, (unit.float() * 0.75).bfloat16(), atol=0, rtol=0)


def test_linear_grad_in_forward_unit_gradient_uncopied():
    # A unit upstream gradient in a backward that frees the graph hands the stored gradients over without a copy
    # (no [V, H] allocation in the backward); with retain_graph they are copied, so repeated backwards accumulate
    # correctly and never see a gradient mutated by .grad accumulation; the results carry no graph.
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(1000, 32, requires_grad=True)
    y = torch.randint(0, 1000, (64,))
    loss = ek.linear_cross_entropy(h, w, y, grad_in_forward=True)
    with Allocations() as back:
        loss.backward()
    assert back.largest < w.numel() * 4, back.largest
    once = w.grad.clone()
    assert not w.grad.requires_grad and w.grad.grad_fn is None
    w.grad = None
    loss = ek.linear_cross_entropy(h, w, y, grad_in_forward=True)
    for _ in range(2):
        loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(w.grad, 3 * once, atol=1e-6, rtol=1e-6)
    g = torch.autograd.grad(ek.linear_cross_entropy(h, w, y, grad_in_forward=True), w)[0]
    assert not g.requires_grad
    torch.testing.assert_close(g, once, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_linear_cross_entropy_low_precision(device, backend, dtype):
    # Against fp64 truth on the same low-precision inputs, bounded by F.linear + F.cross_entropy's own error in that
    # dtype (the logits are rounded per tile exactly as F.linear rounds them).
    n, hdim, v = 40, 64, 3000
    h = torch.randn(n, hdim, device=device).to(dtype)
    w = (torch.randn(v, hdim, device=device) * 0.2).to(dtype)
    labels = torch.randint(0, v, (n,), device=device)
    labels[3] = IGNORE
    ins = [t.clone().requires_grad_() for t in (h, w)]
    loss = ek.linear_cross_entropy(*ins, labels, chunk_size=(16, 1024), backend=backend, z_loss=1e-3)
    tru = [t.double().requires_grad_() for t in (h, w)]
    loss_t = linear_truth(*tru, None, labels, "mean", z_loss=1e-3)
    pt = [t.clone().requires_grad_() for t in (h, w)]
    loss_p = linear_truth(pt[0].float() if dtype == torch.float16 else pt[0],
                          pt[1].float() if dtype == torch.float16 else pt[1], None, labels, "mean", z_loss=1e-3)
    atol = loss_t.abs().item() * 2 ** -7
    assert_within_torch_error(loss, loss_t, loss_p, factor=2.0, atol=atol, name="loss")
    for t in (loss, loss_t, loss_p):
        t.backward()
    for name, got, t, p in zip(("d_hidden", "d_weight"), ins, tru, pt):
        assert_within_torch_error(got.grad, t.grad, p.grad, factor=2.0, atol=1e-3 * t.grad.abs().max().item(),
                                  name=name)


def record_matmul_dtypes(monkeypatch):
    """The operand dtypes of every torch.mm / torch.addmm called from here on (the tiling engine calls them from
    inside the custom op, where a dispatch mode entered outside does not see them)."""
    seen = set()
    for name in ("mm", "addmm"):
        def wrapped(*args, _real=getattr(torch, name), **kwargs):
            seen.update(a.dtype for a in args if isinstance(a, torch.Tensor) and a.dim() == 2)
            return _real(*args, **kwargs)
        monkeypatch.setattr(torch, name, wrapped)
    return seen


@pytest.mark.parametrize("grad_in_forward", [False, True], ids=["tiled", "grad_in_forward"])
@pytest.mark.parametrize("gemm", ["native", "fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_16bit_gemm_paths(monkeypatch, dtype, gemm, grad_in_forward):
    # On a CPU without native 16-bit GEMMs (no AMX: AVX2 machines run torch's bf16 matmul 8x slower than fp32,
    # 300x at oneDNN's AVX2 level) the cpu backend's matmuls run on fp32 copies of the 16-bit tiles. Both paths,
    # forced through the override whatever this CPU has: the path asked for is the one that runs (the matmuls'
    # operand dtypes), and each stays within 2x PyTorch's own low-precision error (several token chunks, so the
    # fp32 d_weight accumulation runs too).
    from eurokernels.ops import _ce_tiling
    monkeypatch.setenv(_ce_tiling.GEMM_ENV, gemm)
    n, hdim, v = 40, 64, 3000
    h = torch.randn(n, hdim).to(dtype)
    w = (torch.randn(v, hdim) * 0.2).to(dtype)
    b = torch.randn(v).to(dtype)
    labels = torch.randint(0, v, (n,))
    labels[3] = IGNORE
    ins = [t.clone().requires_grad_() for t in (h, w, b)]
    seen = record_matmul_dtypes(monkeypatch)
    loss = ek.linear_cross_entropy(*ins[:2], labels, bias=ins[2], chunk_size=(16, 1024), backend="cpu",
                                   grad_in_forward=grad_in_forward)
    loss.backward()
    monkeypatch.undo()  # the truth below runs its own matmuls
    assert seen == ({dtype} if gemm == "native" else {torch.float32}), seen
    tru = [t.double().requires_grad_() for t in (h, w, b)]
    loss_t = linear_truth(*tru, labels, "mean")
    loss_t.backward()
    pt = [t.clone().requires_grad_() for t in (h, w, b)]
    loss_p = linear_truth(*(t.float() if dtype == torch.float16 else t for t in pt), labels, "mean")
    loss_p.backward()
    assert_within_torch_error(loss.double(), loss_t, loss_p.double(), factor=2.0,
                              atol=loss_t.abs().item() * 2 ** -7, name="loss")
    for name, got, t, p in zip(("d_hidden", "d_weight", "d_bias"), ins, tru, pt):
        assert_within_torch_error(got.grad.double(), t.grad, p.grad.double(), factor=2.0,
                                  atol=t.grad.abs().max().item() * 2 ** -7, name=name)


def test_cpu_16bit_gemm_choice(monkeypatch):
    # Native 16-bit GEMMs only where oneDNN may use AMX for the dtype: capping its ISA (as the AVX2 emulation of
    # tests/test_cpu_isa.py does) turns them off; the override wins, and a bad override value is refused.
    from eurokernels.ops import _ce_tiling
    monkeypatch.delenv(_ce_tiling.GEMM_ENV, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not _ce_tiling.cpu_gemm16_native(torch.bfloat16)
    assert not _ce_tiling.cpu_gemm16_native(torch.float16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert _ce_tiling.cpu_gemm16_native(torch.bfloat16) == torch.cpu._is_amx_tile_supported()
    monkeypatch.setenv(_ce_tiling.GEMM_ENV, "native")
    assert _ce_tiling.cpu_gemm16_native(torch.bfloat16)
    monkeypatch.setenv(_ce_tiling.GEMM_ENV, "fast")
    with pytest.raises(ValueError, match=_ce_tiling.GEMM_ENV):
        _ce_tiling.cpu_gemm16_native(torch.bfloat16)


class LiveMemory(TorchDispatchMode):
    """Peak bytes of live tensors created by the PyTorch ops run inside the block (storages, each counted once)."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak, self.largest = {}, 0, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if size and key not in self.live:
                    self.live[key] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    self.largest = max(self.largest, size)
                    weakref.finalize(t, self._free, key)
        return out


class Allocations(LiveMemory):
    """LiveMemory counting only ops that allocate (a view or detach of an existing tensor is not an allocation)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


def test_linear_cross_entropy_memory_bounded_by_chunk():
    # The op's cpu implementation (the same code the registered op runs; a dispatch mode cannot look inside a
    # custom op) never holds more than a tile of logits; eager F.linear + F.cross_entropy holds several N x V.
    from eurokernels.ops import linear_cross_entropy as lce
    n, hdim, v = 512, 32, 16000
    tile = (128, 1024)
    h = torch.randn(n, hdim)
    w = torch.randn(v, hdim) * 0.1
    labels = torch.randint(0, v, (n,))
    opts = (IGNORE, 0.0, 0.0, 0.0)
    with LiveMemory() as ours:
        loss, lse = lce._FORWARD["cpu"](h, w, None, labels, *opts, *tile)
        grads = lce._BACKWARD["cpu"](torch.full((n,), 1.0 / n), None, h, w, None, labels, lse, *opts, *tile)
    nv_bytes = n * v * 4
    grad_bytes = (n * hdim + v * hdim) * 4  # the gradients themselves (outputs) + d_hidden's fp32 accumulator
    tile_bytes = tile[0] * tile[1] * 4
    assert ours.largest <= max(tile_bytes, n * hdim * 4, v * hdim * 4), ours.largest
    assert ours.peak <= 2 * tile_bytes + 2 * grad_bytes, (ours.peak, tile_bytes, grad_bytes)
    assert ours.peak < nv_bytes / 4
    # Negative control: the checker sees the eager path's N x V tensors.
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with LiveMemory() as eager:
        F.cross_entropy(F.linear(hh, ww), labels).backward()
    assert eager.peak >= 2 * nv_bytes
    # And the numbers agree.
    torch.testing.assert_close(grads[1], ww.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype,n,path", [
    (torch.float32, 29, "grad_in_forward"),   # fp32: 3 matmuls, d_weight accumulated in place over 4 chunks
    (torch.bfloat16, 29, "tiled"),            # 16-bit over several chunks would need an fp32 [V, H] accumulator
    (torch.bfloat16, 6, "grad_in_forward"),   # 16-bit tokens that fit in one chunk: nothing to accumulate
], ids=["fp32-chunks", "bf16-chunks", "bf16-one-chunk"])
def test_linear_automatic_mode(monkeypatch, device, backend, dtype, n, path):
    # The default (grad_in_forward=None) picks the path by the rule of the module docstring; shrunk chunk bounds
    # make the small case take several chunks. Results against fp64 truth either way.
    if backend == "reference":
        path = "tiled"  # the reference is the unchunked oracle: never the chunked 3-matmul path
    from eurokernels.ops import _ce_tiling
    v, hdim = 100, 24
    monkeypatch.setattr(_ce_tiling, "AUTO_TILE_BYTES", 8 * v * 4)  # 8 fp32 rows per chunk
    monkeypatch.setattr(_ce_tiling, "AUTO_MIN_TOKENS", 1)
    h = torch.randn(n, hdim, device=device).to(dtype)
    w = (torch.randn(v, hdim, device=device) * 0.3).to(dtype)
    b = torch.randn(v, device=device).to(dtype)
    labels = torch.randint(0, v, (n,), device=device)
    labels[1] = IGNORE
    ins = [t.clone().requires_grad_() for t in (h, w, b)]
    loss = ek.linear_cross_entropy(ins[0], ins[1], labels, bias=ins[2], backend=backend)
    assert ("grad_in_forward" in _autograd_nodes(loss)) == (path == "grad_in_forward"), _autograd_nodes(loss)
    tru = [t.double().requires_grad_() for t in (h, w, b)]
    loss_t = linear_truth(*tru, labels, "mean")
    (loss.double() * 1.5).backward()
    (loss_t * 1.5).backward()
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(loss.double(), loss_t, **tol)
    for name, got, t in zip(("d_hidden", "d_weight", "d_bias"), ins, tru):
        torch.testing.assert_close(got.grad.double(), t.grad, **tol, msg=name)
    # Per-token results and lse need the tiled path whatever the dtype.
    loss_none = ek.linear_cross_entropy(ins[0], ins[1], labels, reduction="none", backend=backend)
    assert "grad_in_forward" not in _autograd_nodes(loss_none)


def _autograd_nodes(t, depth=4):
    """The names of the autograd nodes within ``depth`` steps of t (a 16-bit loss ends in a cast node)."""
    names, frontier = [], [t.grad_fn]
    for _ in range(depth):
        frontier = [f for f in frontier if f is not None]
        names += [type(f).__name__ for f in frontier]
        frontier = [g for f in frontier for g, _ in f.next_functions]
    return " ".join(names)


def test_linear_automatic_mode_memory():
    # fp32 weights on the automatic path: d_weight accumulates in place over the token chunks, so beyond the
    # gradients themselves only a chunk of logits is live (the grad_in_forward=True path with 16-bit weights adds an
    # fp32 [V, H] buffer; here no tensor of that size but d_weight exists).
    from eurokernels.ops._ce_core import KERNELS
    from eurokernels.ops._ce_tiling import forward_with_grads
    n, hdim, v, chunk = 512, 32, 16000, 64
    h, w = torch.randn(n, hdim), torch.randn(v, hdim) * 0.1
    labels = torch.randint(0, v, (n,))
    ours = LiveMemory()
    ours.live.update({t.untyped_storage().data_ptr(): 0 for t in (h, w, labels)})  # inputs: views of them are free
    with ours:
        _, dh, dw, _ = forward_with_grads(KERNELS["cpu"], h, w, None, labels, (IGNORE, 0.0, 0.0, 0.0), chunk,
                                          torch.full((n,), 1.0 / n))
    grad_bytes, chunk_bytes = (n + v) * hdim * 4, chunk * v * 4
    assert ours.peak <= grad_bytes + chunk_bytes + 64 * 1024, (ours.peak, grad_bytes, chunk_bytes)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    F.cross_entropy(F.linear(hh, ww), labels).backward()
    torch.testing.assert_close(dw, ww.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(dh, hh.grad, atol=1e-6, rtol=1e-4)


def test_linear_gradcheck_fp64_reference(device):
    h = torch.randn(5, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(11, 6, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([0, IGNORE, 10, 3, 3], device=device)
    fn = lambda h, w, b: ek.linear_cross_entropy(h, w, labels, bias=b, label_smoothing=0.1, z_loss=0.05, softcap=2.0,
                                                 return_lse=True, backend="reference")
    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_linear_opcheck(device, backend):
    h = torch.randn(6, 8, device=device, requires_grad=True)
    w = torch.randn(20, 8, device=device, requires_grad=True)
    b = torch.randn(20, device=device, requires_grad=True)
    labels = torch.tensor([1, IGNORE, 19, 0, 7, 7], device=device)
    opts = (IGNORE, 0.1, 1e-3, 4.0, 4, 8)
    torch.library.opcheck(torch.ops.eurokernels.linear_cross_entropy.default, (h, w, b, labels, *opts, backend))
    torch.library.opcheck(torch.ops.eurokernels.linear_cross_entropy_grad_in_forward.default,
                          (h, w, b, labels, *opts[:-1], torch.full((6,), 0.2, device=device), backend))
    lse = torch.randn(6, device=device)
    torch.library.opcheck(torch.ops.eurokernels.linear_cross_entropy_backward.default,
                          (torch.randn(6, device=device), None, h.detach(), w.detach(), b.detach(), labels, lse,
                           *opts, backend))


@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_linear_compile_fullgraph(device, backend, grad_in_forward):
    head = ek.nn.LinearCrossEntropyLoss(16, 90, bias=True, z_loss=1e-3, chunk_size=(4, 32),
                                        grad_in_forward=grad_in_forward, backend=backend)
    head = head.to(device)
    h = torch.randn(3, 4, 16, device=device, requires_grad=True)
    labels = torch.randint(0, 90, (3, 4), device=device)
    assert_compiled_grads_match(torch.compile(head, fullgraph=True, backend="aot_eager"), head, (h, labels),
                                (h, head.weight, head.bias))
    expected = F.cross_entropy(F.linear(h, head.weight, head.bias).flatten(0, 1), labels.flatten(), reduction="none")
    expected = expected + 1e-3 * torch.logsumexp(F.linear(h, head.weight, head.bias), -1).flatten() ** 2
    torch.testing.assert_close(head(h, labels), expected.mean())


def test_linear_errors():
    h, w, y = torch.randn(4, 8), torch.randn(10, 8), torch.randint(0, 10, (4,))
    cases = [
        (dict(hidden=h, weight=w[:, :7], labels=y), ValueError, "weight: expected"),
        (dict(hidden=h, weight=w.double(), labels=y), TypeError, "weight: expected dtype"),
        (dict(hidden=h, weight=w, labels=y, bias=torch.randn(9)), ValueError, "bias: expected"),
        (dict(hidden=h, weight=w, labels=y[:3]), ValueError, "labels: expected shape"),
        (dict(hidden=h, weight=w, labels=y, chunk_size=0), ValueError, "chunk_size: expected"),
        (dict(hidden=h, weight=w, labels=y, reduction="avg"), ValueError, "reduction: expected one of"),
        (dict(hidden=h, weight=w, labels=y, grad_in_forward="yes"), TypeError, "grad_in_forward: expected"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ek.linear_cross_entropy(**kwargs)
    with pytest.raises(ValueError, match="out of range"):
        ek.linear_cross_entropy(h, w, torch.tensor([0, 1, 10, 2]), backend="cpu")


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_linear_token_weights(device, backend, reduction, grad_in_forward):
    # Both paths (tiled backward, and the gradients computed in the forward with the weights in the row scale)
    # against the fp64 formula on materialized logits; two token chunks on the grad_in_forward path.
    from test_cross_entropy import weighted_truth
    n, hdim, v = 10, 8, 37
    h = torch.randn(n, hdim, device=device)
    w = torch.randn(v, hdim, device=device) * 0.3
    labels = torch.randint(0, v, (n,), device=device)
    labels[[2, 7]] = IGNORE
    weights = torch.rand(n, device=device) * 2
    ins = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    loss = ek.linear_cross_entropy(*ins, labels, reduction=reduction, token_weights=weights, loss_dtype=torch.float32,
                                   chunk_size=(4, 16), grad_in_forward=grad_in_forward, backend=backend)
    ins_t = [h.double().requires_grad_(), w.double().requires_grad_()]
    expected = weighted_truth(ins_t[0] @ ins_t[1].t(), labels, weights, reduction)
    loss.backward()
    expected.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    for ours, ref_ in zip(ins, ins_t):
        torch.testing.assert_close(ours.grad.double(), ref_.grad, rtol=1e-4, atol=1e-5)
