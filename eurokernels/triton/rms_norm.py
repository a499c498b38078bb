"""RMSNorm Triton kernels and launchers (math and rounding conventions: eurokernels/reference.py)."""
import functools

import torch
import triton
import triton.language as tl

from . import RowConfig, persistent_programs, row_alignment, row_config
from ._common import cast_to, round_to
from ._launch import HIDDEN, TOKENS, launch, recorded_specs


@triton.jit
def _scale(h, rstd, w, offset, DTYPE: tl.constexpr, CASTING: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """Output values in fp32 before the store rounds them; CASTING as in csrc/rms_norm/rms_norm_common.h."""
    if CASTING == 1:  # gemma: fp32 throughout
        y = h * rstd
        if HAS_WEIGHT:
            y = y * (offset + w)
    else:  # llama (0) / none (2): normalize, round to DTYPE, multiply by the rounded scale
        r = rstd
        if CASTING == 2:
            r = round_to(rstd, DTYPE)
        y = round_to(h * r, DTYPE)
        if HAS_WEIGHT:
            y = y * round_to(offset + w, DTYPE)
    return y


@triton.jit
def rms_norm_fwd_kernel(
    X, stride_x_row,  # input [M, N], unit stride along N
    R, stride_r_row,  # residual [M, N] (read when HAS_RESIDUAL)
    W,                # weight [N], any float dtype (read when HAS_WEIGHT)
    Y,                # output [M, N], contiguous
    RES_OUT,          # x + residual [M, N], contiguous (written when HAS_RESIDUAL)
    RSTD,             # [M] fp32: 1 / rms, saved for the backward
    N, eps, offset,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr, CASTING: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, ALIGN: tl.constexpr,
):
    # ALIGN > 1: N and the row strides are multiples of ALIGN elements (16 bytes; see row_alignment). The JIT
    # only tells the compiler so when they are multiples of 16; for e.g. N = 4104 in bf16, `// ALIGN * ALIGN`
    # (the identity on such values) lets it prove the divisibility itself: 128-bit accesses instead of 16-bit.
    if ALIGN > 1:
        N = N // ALIGN * ALIGN
        stride_x_row = stride_x_row // ALIGN * ALIGN
        stride_r_row = stride_r_row // ALIGN * ALIGN
    # One program per row. int64 row offsets: rows * N can pass 2^31.
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x_row
    R += row * stride_r_row
    Y += row * N
    RES_OUT += row * N
    DTYPE = Y.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_BLOCK:  # the row lives in registers between the reduction and the scaling
        mask = cols < N
        h = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            h = round_to(h + tl.load(R + cols, mask=mask, other=0.0).to(tl.float32), DTYPE)
            tl.store(RES_OUT + cols, h.to(DTYPE), mask=mask)
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) if HAS_WEIGHT else 1.0
        tl.store(Y + cols, cast_to(_scale(h, rstd, w, offset, DTYPE, CASTING, HAS_WEIGHT), DTYPE), mask=mask)
    else:  # long rows: sweep once for the sum of squares, once more (from L2) to scale
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            h = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                h = round_to(h + tl.load(R + off + cols, mask=mask, other=0.0).to(tl.float32), DTYPE)
                tl.store(RES_OUT + off + cols, h.to(DTYPE), mask=mask)
            acc += h * h
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            if HAS_RESIDUAL:
                h = tl.load(RES_OUT + off + cols, mask=mask, other=0.0).to(tl.float32)
            else:
                h = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W + off + cols, mask=mask, other=0.0).to(tl.float32) if HAS_WEIGHT else 1.0
            tl.store(Y + off + cols, cast_to(_scale(h, rstd, w, offset, DTYPE, CASTING, HAS_WEIGHT), DTYPE), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def rms_norm_bwd_kernel(
    DY, stride_dy_row,      # upstream gradient [M, N]
    H, stride_h_row,        # the normalized input (x, or x + residual) [M, N]
    W,                      # weight [N] (HAS_WEIGHT)
    RSTD,                   # [M] fp32 from the forward
    DRES, stride_dres_row,  # gradient flowing into residual_out [M, N] (HAS_DRES)
    DX,                     # output [M, N], contiguous
    DW_PARTIAL,             # [programs, N] fp32: this program's share of dw (HAS_WEIGHT)
    M, N, offset, rows_per_program,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_DRES: tl.constexpr,
    ALIGN: tl.constexpr,
):
    if ALIGN > 1:  # as in the forward: N and row strides are multiples of ALIGN elements
        N = N // ALIGN * ALIGN
        stride_dy_row = stride_dy_row // ALIGN * ALIGN
        stride_h_row = stride_h_row // ALIGN * ALIGN
        stride_dres_row = stride_dres_row // ALIGN * ALIGN
    # dx = rstd * (g - nhat * mean(g * nhat)), g = dy * (offset + w), nhat = h * rstd; dw = sum_rows(dy * nhat).
    # Each program owns a contiguous chunk of rows and one row of DW_PARTIAL: no atomics, deterministic dw.
    pid = tl.program_id(0).to(tl.int64)  # int64 rows: row offsets below are rows * stride
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    DW_PARTIAL += pid * N
    DTYPE = DX.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_BLOCK:
        mask = cols < N
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset if HAS_WEIGHT else 1.0
        dw = tl.zeros([BLOCK_N], dtype=tl.float32)
        for row in range(row_start, row_end):
            r = tl.cast(row, tl.int64)  # int64 on GPU already; a Python int under the interpreter
            rstd = tl.load(RSTD + r)
            dy = tl.load(DY + r * stride_dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            nh = tl.load(H + r * stride_h_row + cols, mask=mask, other=0.0).to(tl.float32) * rstd
            g = dy * w
            dx = rstd * (g - nh * (tl.sum(g * nh, axis=0) / N))
            if HAS_DRES:
                dx += tl.load(DRES + r * stride_dres_row + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + r * N + cols, cast_to(dx, DTYPE), mask=mask)
            dw += dy * nh
        if HAS_WEIGHT:
            tl.store(DW_PARTIAL + cols, dw, mask=mask)
    else:
        for row in range(row_start, row_end):
            r = tl.cast(row, tl.int64)  # int64 on GPU already; a Python int under the interpreter
            rstd = tl.load(RSTD + r)
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for off in range(0, N, BLOCK_N):
                mask = off + cols < N
                dy = tl.load(DY + r * stride_dy_row + off + cols, mask=mask, other=0.0).to(tl.float32)
                h = tl.load(H + r * stride_h_row + off + cols, mask=mask, other=0.0).to(tl.float32)
                if HAS_WEIGHT:
                    dy = dy * (tl.load(W + off + cols, mask=mask, other=0.0).to(tl.float32) + offset)
                acc += dy * h
            c = tl.sum(acc, axis=0) * rstd / N
            for off in range(0, N, BLOCK_N):
                mask = off + cols < N
                dy = tl.load(DY + r * stride_dy_row + off + cols, mask=mask, other=0.0).to(tl.float32)
                nh = tl.load(H + r * stride_h_row + off + cols, mask=mask, other=0.0).to(tl.float32) * rstd
                g = dy
                if HAS_WEIGHT:
                    g = dy * (tl.load(W + off + cols, mask=mask, other=0.0).to(tl.float32) + offset)
                dx = rstd * (g - nh * c)
                if HAS_DRES:
                    dx += tl.load(DRES + r * stride_dres_row + off + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(DX + r * N + off + cols, cast_to(dx, DTYPE), mask=mask)
                if HAS_WEIGHT:  # this program's own row of partials: read-modify-write without races
                    part = tl.load(DW_PARTIAL + off + cols, mask=mask, other=0.0)
                    tl.store(DW_PARTIAL + off + cols, part + dy * nh, mask=mask)


def forward(x, weight, residual, eps, offset, casting):
    """x, residual: [M, N] with unit stride along N. Returns (y, residual_out or empty, rstd)."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(y) if residual is not None else x.new_empty(0)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y, res_out, rstd.fill_(1.0 / eps ** 0.5 if eps > 0 else float("inf"))
    cfg = row_config(N)
    r = residual if residual is not None else x  # placeholders are never read: the flags compile the reads away
    launch(rms_norm_fwd_kernel, (M,),
        x, x.stride(0), r, r.stride(0), weight if weight is not None else x, y,
        res_out if residual is not None else y, rstd, N, eps, offset,
        BLOCK_N=cfg.block_n, SINGLE_BLOCK=cfg.single_block, CASTING=casting,
        HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
        ALIGN=row_alignment(x.element_size(), N, x.stride(0), r.stride(0)), num_warps=cfg.num_warps)
    return y, res_out, rstd


# The backward on rows that are not 16-byte aligned (hidden not a multiple of 8) makes 16-bit accesses, one
# address per element. At BLOCK_N 8192 the looping variant (hidden > 8192) needs 128+ VGPRs and spills on MI300X
# (gfx942), whose 16 waves of 64 leave 128 per thread, and the single-block one (4096 < hidden < 8192, e.g. 8191)
# hits the 128 registers of 16 warps on sm_80/sm_90 and spills 8 bytes of stack; 16 warps is the most a program
# can have. Half the block, looping, needs about 65 registers on every target (eurokernels.inspect).
_BWD_LOOP_UNALIGNED = RowConfig(block_n=4096, num_warps=16, single_block=False)


def _bwd_config(cfg, align):
    """The backward's launch configuration: row_config's, but _BWD_LOOP_UNALIGNED for unaligned rows longer than
    its block."""
    return _BWD_LOOP_UNALIGNED if align == 1 and cfg.block_n > _BWD_LOOP_UNALIGNED.block_n else cfg


def backward(dy, h, weight, rstd, dresidual_out, offset):
    """dy, h, dresidual_out: [M, N] with unit stride along N; rstd: [M] fp32. Returns (dx, dw or empty)."""
    M, N = h.shape
    dx = torch.empty((M, N), dtype=h.dtype, device=h.device)
    if N == 0 or M == 0:
        return dx, (torch.zeros_like(weight) if weight is not None else h.new_empty(0))
    d = dresidual_out if dresidual_out is not None else dy
    align = row_alignment(h.element_size(), N, dy.stride(0), h.stride(0), d.stride(0))
    cfg = _bwd_config(row_config(N), align)
    programs = persistent_programs(h.device, M)
    alloc = torch.empty if cfg.single_block else torch.zeros  # the looping variant accumulates into its row
    partial = alloc((programs, N) if weight is not None else (0,), dtype=torch.float32, device=h.device)
    launch(rms_norm_bwd_kernel, (programs,),
        dy, dy.stride(0), h, h.stride(0), weight if weight is not None else h, rstd, d, d.stride(0), dx,
        partial, M, N, offset, triton.cdiv(M, programs),
        BLOCK_N=cfg.block_n, SINGLE_BLOCK=cfg.single_block, HAS_WEIGHT=weight is not None,
        HAS_DRES=dresidual_out is not None,
        ALIGN=align, num_warps=cfg.num_warps)
    dw = partial.sum(0).to(weight.dtype) if weight is not None else h.new_empty(0)
    return dx, dw


def _representative_calls():
    """The launches the AOT checks compile: forward and backward with the heaviest flags (residual, weight) in
    bf16, at every row configuration (hidden 16 .. 8192 and the looping > 8192), each also at a hidden size that is a
    multiple of 8 but not 16 and at an odd one for the block sizes models use, 8192 tokens and a single one."""
    hidden = {b for k in range(4, 14) for b in [1 << k]} | set(HIDDEN) | {16384}
    hidden |= {h - d for h in (128, 1024, 4096, 8192, 16384) for d in (8, 1)}
    for n in sorted(hidden):
        for m in (TOKENS, 1) if n in HIDDEN else (TOKENS,):
            x = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")
            w = torch.empty(n, dtype=torch.bfloat16, device="cuda")
            y, res_out, rstd = forward(x, w, torch.empty_like(x), 1e-6, 0.0, 0)
            backward(torch.empty_like(x), res_out, w, rstd, torch.empty_like(x), 0.0)


def _describe(launch_):
    c = launch_.constexprs
    align = c["ALIGN"]
    return dict(name=launch_.kernel.fn.__name__.replace("_kernel", ""), memory_bound=True, rows_aligned=align > 1,
                block=c["BLOCK_N"])


@functools.cache
def aot_specs():
    """Every kernel configuration the launchers pick for _representative_calls(), as the JIT specializes it
    (eurokernels/triton/_launch.py). `memory_bound` kernels must issue 128-bit global accesses when `rows_aligned`
    and a thread holds at least 16 bytes of a `block`-element row tile (tests/test_aot.py)."""
    return recorded_specs(_representative_calls, _describe)
