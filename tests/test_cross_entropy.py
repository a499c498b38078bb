"""Cross-entropy: every backend against fp64 truth built from PyTorch's own F.cross_entropy, options and their
combinations, invariants, autograd, compile, bad input. (Linear cross-entropy: test_linear_cross_entropy.py;
vocab-parallel: test_vocab_parallel.py.)"""
import pytest
import torch
import torch.nn.functional as F

import eurokernels as ek
from eurokernels import reference as ref
from tolerances import assert_within_torch_error

OP = "cross_entropy"  # the op family in eurokernels/manifest.py: which backends the `backend` tests run

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
IGNORE = -100
# Vocabulary sizes: 1 and 7 (below the CPU vector width and the smallest Triton block), 4096 (one full block),
# 8193 (one past the largest Triton block of 8192: a looped row with a one-element tail; also a non-multiple of the
# CPU kernel's 2048 block), 128000 and 256000 (real vocabularies, many blocks).
VOCABS = [1, 7, 4096, 8193, 128000, 256000]


def rows_for(v):
    return 5 if v <= 8193 else 2  # keep the interpreter short on the largest rows


def make(rows, v, dtype, device, *, ignore=(1,), scale=3.0):
    logits = (torch.randn(rows, v, device=device) * scale).to(dtype)
    labels = torch.randint(0, v, (rows,), device=device)
    for i in ignore:
        if i < rows:
            labels[i] = IGNORE
    return logits, labels


def truth(logits, labels, *, label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="none", dlse_weight=None):
    """The loss from PyTorch's own functions on ``logits`` (any dtype, computed in that dtype): F.cross_entropy on
    the (capped) logits plus the z-loss term. Used in fp64 as the truth and in the low dtype as the yardstick."""
    z = softcap * torch.tanh(logits / softcap) if softcap else logits
    loss = F.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                           label_smoothing=label_smoothing, reduction="none").view(labels.shape)
    lse = torch.logsumexp(z, -1)
    if z_loss:
        loss = loss + z_loss * torch.where(labels != IGNORE, lse * lse, 0.0)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.sum() / (labels != IGNORE).sum().clamp(min=1)
    return loss, lse


def check_against_truth(logits, labels, backend, *, reduction="none", return_lse=False, factor=2.0, **opts):
    """Forward and backward of ek.cross_entropy vs fp64 truth, bounded by PyTorch's own error in logits' dtype."""
    x = logits.detach().clone().requires_grad_()
    out = ek.cross_entropy(x, labels, reduction=reduction, return_lse=return_lse, backend=backend, **opts)
    loss, lse = out if return_lse else (out, None)
    xt = logits.detach().double().requires_grad_()
    loss_t, lse_t = truth(xt, labels, reduction=reduction, **opts)
    xp = logits.detach().clone().requires_grad_()
    loss_p, lse_p = truth(xp, labels, reduction=reduction, **opts)
    assert loss.dtype == logits.dtype and loss.shape == loss_t.shape
    name = f"{backend} {logits.dtype} V={logits.shape[-1]} {opts} {reduction}"
    # The loss is stored in the logits' dtype (as PyTorch does): allow its rounding on top of the bound.
    atol = 1e-5 * max(1.0, loss_t.abs().max().item()) + (loss_t.abs().max().item() * 2 ** -8
                                                         if logits.dtype != torch.float32 else 0.0)
    assert_within_torch_error(loss, loss_t, loss_p, factor=factor, atol=atol, name=f"loss ({name})")
    g = torch.randn_like(loss_t)
    terms_t, terms, terms_p = [(loss_t * g).sum()], [(loss.double() * g).sum()], [(loss_p.double() * g).sum()]
    if return_lse:
        assert lse.dtype == torch.float32
        assert_within_torch_error(lse, lse_t, lse_p, factor=factor, name=f"lse ({name})")
        gl = torch.randn_like(lse_t)
        terms_t.append((lse_t * gl).sum())
        terms.append((lse.double() * gl).sum())
        terms_p.append((lse_p.double() * gl).sum())
    sum(terms_t).backward()
    sum(terms).backward()
    sum(terms_p).backward()
    assert_within_torch_error(x.grad, xt.grad, xp.grad, factor=factor,
                              atol=1e-5 * max(1.0, xt.grad.abs().max().item()), name=f"grad ({name})")
    return loss, x.grad


def assert_compiled_grads_match(compiled, eager, args, leaves):
    """Backward through ``compiled(*args)`` and ``eager(*args)``: the same gradients on every tensor in ``leaves``."""
    compiled(*args).backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    eager(*args).backward()
    for got, t in zip(grads, leaves):
        torch.testing.assert_close(got, t.grad)


def test_reference_matches_pytorch():
    logits, labels = make(6, 50, torch.float64, "cpu", ignore=(2,))
    for eps in (0.0, 0.1):
        loss, lse = ref.cross_entropy(logits, labels, IGNORE, eps)
        torch.testing.assert_close(loss, F.cross_entropy(logits, labels, ignore_index=IGNORE, label_smoothing=eps,
                                                         reduction="none"))
        torch.testing.assert_close(lse, torch.logsumexp(logits, -1))


# The largest vocabularies run in bf16 only (interpreter time); fp32 / fp16 at 8193 cover the looped path there.
CASES = [(v, d) for v in VOCABS for d in DTYPES if v <= 8193 or d == torch.bfloat16]


@pytest.mark.parametrize(("v", "dtype"), CASES, ids=[f"{v}-{d}" for v, d in CASES])
def test_forward_backward(device, backend, dtype, v):
    logits, labels = make(rows_for(v), v, dtype, device)
    check_against_truth(logits, labels, backend)


OPTION_SETS = [
    dict(label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(softcap=5.0),
    dict(label_smoothing=0.2, z_loss=1e-2, softcap=3.0),
]


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options(device, backend, opts, reduction):
    # 3-D logits with a ragged vocabulary (not a multiple of any block), ignored tokens, and the lse returned with
    # its own upstream gradient (the backward then carries both terms).
    logits, labels = make(6, 1000, torch.float32, device, ignore=(1, 4))
    check_against_truth(logits.view(2, 3, 1000), labels.view(2, 3), backend, reduction=reduction, return_lse=True,
                        **opts)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_options_low_precision(device, backend, dtype):
    logits, labels = make(4, 3000, dtype, device)
    check_against_truth(logits, labels, backend, reduction="mean", label_smoothing=0.1, z_loss=1e-3, softcap=20.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_ignored(device, backend, reduction):
    # Every token ignored: loss 0 and gradient 0, never NaN (PyTorch's mean gives NaN here).
    logits = torch.randn(3, 100, device=device, requires_grad=True)
    labels = torch.full((3,), IGNORE, device=device)
    loss = ek.cross_entropy(logits, labels, reduction=reduction, z_loss=1e-2, label_smoothing=0.1, backend=backend)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros_like(loss))
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_empty(device, backend):
    x = torch.randn(0, 10, device=device, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=device)
    loss = ek.cross_entropy(x, labels, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 10)
    assert ek.cross_entropy(x, labels, reduction="none", backend=backend).shape == (0,)
    assert ek.softmax(x, backend=backend).shape == (0, 10)


def test_custom_ignore_index_and_int32_labels(device, backend):
    logits, labels = make(5, 64, torch.float32, device, ignore=())
    labels[3] = 7
    expected = F.cross_entropy(logits, labels, ignore_index=7)
    got = ek.cross_entropy(logits, labels.int(), ignore_index=7, backend=backend)
    torch.testing.assert_close(got, expected)


def test_true_class_term_exact_bf16(device, backend):
    # A confident row: p_label ~ 1 - 1e-3. The gradient p - 1 must be formed in fp32 and rounded once (bf16 of
    # -1e-3 has 8 significant bits), not as round(p) - 1 (which is 0 or -2^-8).
    v = 512
    logits = torch.zeros(2, v, device=device)
    logits[:, 3] = 14.0
    labels = torch.tensor([3, 3], device=device)
    x = logits.to(torch.bfloat16).requires_grad_()
    ek.cross_entropy(x, labels, reduction="sum", backend=backend).backward()
    exact = torch.softmax(x.detach().double(), -1)[:, 3] - 1
    got = x.grad[:, 3].double()
    assert (got - exact).abs().max() <= 2 ** -8 * exact.abs().max(), (got, exact)
    # Negative control: the naive order (round the softmax to bf16, then subtract 1) fails the same bound.
    naive = (torch.softmax(x.detach().float(), -1).to(torch.bfloat16) - 1)[:, 3].double()
    assert (naive - exact).abs().max() > 2 ** -8 * exact.abs().max()


def test_inplace_backward(device, backend):
    logits, labels = make(4, 3000, torch.bfloat16, device)
    x0 = logits.clone().requires_grad_()
    ek.cross_entropy(x0, labels, backend=backend).backward()
    expected = x0.grad
    # The logits as an intermediate (the LM head's output): their storage becomes their gradient.
    src = logits.detach().clone().float().requires_grad_()
    x = src.to(torch.bfloat16)
    ek.cross_entropy(x, labels, inplace_backward=True, backend=backend).backward()
    assert torch.equal(x.detach(), expected), "the logits' storage must now hold their gradient"
    assert torch.equal(src.grad, expected.float())
    # Misuse is caught by autograd: another op saved the logits, the in-place backward overwrote them.
    y = logits.detach().clone().requires_grad_()
    z = y * 1.0
    other = (z * z).float().sum()  # mul saves z for its backward, which runs after the loss's
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (ek.cross_entropy(z, labels, inplace_backward=True, backend=backend) + other).backward()


def test_shift_invariance(device, backend):
    # Adding a constant to a row changes neither the loss (beyond the lse's own rounding) nor the gradient.
    logits, labels = make(4, 5000, torch.float32, device)
    a = ek.cross_entropy(logits, labels, reduction="none", backend=backend)
    b = ek.cross_entropy(logits + 100.0, labels, reduction="none", backend=backend)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_masked_vocabulary_minus_inf(device, backend):
    # Padded vocabulary entries set to -inf (a common trick) contribute nothing and get a zero gradient.
    logits, labels = make(3, 300, torch.float32, device, ignore=())
    labels = labels.clamp(max=199)
    x = logits.clone()
    x[:, 200:] = float("-inf")
    xg = x.clone().requires_grad_()
    loss = ek.cross_entropy(xg, labels, backend=backend)
    loss.backward()
    torch.testing.assert_close(loss, F.cross_entropy(logits[:, :200], labels))
    assert torch.equal(xg.grad[:, 200:], torch.zeros_like(xg.grad[:, 200:]))


def test_strided_logits(device, backend):
    base = torch.randn(4, 2 * 700, device=device)
    labels = torch.randint(0, 700, (4,), device=device)
    for x in (base[:, :700], base[:, 700:], base[:, ::2]):
        torch.testing.assert_close(ek.cross_entropy(x, labels, backend=backend), F.cross_entropy(x, labels))


def test_out_of_range_labels(device, backend):
    logits = torch.randn(3, 10, device=device)
    for bad in (10, -1):
        labels = torch.tensor([1, bad, 2], device=device)
        if device.type == "cpu" and backend in ("cpu", "reference"):
            with pytest.raises(ValueError, match="out of range"):
                ek.cross_entropy(logits, labels, backend=backend)
        else:  # documented GPU behaviour (no host sync): that token's loss and gradient row are NaN
            x = logits.clone().requires_grad_()
            loss = ek.cross_entropy(x, labels, reduction="none", backend=backend)
            loss.sum().backward()
            assert torch.isnan(loss[1]) and not torch.isnan(loss[[0, 2]]).any()
            assert torch.isnan(x.grad[1]).all() and not torch.isnan(x.grad[[0, 2]]).any()


def test_gradcheck_fp64_reference(device):
    x = torch.randn(4, 9, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.tensor([0, IGNORE, 8, 3], device=device)

    def fn(x):
        loss, lse = ek.cross_entropy(x, labels, label_smoothing=0.1, z_loss=0.05, softcap=2.0, return_lse=True,
                                     reduction="sum", backend="reference")
        return loss, lse

    assert torch.autograd.gradcheck(fn, (x,))


def test_gradcheck_kernels_fp32(device, backend):
    x = torch.randn(3, 16, device=device, requires_grad=True)
    labels = torch.tensor([1, 15, IGNORE], device=device)
    fn = lambda x: ek.cross_entropy(x, labels, label_smoothing=0.1, z_loss=0.01, softcap=4.0, return_lse=True,
                                    backend=backend)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-2, atol=2e-2, rtol=2e-2, fast_mode=True)


def test_opcheck(device, backend):
    x = torch.randn(5, 40, device=device, requires_grad=True)
    labels = torch.tensor([1, IGNORE, 39, 0, 7], device=device)
    opts = (IGNORE, 0.1, 1e-3, 4.0)
    torch.library.opcheck(torch.ops.eurokernels.cross_entropy.default, (x, labels, *opts, False, backend))
    lse = torch.logsumexp(4.0 * torch.tanh(x.detach() / 4.0), -1)
    dloss, dlse = torch.randn(5, device=device), torch.randn(5, device=device)
    torch.library.opcheck(torch.ops.eurokernels.cross_entropy_backward.default,
                          (dloss, dlse, x.detach(), labels, lse, *opts, 0, 40, backend))
    torch.library.opcheck(torch.ops.eurokernels.cross_entropy_backward_.default,
                          (dloss, None, x.detach().clone(), labels, lse, *opts, 0, 40, backend))


@pytest.mark.parametrize("inplace", [False, True])
def test_compile_fullgraph(device, backend, inplace):
    # No host sync anywhere: the whole step, with mean over non-ignored tokens and the lse, is one graph.
    head = torch.nn.Linear(32, 300, device=device)

    def step(h, labels):
        loss, lse = ek.cross_entropy(head(h), labels, z_loss=1e-3, return_lse=True, inplace_backward=inplace,
                                     backend=backend)
        return loss + 1e-3 * lse.sum()

    h = torch.randn(2, 5, 32, device=device, requires_grad=True)
    labels = torch.randint(0, 300, (2, 5), device=device)
    labels[0, 1] = IGNORE
    assert_compiled_grads_match(torch.compile(step, fullgraph=True, backend="aot_eager"), step, (h, labels),
                                (h, head.weight, head.bias))


def test_compile_inductor_cpu():
    # One end-to-end inductor compile (slow on CPU, so once): the ops stay opaque calls; the in-place backward's
    # mutation is functionalized and re-inplaced by inductor; the grad_in_forward op compiles too.
    head = torch.nn.Linear(32, 300)
    lce = ek.nn.LinearCrossEntropyLoss(32, 300, grad_in_forward=True)
    h = torch.randn(8, 32, requires_grad=True)
    labels = torch.randint(0, 300, (8,))

    def step(h):
        return ek.cross_entropy(head(h), labels, z_loss=1e-3, inplace_backward=True) + lce(h, labels)

    assert_compiled_grads_match(torch.compile(step, fullgraph=True), step, (h,), (h, head.weight, lce.weight))


def test_module_matches_pytorch(device, backend):
    logits, labels = make(6, 77, torch.float32, device)
    ours = ek.nn.CrossEntropyLoss(label_smoothing=0.1, backend=backend)
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    torch.testing.assert_close(ours(logits, labels), theirs(logits, labels))


def test_int64_indexing_beyond_2_31():
    # rows * V > 2^31 elements (cpu backend; the Triton and CUDA kernels use the same int64 row offsets and are
    # checked at this size by the GPU twin below). The in-place backward keeps the memory at one copy (4.3 GB).
    v = 262144
    rows = (1 << 31) // v + 2
    x = torch.zeros(rows, v, dtype=torch.bfloat16)
    x[-2:] = torch.randn(2, v, dtype=torch.bfloat16)
    labels = torch.full((rows,), IGNORE)
    labels[-2:] = torch.tensor([5, v - 1])
    tail = x[-2:].clone().requires_grad_()  # the same rows on their own: int32 offsets suffice there
    expected = ek.cross_entropy(tail, labels[-2:], reduction="sum", backend="cpu")
    expected.backward()
    t = truth(tail.detach().double(), labels[-2:], reduction="sum")[0].item()
    assert abs(expected.item() - t) <= 2 ** -8 * abs(t)  # the loss is stored in bf16
    xg = x.requires_grad_()
    loss = ek.cross_entropy(xg, labels, reduction="sum", inplace_backward=True, backend="cpu")
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=0, rtol=0)
    torch.testing.assert_close(xg.grad[-2:], tail.grad, atol=0, rtol=0)
    assert not torch.any(xg.grad[:-2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU with >= 12 GB")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_int64_indexing_beyond_2_31_gpu(backend):
    v = 262144
    rows = (1 << 31) // v + 2
    x = torch.zeros(rows, v, dtype=torch.bfloat16, device="cuda")
    x[-2:] = torch.randn(2, v, dtype=torch.bfloat16, device="cuda")
    labels = torch.full((rows,), IGNORE, device="cuda")
    labels[-2:] = torch.tensor([5, v - 1], device="cuda")
    xg = x.requires_grad_()
    loss = ek.cross_entropy(xg, labels, reduction="sum", inplace_backward=True, backend=backend)
    loss.backward()
    expected = ek.cross_entropy(x[-2:].detach().clone().requires_grad_(), labels[-2:], reduction="sum",
                                backend="reference")
    torch.testing.assert_close(loss, expected, atol=1e-2, rtol=1e-3)


def test_errors(monkeypatch):
    monkeypatch.delenv("EUROKERNELS_CUDA_SIM", raising=False)  # without the simulation, cuda on CPU is an error
    x = torch.randn(4, 16)
    y = torch.randint(0, 16, (4,))
    cases = [
        (dict(logits=x.int(), labels=y), TypeError, "logits: expected dtype"),
        (dict(logits=x, labels=y.float()), TypeError, "labels: expected dtype"),
        (dict(logits=x, labels=y[:3]), ValueError, "labels: expected shape"),
        (dict(logits=x[:, :0], labels=y), ValueError, "logits: expected at least one class"),
        (dict(logits=x, labels=y, label_smoothing=1.5), ValueError, "label_smoothing: expected a number in"),
        (dict(logits=x, labels=y, z_loss=-1.0), ValueError, "z_loss: expected a number >= 0"),
        (dict(logits=x, labels=y, softcap=0.0), ValueError, "softcap: expected a positive number"),
        (dict(logits=x, labels=y, reduction="avg"), ValueError, "reduction: expected one of"),
        (dict(logits=x, labels=y, ignore_index=1.5), TypeError, "ignore_index: expected an int"),
        (dict(logits=x, labels=y.to("meta")), ValueError, "labels: expected a tensor on cpu"),
        (dict(logits=x, labels=y, backend="cuda"), ValueError, "backend 'cuda' needs CUDA tensors"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ek.cross_entropy(**kwargs)


# --- per-token weights and the loss dtype (shared by every loss op: eurokernels/ops/_ce_core.py) ------------------

def weighted_truth(logits, labels, weights, reduction):
    """fp64: each non-ignored token's loss times its weight; "mean" divides by the sum of those weights."""
    rows = F.cross_entropy(logits.double(), labels, ignore_index=IGNORE, reduction="none")
    w = torch.where(labels != IGNORE, weights.double(), 0.0)
    if reduction == "none":
        return rows * w
    return (rows * w).sum() / (w.sum() if reduction == "mean" else 1.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_token_weights(device, backend, reduction):
    logits, labels = make(9, 300, torch.float32, device, ignore=(1, 4))
    weights = torch.rand(9, device=device) + 0.25
    weights[4] = float("nan")  # an ignored token's weight never matters
    x = logits.clone().requires_grad_()
    loss = ek.cross_entropy(x, labels, reduction=reduction, token_weights=weights, backend=backend)
    xt = logits.double().requires_grad_()
    expected = weighted_truth(xt, labels, weights, reduction)
    upstream = torch.rand_like(expected)
    (loss * upstream.float()).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xt.grad, rtol=1e-4, atol=1e-6)
    # Unit weights are the unweighted loss; all-ignored with "mean" is 0 with a zero gradient, never NaN.
    ones = ek.cross_entropy(logits, labels, reduction=reduction, token_weights=torch.ones(9, device=device),
                            backend=backend)
    torch.testing.assert_close(ones, ek.cross_entropy(logits, labels, reduction=reduction, backend=backend))
    x = logits.clone().requires_grad_()
    none = ek.cross_entropy(x, torch.full_like(labels, IGNORE), token_weights=weights, backend=backend)
    none.backward()
    assert none.item() == 0 and (x.grad == 0).all()


def test_loss_dtype(device, backend):
    logits, labels = make(6, 500, torch.bfloat16, device)
    default = ek.cross_entropy(logits, labels, backend=backend)
    fp32 = ek.cross_entropy(logits, labels, loss_dtype=torch.float32, backend=backend)
    assert default.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    assert fp32.bfloat16() == default  # one value, rounded once
    torch.testing.assert_close(fp32.double(), truth(logits.double(), labels, reduction="mean")[0], rtol=2e-6,
                               atol=0)


def test_weighting_errors(device):
    logits, labels = make(4, 10, torch.float32, device)
    with pytest.raises(ValueError, match="token_weights: expected shape"):
        ek.cross_entropy(logits, labels, token_weights=torch.ones(5, device=device))
    with pytest.raises(TypeError, match="token_weights"):
        ek.cross_entropy(logits, labels, token_weights=torch.ones(4, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="loss_dtype"):
        ek.cross_entropy(logits, labels, loss_dtype=torch.float16)
    with pytest.raises(ValueError, match="token_weights"):
        ek.linear_cross_entropy(torch.randn(4, 3, device=device), torch.randn(10, 3, device=device), labels,
                                token_weights=torch.ones(2, device=device))


def test_nan_logit_gives_nan_loss(device, backend):
    # As torch: a NaN logit makes its row's loss NaN (301 fp32 classes: one per thread on the cuda backend, the NaN
    # alone in thread 3's chunk), and leaves the other rows alone.
    x = torch.randn(2, 301, device=device)
    x[0, 3] = float("nan")
    labels = torch.tensor([7, 9], device=device)
    loss = ek.cross_entropy(x, labels, reduction="none", backend=backend)
    assert torch.isnan(loss[0]), f"{backend}: finite loss {loss[0].item()} for a row holding NaN"
    torch.testing.assert_close(loss[1], F.cross_entropy(x[1:], labels[1:], reduction="none")[0])
