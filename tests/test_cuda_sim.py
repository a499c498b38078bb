"""The CUDA simulation's runtime (csrc/sim): misuse it must report, and the built-ins it must get right, each against
an independent expectation (the CUDA programming guide's / PTX ISA's semantics written out in Python, torch's
conversions, a plain matmul or copy). The kernels' own tests run through the `cuda` backend in the op test files.
"""
import pytest
import torch

from eurokernels import _ext, cuda_sim

pytestmark = pytest.mark.skipif(not cuda_sim.enabled(), reason="EUROKERNELS_CUDA_SIM=0: the simulation is off")


@pytest.fixture(scope="module")
def sim():
    return _ext.cuda_sim()


def test_conversions_round_to_nearest_even_like_torch(sim):
    # Halfway cases, subnormals, the overflow threshold, inf and NaN, plus random values over the whole range.
    special = torch.tensor([0.0, -0.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 65519.99, 65520.0, 2.0**-24,
                            2.0**-25, 3 * 2.0**-26, 2.0**-14 - 2.0**-24, 1.0 + 2**-8, 1.0 + 3 * 2**-8,
                            3.3895313e38, float("inf"), float("-inf")])
    bits = torch.randint(-2**31, 2**31 - 1, (20000,), dtype=torch.int64).to(torch.int32).view(torch.float32)
    x = torch.cat([special, -special, bits[torch.isfinite(bits)]])
    for dtype in (torch.float16, torch.bfloat16):
        got, want = sim.round_to(x, dtype), x.to(dtype).float()
        assert torch.equal(got, want), f"{dtype}: first mismatch at {(got != want).nonzero()[:1]}"
    assert torch.isnan(sim.round_to(torch.tensor([float("nan")]), torch.float16)).all()
    assert torch.isnan(sim.round_to(torch.tensor([float("nan")]), torch.bfloat16)).all()


@pytest.mark.parametrize("mode, message", [
    (0, r"thread \(16, 0, 0\) \(warp 0, lane 16\) exited without reaching the __syncthreads at "
        r"sim/sim_test_kernels.cu"),
    (1, r"divergent barrier: thread \(0, 0, 0\) .* waits at __syncthreads at sim/sim_test_kernels.cu:\d+ while "
        r"thread \(1, 0, 0\) .* waits at sim/sim_test_kernels.cu:\d+"),
    (2, r"thread \(5, 0, 0\) \(warp 0, lane 5\) exited without reaching the __syncthreads"),
])
def test_barrier_not_reached_by_every_thread_is_reported(sim, mode, message):
    out = torch.zeros(32, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=message) as e:
        sim.test_barrier_misuse(mode, out)
    assert "kernel eurokernels::sim::tests::barrier_misuse_kernel, block (0, 0, 0)" in str(e.value)
    sim.test_barrier_misuse(3, out)  # the same kernel, every thread at every barrier
    assert out.tolist() == [1] * 32


def _warp_expected(mask, width):
    lanes = [lane for lane in range(32) if mask >> lane & 1]
    out = [[-1] * 8 for _ in range(32)]
    for lane in lanes:
        base = lane & ~(width - 1)
        up, down, xor = lane - 1, lane + 1, lane ^ 1
        out[lane] = [
            10 * (base + ((lane + 1) & (width - 1))),
            10 * (up if up >= base else lane),
            10 * (down if down < base + width else lane),
            10 * (xor if xor < base + width else lane),
            sum(1 << x for x in lanes if x % 3 == 0),
            int(7 in lanes),
            int(7 not in lanes),
            1,
        ]
    return out


@pytest.mark.parametrize("mask, width", [(0xFFFFFFFF, 32), (0xFFFFFFFF, 8), (0x0000FFFF, 16), (0xFFFF0000, 16),
                                         (0x000000F0, 4), (0x00FF0000, 8)])
def test_warp_shuffles_and_votes_honour_the_mask(sim, mask, width):
    out = torch.zeros(32, 8, dtype=torch.int32)
    sim.test_warp_ops(out, mask, width)
    assert out.tolist() == _warp_expected(mask, width)


def test_shuffle_reading_a_lane_outside_its_mask_is_reported(sim):
    # Lanes 0-15 shuffle over the whole warp (width 32): lane 15 reads lane 16, which the mask leaves out.
    with pytest.raises(RuntimeError, match=r"__shfl_sync: lane 15 reads lane 16, which is not in the mask "
                                           r"0x0000ffff at sim/sim_test_kernels.cu:\d+ \[kernel .*warp_ops_kernel"):
        sim.test_warp_ops(torch.zeros(32, 8, dtype=torch.int32), 0x0000FFFF, 32)


@pytest.mark.parametrize("grid, block, smem, optin, arch, refused", [
    ((1, 1, 1), (1024, 1, 1), 0, 0, 90, None),
    ((2, 3, 4), (32, 4, 2), 48 * 1024, 0, 90, None),
    ((1, 1, 1), (1025, 1, 1), 0, 0, 90, "exceeds the 1024 threads"),
    ((1, 1, 1), (32, 32, 2), 0, 0, 90, "exceeds the 1024 threads"),
    ((1, 1, 1), (1, 1, 65), 0, 0, 90, "exceeds the 1024 threads"),
    ((1, 65536, 1), (32, 1, 1), 0, 0, 90, "exceeds the limits"),
    ((1, 1, 65536), (32, 1, 1), 0, 0, 90, "exceeds the limits"),
    ((2**31, 1, 1), (32, 1, 1), 0, 0, 90, "exceeds the limits"),
    ((1, 1, 1), (0, 1, 1), 0, 0, 90, "dimension is 0"),
    ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, 0, 90, "exceed the kernel's limit of 49152"),
    ((1, 1, 1), (32, 1, 1), 227 * 1024, 227 * 1024, 90, None),
    ((1, 1, 1), (32, 1, 1), 163 * 1024, 163 * 1024, 80, None),
    ((1, 1, 1), (32, 1, 1), 164 * 1024, 164 * 1024, 80, "exceed the kernel's limit of 49152"),  # opt-in refused
    ((1, 1, 1), (32, 1, 1), 228 * 1024, 228 * 1024, 90, "exceed the kernel's limit of 49152"),
])
def test_launch_limits_of_the_gpu(sim, grid, block, smem, optin, arch, refused):
    out = torch.zeros(1, dtype=torch.int32)
    with cuda_sim.arch(arch), cuda_sim.launches(run=True) as log:
        status, error = sim.test_launch(grid, block, smem, optin, out)
    assert status == (1 if optin > {80: 163, 90: 227}[arch] * 1024 else 0)  # cudaErrorInvalidValue past the limit
    assert len(log) == 1 and log[0]["grid"] == grid and log[0]["block"] == block
    if refused is None:
        assert error == "" and out.item() == 1, error
    else:
        assert refused in error and "probe_kernel refused" in error and out.item() == 0
    sim.test_launch((1, 1, 1), (32, 1, 1), 0, 0, out)  # resets the opt-in


def test_shared_memory_is_per_block(sim):
    # 64 blocks run on the host's threads at once; each must see its own static and dynamic shared memory.
    blocks, threads = 64, 128
    out = torch.zeros(blocks, threads, 2, dtype=torch.int32)
    sim.test_shared_memory(out, blocks, threads)
    b = torch.arange(blocks, dtype=torch.int32)[:, None]
    t = torch.arange(threads, dtype=torch.int32)[None, :]
    assert torch.equal(out[..., 0], b.expand(blocks, threads))
    assert torch.equal(out[..., 1], b * 1000 + (t + 1) % threads)


def test_atomics_across_parallel_blocks(sim):
    counter, total, top = torch.zeros(1, dtype=torch.int32), torch.zeros(1), torch.zeros(1, dtype=torch.int32)
    sim.test_atomics(counter, total, top, 50, 64)
    assert counter.item() == 3200 and total.item() == 1600.0 and top.item() == 3199


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["fragments", "ldmatrix_kn_trans", "ldmatrix_nk"])
def test_mma_m16n8k16_is_a_matmul(sim, dtype, mode):
    a = torch.randn(16, 16).to(dtype)
    b = torch.randn(16, 8).to(dtype)
    c = torch.randn(16, 8)
    d = torch.full((16, 8), float("nan"))
    b_arg = b.t().contiguous() if mode == "ldmatrix_nk" else b  # [n][k] tile, read by ldmatrix without .trans
    sim.test_mma(a.view(torch.int16), b_arg.view(torch.int16), c, d, dtype == torch.bfloat16,
                 ["fragments", "ldmatrix_kn_trans", "ldmatrix_nk"].index(mode))
    expected = (a.double() @ b.double() + c.double()).float()
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("num", [1, 2, 4])
def test_ldmatrix_fragment_layout(sim, num, trans):
    mats = torch.randint(0, 2**16, (num, 8, 8), dtype=torch.int32)
    out = torch.zeros(32, num, dtype=torch.int32)
    sim.test_ldmatrix(mats.to(torch.int16), out, num, trans)
    m = mats.tolist()
    for lane in range(32):
        q, p = lane // 4, 2 * (lane % 4)
        for j in range(num):
            lo, hi = (m[j][p][q], m[j][p + 1][q]) if trans else (m[j][q][p], m[j][q][p + 1])
            assert out[lane, j].item() & 0xFFFFFFFF == lo | hi << 16, (lane, j)


@pytest.mark.parametrize("src_bytes_last", [16, 8, 0])
def test_cp_async_groups_and_zero_fill(sim, src_bytes_last):
    src = torch.arange(1, 225, dtype=torch.float32)
    out0, out1 = torch.full((32, 4), -1.0), torch.full((32, 3), -1.0)
    sim.test_cp_async(src, out0, out1, src_bytes_last)
    expected0 = src[:128].view(32, 4).clone()
    expected0[31, src_bytes_last // 4:] = 0  # past src-size: zero-filled
    assert torch.equal(out0, expected0)
    nxt = (torch.arange(32) + 1) % 32
    expected1 = torch.stack([src[128 + 2 * nxt], src[129 + 2 * nxt], src[192 + nxt]], dim=1)
    assert torch.equal(out1, expected1)


def test_schedules_reveal_an_ordering_race(sim):
    # Thread 0 reads what thread 63 writes with no barrier between: only the order of the two decides.
    def seen(spec):
        flag, value = torch.zeros(1, dtype=torch.int32), torch.full((1,), -1, dtype=torch.int32)
        with cuda_sim.schedule(spec):
            sim.test_race(flag, value, 64)
        return value.item()

    assert seen("rr") == 0 and seen("reverse") == 1
    by_seed = [seen(f"seed:{s}") for s in range(16)]
    assert by_seed == [seen(f"seed:{s}") for s in range(16)], "a seeded schedule must be deterministic"
    assert set(by_seed) == {0, 1}
    with pytest.raises(ValueError, match="schedule must be 'rr', 'reverse' or 'seed:N'"):
        cuda_sim.schedule("random").__enter__()


def test_every_cuda_kernel_family_runs_under_the_simulation():
    names = cuda_sim.kernels()
    for family in ("rms_norm_fwd_kernel", "rms_norm_bwd_kernel", "sum_partials_kernel", "rotary_kernel",
                   "softmax_fwd_kernel", "softmax_bwd_kernel", "cross_entropy_kernel"):
        assert any(family in n for n in names), family
    assert "eurokernels::rms_norm::rms_norm_fwd_kernel<float, float, 4>" in names


def test_launch_refused_when_the_block_needs_more_registers_than_an_sm_has(sim):
    # As read from a cubin: 72 registers per thread (rounded to 72 = 9 x 8) x 1024 threads > 65536; 64 x 1024 fits.
    out = torch.zeros(1, dtype=torch.int32)
    name = "sim::tests::probe_kernel"
    try:
        assert sim.set_kernel_registers(90, name, 72)
        status, error = sim.test_launch((1, 1, 1), (1024, 1, 1), 0, 0, out)
        assert "too many resources requested: 72 registers per thread" in error and out.item() == 0
        _, error = sim.test_launch((1, 1, 1), (896, 1, 1), 0, 0, out)  # 28 warps x 72 x 32 = 64512
        assert error == "" and out.item() == 1
        assert sim.set_kernel_registers(90, name, 64)
        _, error = sim.test_launch((1, 1, 1), (1024, 1, 1), 0, 0, out)
        assert error == ""
    finally:
        sim.set_kernel_registers(90, name, 0)
    assert not sim.set_kernel_registers(90, "no::such_kernel<int>", 1)


def test_inspect_says_which_kernels_run_under_the_simulation():
    from eurokernels.inspect import simulated_kernels
    from eurokernels.inspect.__main__ import simulated
    text = simulated(simulated_kernels())
    assert "run on CPU under the simulation" in text
    for family in ("rms_norm::rms_norm_fwd_kernel", "rotary::rotary_kernel", "softmax::softmax_bwd_kernel",
                   "cross_entropy::cross_entropy_kernel"):
        assert f"eurokernels::{family}  (" in text, text
    assert "sim::tests" not in text and "testing::" not in text  # test kernels are not the package's
