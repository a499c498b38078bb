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
        ("cross_entropy", (x[:, :0], torch.full((3,), IGNORE), None, None, None, None, IGNORE, 0.0, 0.0, 0.0, 0, 0),
         "at least one class"),
    ]
    for name, args, message in cases:
        for module in (cpu, sim):
            with pytest.raises(RuntimeError, match=message):
                getattr(module, name)(*args)
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
        (lambda: sim.cross_entropy(x, torch.tensor([1, 2, 3], device=meta), None, None, None, None, -100, 0.0, 0.0,
                                   0.0, 0, 8), "labels must be on logits's device"),
        (lambda: sim.rotary(q, k, None, None, cos, sin, torch.zeros(3, dtype=torch.long, device=meta), None, False,
                            False), "position_ids must be on q's device"),
        (lambda: sim.rotary(q, k, None, None, cos, sin, None, torch.tensor([0, 3], dtype=torch.int32, device=meta),
                            False, False), "cu_seqlens must be on q's device"),
    ]
    for call, message in calls:
        with pytest.raises(RuntimeError, match=message):
            call()
