"""Softmax / log-softmax Triton kernels and launchers for rows of any length (reference: eurokernels/reference.py)."""
import functools

import torch
import triton
import triton.language as tl

from . import row_config
from ._common import cast_to
from ._launch import HIDDEN, TOKENS, VOCAB, launch, recorded_specs


@triton.jit
def softmax_fwd_kernel(
    X, stride_x_row,  # input [M, N], unit stride along N
    Y,                # output [M, N], contiguous
    LSE,              # [M] fp32: log-sum-exp of each row, saved for the backward
    N,
    BLOCK_N: tl.constexpr, SINGLE_BLOCK: tl.constexpr, LOG: tl.constexpr,
):
    # One program per row. Single block: the row stays in registers. Otherwise an online log-sum-exp sweep (base 2,
    # one scalar rescale per block) and a second sweep (from L2) writing the output.
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x_row
    Y += row * N
    DTYPE = Y.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    if SINGLE_BLOCK:
        mask = cols < N
        x2 = tl.where(mask, tl.load(X + cols, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634,
                      float("-inf"))
        m = tl.max(x2, axis=0)
        x2 = x2 - m
        e = tl.exp2(x2)
        s = tl.sum(e, axis=0)
        if LOG:
            y = (x2 - tl.log2(s)) * 0.6931471805599453
        else:
            y = e / s
        tl.store(Y + cols, cast_to(y, DTYPE), mask=mask)
        tl.store(LSE + row, (m + tl.log2(s)) * 0.6931471805599453)
    else:
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.zeros([], dtype=tl.float32)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            x2 = tl.where(mask, tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634,
                          float("-inf"))
            m_new = tl.maximum(m, tl.max(x2, axis=0))
            s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x2 - m_new), axis=0)
            m = m_new
        lse2 = m + tl.log2(s)
        tl.store(LSE + row, lse2 * 0.6931471805599453)
        for off in range(0, N, BLOCK_N):
            mask = off + cols < N
            x2 = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634 - lse2
            if LOG:
                y = x2 * 0.6931471805599453
            else:
                y = tl.exp2(x2)
            tl.store(Y + off + cols, cast_to(y, DTYPE), mask=mask)


@triton.jit
def softmax_bwd_kernel(
    DY, stride_dy_row,  # upstream gradient [M, N]
    X, stride_x_row,    # the forward's input [M, N]
    LSE,                # [M] fp32 from the forward
    DX,                 # output [M, N], contiguous
    N,
    BLOCK_N: tl.constexpr, LOG: tl.constexpr,
):
    # p = exp(x - lse) recomputed in fp32. softmax: dx = p * (dy - sum(dy * p)); log_softmax: dx = dy - p * sum(dy).
    row = tl.program_id(0).to(tl.int64)
    DY += row * stride_dy_row
    X += row * stride_x_row
    DX += row * N
    DTYPE = DX.dtype.element_ty
    lse2 = tl.load(LSE + row) * 1.4426950408889634
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        mask = off + cols < N
        dy = tl.load(DY + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            acc += dy
        else:
            x = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
            acc += dy * tl.exp2(x * 1.4426950408889634 - lse2)
    c = tl.sum(acc, axis=0)
    for off in range(0, N, BLOCK_N):
        mask = off + cols < N
        dy = tl.load(DY + off + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp2(tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634 - lse2)
        if LOG:
            dx = dy - p * c
        else:
            dx = p * (dy - c)
        tl.store(DX + off + cols, cast_to(dx, DTYPE), mask=mask)


def forward(x, log):
    """x: [M, N] with unit stride along N. Returns (y, lse [M] fp32)."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    lse = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0 or N == 0:
        return y, lse.fill_(float("-inf"))
    cfg = row_config(N)
    launch(softmax_fwd_kernel, (M,), x, x.stride(0), y, lse, N, BLOCK_N=cfg.block_n, SINGLE_BLOCK=cfg.single_block,
           LOG=log, num_warps=cfg.num_warps)
    return y, lse


def backward(dy, x, lse, log):
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx
    cfg = row_config(N)
    launch(softmax_bwd_kernel, (M,), dy, dy.stride(0), x, x.stride(0), lse, dx, N, BLOCK_N=cfg.block_n, LOG=log,
                             num_warps=cfg.num_warps)
    return dx


def _representative_calls():
    """softmax and log-softmax, forward and backward, in bf16 over every row configuration (row lengths 16 .. 8192,
    the looping > 8192, up to a vocabulary), 8192 rows (fewer for the longest rows, as a vocabulary-sized softmax runs)."""
    lengths = sorted({1 << k for k in range(4, 14)} | set(HIDDEN) | {16384} | set(VOCAB))
    for n in lengths:
        x = torch.empty((TOKENS if n <= 16384 else 1024, n), dtype=torch.bfloat16, device="cuda")
        for log in (False, True):
            y, lse = forward(x, log)
            backward(torch.empty_like(y), x, lse, log)


def _describe(launch_):
    log = "log_" if launch_.constexprs["LOG"] else ""
    direction = "fwd" if launch_.kernel is softmax_fwd_kernel else "bwd"
    return dict(name=f"{log}softmax_{direction}", memory_bound=True, rows_aligned="N" in launch_.attrs["cuda"],
                block=launch_.constexprs["BLOCK_N"])


@functools.cache
def aot_specs():
    """Every kernel configuration the launchers pick for _representative_calls(), as the JIT specializes it
    (eurokernels/triton/_launch.py)."""
    return recorded_specs(_representative_calls, _describe)
