"""Softmax / log-softmax Triton kernels and launchers for rows of any length (reference: eurokernels/reference.py)."""
import torch
import triton
import triton.language as tl

from . import all_row_configs, row_config
from ._common import cast_to


@triton.jit
def softmax_fwd_kernel(
    X, stride_x_row,  # input [M, N], unit stride along N
    Y,                # output [M, N], contiguous
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
        x2 = x2 - tl.max(x2, axis=0)
        e = tl.exp2(x2)
        s = tl.sum(e, axis=0)
        if LOG:
            y = (x2 - tl.log2(s)) * 0.6931471805599453
        else:
            y = e / s
        tl.store(Y + cols, cast_to(y, DTYPE), mask=mask)
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
    Y, stride_y_row,    # the forward's output [M, N]
    DX,                 # output [M, N], contiguous
    N,
    BLOCK_N: tl.constexpr, LOG: tl.constexpr,
):
    # softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy). Two sweeps over the row.
    row = tl.program_id(0).to(tl.int64)
    DY += row * stride_dy_row
    Y += row * stride_y_row
    DX += row * N
    DTYPE = DX.dtype.element_ty
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        mask = off + cols < N
        dy = tl.load(DY + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            acc += dy
        else:
            acc += dy * tl.load(Y + off + cols, mask=mask, other=0.0).to(tl.float32)
    c = tl.sum(acc, axis=0)
    for off in range(0, N, BLOCK_N):
        mask = off + cols < N
        dy = tl.load(DY + off + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + off + cols, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = dy - tl.exp(y) * c
        else:
            dx = y * (dy - c)
        tl.store(DX + off + cols, cast_to(dx, DTYPE), mask=mask)


def forward(x, log):
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    cfg = row_config(N)
    softmax_fwd_kernel[(M,)](x, x.stride(0), y, N, BLOCK_N=cfg.block_n, SINGLE_BLOCK=cfg.single_block, LOG=log,
                             num_warps=cfg.num_warps)
    return y


def backward(dy, y, log):
    M, N = y.shape
    dx = torch.empty((M, N), dtype=y.dtype, device=y.device)
    if M == 0 or N == 0:
        return dx
    cfg = row_config(N)
    softmax_bwd_kernel[(M,)](dy, dy.stride(0), y, y.stride(0), dx, N, BLOCK_N=cfg.block_n, LOG=log,
                             num_warps=cfg.num_warps)
    return dx


def aot_specs():
    """Every kernel x launch configuration the launchers can pick (bf16, both LOG values), for the AOT checks."""
    specs = []
    for cfg in all_row_configs():
        for log in (False, True):
            specs.append(dict(
                name=f"{'log_' if log else ''}softmax_fwd", kernel=softmax_fwd_kernel, num_warps=cfg.num_warps,
                signature=dict(X="*bf16", stride_x_row="i32", Y="*bf16", N="i32"),
                constexprs=dict(BLOCK_N=cfg.block_n, SINGLE_BLOCK=cfg.single_block, LOG=log),
                aligned=["X", "stride_x_row", "Y", "N"]))
            specs.append(dict(
                name=f"{'log_' if log else ''}softmax_bwd", kernel=softmax_bwd_kernel, num_warps=cfg.num_warps,
                signature=dict(DY="*bf16", stride_dy_row="i32", Y="*bf16", stride_y_row="i32", DX="*bf16", N="i32"),
                constexprs=dict(BLOCK_N=cfg.block_n, LOG=log),
                aligned=["DY", "stride_dy_row", "Y", "stride_y_row", "DX", "N"]))
    return specs
