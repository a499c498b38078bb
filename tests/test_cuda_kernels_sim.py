"""The CUDA kernels under the simulation: what only the simulation can check. The same kernels' numerics run in the
op test files through the `cuda` backend; here: thread interleavings (a kernel must give one result under every
schedule), grid limits (rows past 2^32, grid-stride loops), the launch plans of the launchers, and the checks of
the CUDA entry points against those of the CPU ones.
"""
import pytest
import torch

import eurokernels as ek
from eurokernels import _ext, cuda_sim
from test_cross_entropy import IGNORE

pytestmark = pytest.mark.skipif(not cuda_sim.enabled(), reason="EUROKERNELS_CUDA_SIM=0: the simulation is off")

SCHEDULES = ["rr", "reverse", "seed:1", "seed:2"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_cross_entropy_gradient_in_place_of_the_logits(schedule):
    # linear_cross_entropy(grad_in_forward=True) has the kernel write the gradient over the logits in the forward
    # sweep: the target logit must be read before any thread of the block overwrites it, in every interleaving.
    n, hdim, v = 6, 16, 300
    h = torch.randn(n, hdim)
    w = torch.randn(v, hdim) * 0.3
    labels = torch.randint(0, v, (n,))
    labels[1] = IGNORE
    expected = ek.linear_cross_entropy(h, w, labels, reduction="sum", backend="reference")
    hs, ws = h.clone().requires_grad_(), w.clone().requires_grad_()
    with cuda_sim.schedule(schedule):
        loss = ek.linear_cross_entropy(hs, ws, labels, reduction="sum", grad_in_forward=True, backend="cuda")
        loss.backward()
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-5)
    ht, wt = h.clone().requires_grad_(), w.clone().requires_grad_()
    ek.linear_cross_entropy(ht, wt, labels, reduction="sum", backend="reference").backward()
    torch.testing.assert_close(hs.grad, ht.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ws.grad, wt.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_block_reductions_under_every_schedule(schedule):
    # The shared-memory reductions (block_sum, block_online_merge) and the row-chunked dw of the RMSNorm backward,
    # bitwise equal under every interleaving of the block's threads.
    x = torch.randn(5, 1000, dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(1000) + 0.5
    w.requires_grad_()
    labels = torch.randint(0, 1000, (5,))
    results = []
    for spec in ("rr", schedule):
        with cuda_sim.schedule(spec):
            y = ek.rms_norm(x, w, backend="cuda")
            loss = ek.cross_entropy(y, labels, backend="cuda")
            (gx, gw) = torch.autograd.grad(loss, (x, w))
            results.append((y, loss, gx, gw, ek.softmax(y, backend="cuda")))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_grid_stride_loops_when_rows_exceed_the_grid():
    # With the grid limit lowered to 3, 7 rows need the kernels' grid-stride loops: every row must be computed.
    x = torch.randn(7, 40)
    labels = torch.randint(0, 40, (7,))
    w = torch.rand(40) + 0.5
    with cuda_sim.max_grid_x(3), cuda_sim.launches() as log:
        y = ek.rms_norm(x, w, backend="cuda")
        loss = ek.cross_entropy(x, labels, reduction="none", backend="cuda")
        sm = ek.softmax(x, backend="cuda")
    assert all(r["grid"][0] <= 3 and not r["error"] for r in log), log
    torch.testing.assert_close(y, ek.rms_norm(x, w, backend="reference"))
    torch.testing.assert_close(loss, ek.cross_entropy(x, labels, reduction="none", backend="reference"))
    torch.testing.assert_close(sm, ek.softmax(x, backend="reference"))


@pytest.mark.parametrize("plan", ["plan_rms_norm_forward", "plan_cross_entropy"])
def test_grid_for_more_than_2_pow_32_rows(plan):
    # unsigned(rows) wraps: 2^32 + 5 rows would launch 5 blocks. A dry run (nothing executed) of the launcher.
    (launch,) = getattr(_ext.cuda_sim(), plan)(2**32 + 5, 64, 0)
    assert launch["error"] == "" and launch["grid"] == (2**31 - 1, 1, 1)



def test_cuda_entry_points_check_what_the_cpu_ones_check():
    # Internal contracts (the public ops validate first): a wrong call must fail by name, never read out of bounds
    # or leave outputs unwritten. Each case fails the same way on the cpu module.
    cpu, sim = _ext.cpu(), _ext.cuda_sim()
    x, w, rstd = torch.randn(3, 8), torch.randn(8), torch.ones(3)
    cases = [
        ("rms_norm_bwd", (x, x, w, rstd[:2], None, 0.0), "rstd must have 3 elements"),
        ("rms_norm_bwd", (x, x, w[:5], rstd, None, 0.0), r"weight must be \[8\]"),
        ("rms_norm_fwd", (x, w, None, 1e-6, 0.0, 7), "unknown casting mode 7"),
        ("cross_entropy_fwd_bwd", (x[:, :0], torch.full((3,), IGNORE), None, None, None, None, IGNORE, 0.0, 0.0, 0.0, 0, 0),
         "at least one class"),
    ]
    q, k = torch.randn(6, 2, 16, dtype=torch.bfloat16), torch.randn(6, 1, 16, dtype=torch.bfloat16)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    attn = (cu, cu, 6, 6, 0.25, -1, 0, 0.0)
    cases += [
        ("attention_fwd", (q, k[..., :8], k[..., :8], *attn), "head_dim must match"),
        ("attention_bwd", (q, q, k, k, q, torch.zeros(6, 2), *attn), r"lse must be \[hq, total_q\]"),
    ]
    for name, args, message in cases:
        for module in (cpu, sim):
            with pytest.raises(RuntimeError, match=message):
                getattr(module, name)(*args)
    # Only the cuda kernels take 16-bit inputs only (tensor cores): float32 is refused by name.
    with pytest.raises(TypeError, match="q must be float16 or bfloat16"):
        sim.attention_fwd(q.float(), k.float(), k.float(), *attn)
    # An empty hidden size: no kernel runs, and rstd is still written (1 / sqrt(eps)), as on CPU.
    empty = torch.randn(3, 0)
    torch.testing.assert_close(sim.rms_norm_fwd(empty, None, None, 1e-6, 0.0, 0)[2],
                               cpu.rms_norm_fwd(empty, None, None, 1e-6, 0.0, 0)[2])


def test_cuda_entry_points_refuse_tensors_on_another_device():
    # Raw pointers from another device would be read as if they were this one's (on a GPU: a second GPU).
    sim = _ext.cuda_sim()
    x, w, meta = torch.randn(3, 8), torch.randn(8), torch.device("meta")
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 3, 1, 8)
    cos, sin = torch.ones(4, 4), torch.zeros(4, 4)
    calls = [
        (lambda: sim.rms_norm_fwd(x, w.to(meta), None, 1e-6, 0.0, 0), "weight must be on x's device cpu, got meta"),
        (lambda: sim.rms_norm_bwd(x, x, None, torch.ones(3, device=meta), None, 0.0), "rstd must be on h's device"),
        (lambda: sim.cross_entropy_fwd_bwd(x, torch.tensor([1, 2, 3], device=meta), None, None, None, None, -100, 0.0, 0.0,
                                   0.0, 0, 8), "labels must be on logits's device"),
        (lambda: sim.rotary_fwd(q, k, None, None, cos, sin, torch.zeros(3, dtype=torch.long, device=meta), None, False,
                            False), "position_ids must be on q's device"),
        (lambda: sim.rotary_fwd(q, k, None, None, cos, sin, None, torch.tensor([0, 3], dtype=torch.int32, device=meta),
                            False, False), "cu_seqlens must be on q's device"),
    ]
    for call, message in calls:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_register_counts_come_from_the_gpu_build():
    # Where the GPU build exists (CI builds it with nvcc), every kernel the simulation runs gets its registers
    # from the cubins: both architectures, every instantiation.
    from eurokernels.inspect import aot
    if aot.find_cuda_extension() is None:
        pytest.skip("no GPU build (eurokernels._cuda) to read register counts from")
    matched = cuda_sim.load_cubin_registers()
    gpu_kernels = [n for n in cuda_sim.kernels() if not n.startswith("eurokernels::sim::")]
    assert matched == 2 * len(gpu_kernels)


# ----------------------------------------------------------------------------------- every instantiation runs
# The launchers pick a kernel instantiation from the dtypes and the widest vector the pointers and extents allow.
# Offsetting the input's data pointer by VEC elements (extents multiples of 8) makes them pick exactly VEC, so each
# family below runs every instantiation compiled for it, forward and backward, against the reference.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _at_vec(shape, dtype, vec):
    """A tensor of `shape` whose data pointer is aligned to vec elements and no more (vec 16 bytes: aligned)."""
    off = 0 if vec * dtype.itemsize == 16 else vec
    numel = torch.Size(shape).numel()
    return torch.randn(numel + 8).to(dtype)[off:off + numel].view(shape).requires_grad_()


def _vecs(dtype):
    return [v for v in (1, 2, 4, 8) if v * dtype.itemsize <= 16]


def _check(backend_out, reference_out, dtype):
    for got, want in zip(backend_out, reference_out):  # (an output stored in 16 bits: that dtype's tolerance)
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype if got.dtype == torch.float32 else got.dtype])


def _fwd_bwd(fn, inputs):
    """fn's outputs and the gradients of sum(outputs * fixed weights) w.r.t. inputs."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(1)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, inputs))


def _run_family(family, cases):
    """Runs every case (a callable taking the backend) on cuda and reference; returns the instantiations launched."""
    with cuda_sim.launches() as log:
        for case in cases:
            case()
    ran = {r["kernel"] for r in log}
    compiled = {k for k in cuda_sim.kernels() if k.startswith(family + "<")}
    assert compiled and compiled <= ran, f"never ran: {sorted(compiled - ran)}"


def test_every_rms_norm_instantiation():
    def case(dtype, wdtype, vec):
        def run():
            x = _at_vec((3, 64), dtype, vec)
            w = (torch.rand(64) + 0.5).to(wdtype).requires_grad_()
            _check(_fwd_bwd(lambda a, b: ek.rms_norm(a, b, backend="cuda"), (x, w)),
                   _fwd_bwd(lambda a, b: ek.rms_norm(a, b, backend="reference"), (x, w)), dtype)
        return run
    cases = [case(d, w, v) for d in DTYPES for w in DTYPES for v in _vecs(d)]
    _run_family("eurokernels::rms_norm::rms_norm_fwd_kernel", cases)
    _run_family("eurokernels::rms_norm::rms_norm_bwd_kernel", cases)


def test_every_rotary_instantiation():
    def case(dtype, table, vec, interleaved):
        def run():
            q, k = _at_vec((1, 3, 2, 64), dtype, vec), torch.randn(1, 3, 1, 64, dtype=dtype, requires_grad=True)
            cos, sin = (t.to(table or dtype) for t in ek.rotary_cos_sin(8, 64))
            _check(_fwd_bwd(lambda a, b: ek.apply_rotary(a, b, cos, sin, interleaved=interleaved, backend="cuda"),
                            (q, k)),
                   _fwd_bwd(lambda a, b: ek.apply_rotary(a, b, cos, sin, interleaved=interleaved,
                                                         backend="reference"), (q, k)), dtype)
        return run
    cases = [case(d, t, v, i) for d in DTYPES for t in (torch.float32, None) for v in _vecs(d) for i in (False, True)]
    _run_family("eurokernels::rotary::rotary_kernel", cases)


def test_every_softmax_and_cross_entropy_instantiation():
    def case(op, dtype, vec):
        def run():
            x = _at_vec((3, 64), dtype, vec)
            if op is ek.cross_entropy:
                labels = torch.tensor([1, 63, 30])
                f = lambda backend: lambda a: op(a, labels, reduction="none", backend=backend)  # noqa: E731
            else:
                f = lambda backend: lambda a: op(a, backend=backend)  # noqa: E731
            _check(_fwd_bwd(f("cuda"), (x,)), _fwd_bwd(f("reference"), (x,)), dtype)
        return run
    for op, families in ((ek.softmax, ["softmax_fwd_kernel", "softmax_bwd_kernel"]),
                         (ek.log_softmax, []),
                         (ek.cross_entropy, ["cross_entropy_kernel"])):
        cases = [case(op, d, v) for d in DTYPES for v in _vecs(d)]
        if op is ek.softmax:
            cases += [case(ek.log_softmax, d, v) for d in DTYPES for v in _vecs(d)]
        for family in families:
            namespace = "cross_entropy" if family.startswith("cross") else "softmax"
            _run_family(f"eurokernels::{namespace}::{family}", cases)


def test_every_attention_instantiation():
    # Each (dtype, head-dim class) forward / dQ / dK-dV kernel and the delta pre-pass, against the fp64 reference,
    # under sm_80's shared-memory opt-in limit (163 KB; the sim refuses a launch past it, as the GPU does). Head
    # dims 8 / 40, 72, 136 / 248 run in the 64 / 128 / 256 classes with padded columns (8: one 16-column step,
    # half of it padding); 256 fills its class.
    from test_attention import check_against_reference, make
    def case(dtype, d):
        def run():
            q, k, v, _ = make("cpu", dtype, sq=20, sk=27, hq=2, hk=1, d=d)
            check_against_reference("cuda", q, k, v, causal=True)
        return run
    cases = [case(t, d) for t in (torch.float16, torch.bfloat16) for d in (8, 40, 72, 136, 248, 256)]
    with cuda_sim.arch(80):
        for family in ("attention_fwd_kernel", "attention_bwd_dq_kernel", "attention_bwd_dkdv_kernel",
                       "attention_bwd_delta_kernel"):
            _run_family(f"eurokernels::attention::{family}", cases)


@pytest.mark.parametrize("schedule", SCHEDULES[1:])
def test_attention_under_every_schedule(schedule):
    # The attention kernels share tiles through shared memory (cp.async double buffering, P^T / dS^T staged for the
    # dK/dV products): bitwise the same forward and gradients under every interleaving of a block's threads.
    q, k, v, extra = make_attention_inputs()
    results = []
    for spec in ("rr", schedule):
        with cuda_sim.schedule(spec):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            out = ek.attention(*leaves, causal=True, window_size=(40, -1), softcap=3.0, backend="cuda", **extra)
            grads = torch.autograd.grad(out.float().square().sum(), leaves)
            results.append((out, *grads))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def make_attention_inputs():
    # Two documents: the second spans two 64-key tiles (a prefetch into the second buffer), GQA 2/1.
    from test_attention import make
    return make("cpu", torch.bfloat16, lens_q=[9, 90], hq=2, hk=1, d=32)
