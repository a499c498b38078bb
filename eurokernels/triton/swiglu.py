"""SwiGLU / GeGLU Triton kernels and launchers (math: eurokernels/reference.py swiglu, swiglu_backward).

Elementwise over [rows, intermediate]: a 2-D grid of (row, column block) programs, each reading gate and up once
and writing once (forward: 3 accesses per element, backward: 5), the minimum traffic. One kernel per direction for
all three activations (ACTIVATION is a compile-time constant).
"""
import functools

import torch
import triton
import triton.language as tl

from . import row_alignment
from ._common import cast_to
from ._launch import TOKENS, launch, recorded_specs

ACTIVATION = {"silu": 0, "gelu_tanh": 1, "gelu": 2}  # = eurokernels/ops/swiglu.py ACTIVATIONS

# (BLOCK_N, num_warps): the smallest block that covers a row, else the largest (the grid's second axis then walks the
# row's blocks). A thread holds 8 or 16 elements (128-bit accesses) on every target except the smallest block on
# AMD's 64-wide waves (4: rows under 256 are not an MLP's); elementwise work needs no whole row per program, and
# 4096 leaves less of a row's last block masked off than the row kernels' 8192 would. Three configurations keep the
# AOT check (every kernel x activation x alignment x configuration, four targets) short.
BLOCKS = ((256, 1), (1024, 2), (4096, 8))


@triton.jit
def _activation(g, ACTIVATION: tl.constexpr):
    """(act(g), act'(g)) in fp32. The forward uses only the first; the compiler drops the derivative's math.

    SiLU and GELU-tanh are both g * sigmoid(z): 0.5 * (1 + tanh(z / 2)) = sigmoid(z), with z = g for SiLU and
    z = 2 * sqrt(2 / pi) * (g + 0.044715 g^3) for GELU-tanh. One exp, no tanh, and no cancellation in 1 + tanh
    for negative g. act' = s + g * s * (1 - s) * z' with s = sigmoid(z); for z > 0, 1 - s = exp(-z) s.
    """
    if ACTIVATION == 2:  # exact GELU: g * Phi(g), act' = Phi(g) + g * phi(g)
        # Phi = (1 + erf) / 2, PyTorch's own GPU formula; it cancels for very negative g, where the C++ kernels'
        # erfc does not, but libdevice's erfc does not run under the interpreter (triton 3.8).
        cdf = 0.5 + 0.5 * tl.math.erf(g * 0.7071067811865476)
        a = g * cdf
        da = cdf + g * tl.exp(-0.5 * g * g) * 0.3989422804014327
    else:
        if ACTIVATION == 1:
            # Beyond |g| = 100, |z| > 7e4: exp(-z) is inf or 0 and sigmoid(z) exactly 0 or 1, as for any larger |g|.
            # Clamping there keeps g^3 and z' finite, so the backward never forms 0 * inf for huge |g|.
            gc = tl.minimum(tl.maximum(g, -100.0), 100.0)
            z = gc * (1.5957691216057308 + 0.0713548162726009 * gc * gc)  # 2 sqrt(2/pi) (g + 0.044715 g^3)
            dz = 1.5957691216057308 + 0.2140644488178027 * gc * gc
        else:
            z = g
            dz = 1.0
        e = tl.exp(-z)
        s = 1.0 / (1.0 + e)
        a = g * s
        da = s + a * tl.where(z > 0, e * s, 1.0 - s) * dz  # 1 - s without cancellation as s -> 1
    return a, da


@triton.jit
def swiglu_fwd_kernel(
    G, stride_g_row,  # gate [M, N], unit stride along N
    U, stride_u_row,  # up [M, N], unit stride along N (for a fused projection: G + N, same row stride)
    Y,                # output [M, N], contiguous
    N,
    BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, ALIGN: tl.constexpr,
):
    # ALIGN > 1: N and the row strides are multiples of ALIGN elements (16 bytes; see row_alignment), stated so the
    # compiler can emit 128-bit accesses when the JIT did not mark them divisible by 16 (e.g. N = 11000 in bf16).
    if ALIGN > 1:
        N = N // ALIGN * ALIGN
        stride_g_row = stride_g_row // ALIGN * ALIGN
        stride_u_row = stride_u_row // ALIGN * ALIGN
    row = tl.program_id(0).to(tl.int64)  # int64 row offsets: rows * N can pass 2^31
    # The column block's start in int64 too (a row of N >= 2^31 elements has 2^19+ blocks of 4096), added to the
    # scalar row offsets: the per-element offsets stay an int32 arange.
    col0 = tl.program_id(1).to(tl.int64) * BLOCK_N
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N - col0
    g = tl.load(G + (row * stride_g_row + col0) + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + (row * stride_u_row + col0) + cols, mask=mask, other=0.0).to(tl.float32)
    a, _ = _activation(g, ACTIVATION)
    tl.store(Y + (row * N + col0) + cols, cast_to(a * u, Y.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(
    DY, stride_dy_row,  # upstream gradient [M, N]
    G, stride_g_row,    # gate [M, N]
    U, stride_u_row,    # up [M, N]
    DG, stride_dg_row,  # d_gate [M, N] (for a fused projection: the first half of d_fused's rows)
    DU, stride_du_row,  # d_up [M, N] (fused: DG + N)
    N,
    BLOCK_N: tl.constexpr, ACTIVATION: tl.constexpr, ALIGN: tl.constexpr,
):
    if ALIGN > 1:  # as in the forward
        N = N // ALIGN * ALIGN
        stride_dy_row = stride_dy_row // ALIGN * ALIGN
        stride_g_row = stride_g_row // ALIGN * ALIGN
        stride_u_row = stride_u_row // ALIGN * ALIGN
        stride_dg_row = stride_dg_row // ALIGN * ALIGN
        stride_du_row = stride_du_row // ALIGN * ALIGN
    # d_gate = dy * up * act'(gate), d_up = dy * act(gate): the activation recomputed, nothing saved.
    row = tl.program_id(0).to(tl.int64)
    col0 = tl.program_id(1).to(tl.int64) * BLOCK_N  # int64, as in the forward
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N - col0
    dy = tl.load(DY + (row * stride_dy_row + col0) + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + (row * stride_g_row + col0) + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + (row * stride_u_row + col0) + cols, mask=mask, other=0.0).to(tl.float32)
    a, da = _activation(g, ACTIVATION)
    DTYPE = DG.dtype.element_ty
    tl.store(DG + (row * stride_dg_row + col0) + cols, cast_to(dy * u * da, DTYPE), mask=mask)
    tl.store(DU + (row * stride_du_row + col0) + cols, cast_to(dy * a, DTYPE), mask=mask)


def _config(n):
    return next((b for b in BLOCKS if b[0] >= n), BLOCKS[-1])


# The backward of exact GELU (erf and its derivative) on unaligned rows (16-bit accesses, an address per element)
# needs more than 16 elements per thread can hold: at (4096, 8) it spills 8 bytes of stack on sm_80. Half the block
# (8 elements a thread) does not (eurokernels.inspect).
_BWD_GELU_UNALIGNED = (2048, 8)


def _bwd_config(n, activation, align):
    """The backward's (BLOCK_N, num_warps): _config's, but _BWD_GELU_UNALIGNED for exact GELU on unaligned rows
    longer than its block."""
    block, warps = _config(n)
    if activation == ACTIVATION["gelu"] and align == 1 and block > _BWD_GELU_UNALIGNED[0]:
        return _BWD_GELU_UNALIGNED
    return block, warps


def _grid(m, n, block_n):
    return (m, triton.cdiv(n, block_n))


def forward(gate, up, activation):
    """gate, up: [M, N] with unit stride along N (any row strides). Returns y [M, N], contiguous."""
    M, N = gate.shape
    y = torch.empty((M, N), dtype=gate.dtype, device=gate.device)
    if M == 0 or N == 0:
        return y
    block, warps = _config(N)
    launch(swiglu_fwd_kernel, _grid(M, N, block),
        gate, gate.stride(0), up, up.stride(0), y, N, BLOCK_N=block, ACTIVATION=activation,
        ALIGN=row_alignment(gate.element_size(), N, gate.stride(0), up.stride(0)), num_warps=warps)
    return y


def backward(dy, gate, up, activation, fused):
    """dy, gate, up: [M, N] with unit stride along N. Returns (d_gate, d_up): with ``fused`` one [M, 2N] gradient
    (d_gate half, then d_up half) and an empty d_up, else two [M, N] tensors; all contiguous."""
    M, N = gate.shape
    if fused:  # one [M, 2N] gradient: its halves are the kernel's two outputs (row stride 2N)
        d = torch.empty((M, 2 * N), dtype=gate.dtype, device=gate.device)
        dg, du, d_out = d[:, :N], d[:, N:], (d, gate.new_empty(0))
    else:
        dg, du = (torch.empty((M, N), dtype=gate.dtype, device=gate.device) for _ in range(2))
        d_out = (dg, du)
    if M == 0 or N == 0:
        return d_out
    strides = (dy.stride(0), gate.stride(0), up.stride(0), dg.stride(0), du.stride(0))
    align = row_alignment(gate.element_size(), N, *strides)
    block, warps = _bwd_config(N, activation, align)
    launch(swiglu_bwd_kernel, _grid(M, N, block),
        dy, dy.stride(0), gate, gate.stride(0), up, up.stride(0), dg, dg.stride(0), du, du.stride(0), N,
        BLOCK_N=block, ACTIVATION=activation, ALIGN=align, num_warps=warps)
    return d_out


def _representative_calls():
    """Forward and backward (fused and separate gradients) for the three activations in bf16, 8192 tokens, over the
    intermediate sizes of European models, a multiple of 8 but not 16 (4104), an odd one (4097), and the small
    ones that pick the smaller blocks."""
    for n in (256, 1000, 1024, 4097, 4104, 8192, 11008, 14336, 16384, 24576):
        fused = torch.empty((TOKENS, 2 * n), dtype=torch.bfloat16, device="cuda")
        gate, up = fused[:, :n], fused[:, n:]
        for act in ACTIVATION.values():
            y = forward(gate, up, act)
            backward(torch.empty_like(y), gate, up, act, True)
            backward(torch.empty_like(y), gate, up, act, False)


def _describe(launch_):
    c = launch_.constexprs
    name = "swiglu_fwd" if launch_.kernel is swiglu_fwd_kernel else "swiglu_bwd"
    act = {v: k for k, v in ACTIVATION.items()}[c["ACTIVATION"]]
    return dict(name=name, memory_bound=True, rows_aligned=c["ALIGN"] > 1, block=c["BLOCK_N"], activation=act)


@functools.cache
def aot_specs():
    """Every kernel configuration the launchers pick for _representative_calls(), as the JIT specializes it
    (eurokernels/triton/_launch.py). Both kernels are memory-bound."""
    return recorded_specs(_representative_calls, _describe)
