"""Rotary embedding Triton kernel and launcher (math and conventions: eurokernels/reference.py apply_rotary).

One kernel for both directions: CONJUGATE=True rotates by -theta, which is the backward. One program per token
rotates all q heads and all k heads of that token (so GQA head counts may differ), loading the token's cos/sin row
once. Head rows are swept BLOCK_H at a time.

Alignment: Triton's JIT only knows that an integer is a multiple of 16 or of nothing, so a head_dim of 80 (row
stride 80, half 40) would compile to scalar accesses. The launcher therefore passes the strides, head_dim and
rotary_dim / 2 in units of ALIGN elements (ALIGN = 8 when all of them are multiples of 8, else 1) and the kernel
multiplies them back by the constexpr ALIGN: the compiler then sees every row start 16-byte aligned (for 16-bit
dtypes) and emits 128-bit accesses for any head_dim that is a multiple of 8.
"""
import torch
import triton
import triton.language as tl

from . import next_pow2
from ._common import cast_to
from ._launch import launch

MAX_BLOCK_HALF = 512  # rotary_dim up to 1024 (head dims in use are <= 256)
TILE = 2048           # elements of x1 (and of x2) a program holds at once: BLOCK_H * BLOCK_HALF; 8 bf16
                      # (128 bits) per thread at 4 warps of 64 threads (AMD), 16 at 4 warps of 32 (NVIDIA)
NUM_WARPS = 4


@triton.jit
def _position(t, s, POS, CU_SEQLENS, n_seqs, n_positions, POS_MODE: tl.constexpr):
    """(row of the cos/sin table, whether the token has a valid one); see token_position in rotary_common.h."""
    if POS_MODE == 1:  # explicit position_ids
        p = tl.load(POS + t)
        ok = True
    elif POS_MODE == 2:  # packed: binary search for the last sequence start <= t
        ok = (t >= tl.load(CU_SEQLENS).to(tl.int64)) & (t < tl.load(CU_SEQLENS + n_seqs).to(tl.int64))
        lo = t * 0
        hi = lo + n_seqs - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            go = tl.load(CU_SEQLENS + mid).to(tl.int64) <= t
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid - 1)
        p = t - tl.load(CU_SEQLENS + lo).to(tl.int64)
    else:  # index along seqlen
        p = s
        ok = True
    ok = ok & (p >= 0) & (p < n_positions)
    return tl.where(ok, p, 0), ok


@triton.jit
def _rotate_heads(X, stride_x_head, O, stride_o_head, n_heads, c, sn, head_dim, half,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                  COPY_PASS: tl.constexpr):
    """Rotate the first 2 * half features of n_heads head rows of one token (X -> O); c, sn: [1, BLOCK_HALF] fp32
    cos and signed sin. COPY_PASS copies features past 2 * half (out of place with partial rotary)."""
    DTYPE = O.dtype.element_ty
    rows = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    for h0 in range(0, n_heads, BLOCK_H):
        h = h0 + rows
        hmask = h < n_heads
        x_row = X + h * stride_x_head  # int64 products: the strides come in as int64 (head x stride > 2^31)
        o_row = O + h * stride_o_head
        if INTERLEAVED:  # GPT-J: pairs (2j, 2j + 1), loaded as one contiguous [BLOCK_H, 2 * BLOCK_HALF] tile
            cols2 = tl.arange(0, 2 * BLOCK_HALF)[None, :]
            mask2 = hmask & (cols2 < 2 * half)
            x = tl.load(x_row + cols2, mask=mask2, other=0.0).to(tl.float32)
            x1, x2 = tl.split(tl.reshape(x, [BLOCK_H, BLOCK_HALF, 2]))
            o = tl.join(x1 * c - x2 * sn, x2 * c + x1 * sn)
            tl.store(o_row + cols2, cast_to(tl.reshape(o, [BLOCK_H, 2 * BLOCK_HALF]), DTYPE), mask=mask2)
        else:  # NeoX / Llama: pairs (i, i + half)
            mask = hmask & (cols < half)
            x1 = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(x_row + half + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(o_row + cols, cast_to(x1 * c - x2 * sn, DTYPE), mask=mask)
            tl.store(o_row + half + cols, cast_to(x2 * c + x1 * sn, DTYPE), mask=mask)
        if COPY_PASS:
            for c0 in range(2 * half, head_dim, BLOCK_HALF):
                pmask = hmask & (c0 + cols < head_dim)
                tl.store(o_row + c0 + cols, tl.load(x_row + c0 + cols, mask=pmask), mask=pmask)


@triton.jit
def rotary_kernel(
    Q, stride_q_batch, stride_q_seq, stride_q_head,        # q [batch, seqlen, n_q_heads, head_dim]
    K, stride_k_batch, stride_k_seq, stride_k_head,        # k [batch, seqlen, n_k_heads, head_dim]
    Q_OUT, stride_qo_batch, stride_qo_seq, stride_qo_head,  # rotated q (Q itself when in place)
    K_OUT, stride_ko_batch, stride_ko_seq, stride_ko_head,  # rotated k (K itself when in place)
    COS, SIN,            # [n_positions, half] contiguous, fp32 or q's dtype
    POS,                 # int64 [batch * seqlen] explicit positions (POS_MODE == 1)
    CU_SEQLENS,          # int32 [n_seqs + 1] packed sequence offsets (POS_MODE == 2, batch == 1)
    n_seqs, seqlen, n_q_heads, n_k_heads, head_dim, half, n_positions,
    ALIGN: tl.constexpr,  # strides, head_dim and half are given in units of ALIGN elements (see module docstring)
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr,
    POS_MODE: tl.constexpr, COPY_PASS: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)  # the token; int64 before multiplying by strides
    b = t // seqlen
    s = t % seqlen
    p, ok = _position(t, s, POS, CU_SEQLENS, n_seqs, n_positions, POS_MODE)
    half = half * ALIGN
    head_dim = head_dim * ALIGN
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    cmask = (cols < half) & ok  # a token without a valid position reads nothing and gets NaN
    c = tl.load(COS + p * half + cols, mask=cmask, other=float("nan")).to(tl.float32)
    sn = tl.load(SIN + p * half + cols, mask=cmask, other=float("nan")).to(tl.float32)
    if CONJUGATE:
        sn = -sn
    # Offsets in int64: b and s are int64, and multiply the strides before ALIGN does (stride * ALIGN alone is the
    # stride in elements, which can pass 2^31 while the i32 argument stride / ALIGN does not); the head strides
    # are widened here since _rotate_heads multiplies them by an int32 head index.
    _rotate_heads(Q + b * stride_q_batch * ALIGN + s * stride_q_seq * ALIGN,
                  tl.cast(stride_q_head, tl.int64) * ALIGN,
                  Q_OUT + b * stride_qo_batch * ALIGN + s * stride_qo_seq * ALIGN,
                  tl.cast(stride_qo_head, tl.int64) * ALIGN,
                  n_q_heads, c, sn, head_dim, half, BLOCK_H, BLOCK_HALF, INTERLEAVED, COPY_PASS)
    _rotate_heads(K + b * stride_k_batch * ALIGN + s * stride_k_seq * ALIGN,
                  tl.cast(stride_k_head, tl.int64) * ALIGN,
                  K_OUT + b * stride_ko_batch * ALIGN + s * stride_ko_seq * ALIGN,
                  tl.cast(stride_ko_head, tl.int64) * ALIGN,
                  n_k_heads, c, sn, head_dim, half, BLOCK_H, BLOCK_HALF, INTERLEAVED, COPY_PASS)


def block_config(half, align, interleaved):
    """(BLOCK_HALF, BLOCK_H) for rotary_dim / 2 == half. Aligned rows (ALIGN 8) get TILE elements per array:
    enough for 128-bit accesses on every target. Unaligned rows are accessed element by element, each with its
    own address registers: a quarter of the tile keeps those in check. The interleaved (GPT-J) layout at
    BLOCK_HALF 256 aligned gets half the tile: ptxas gives its full tile 8 bytes of stack (2 STL/LDL) on sm_90,
    at only 48 registers (eurokernels.inspect); 1024 elements still give a thread 16 bytes of each array."""
    block_half = max(1, next_pow2(half))
    tile = TILE if align == 8 else TILE // 4
    if interleaved and align == 8 and block_half == 256:
        tile //= 2
    return block_half, max(1, tile // block_half)


def rotary(q, k, q_out, k_out, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
    """See eurokernels/ops/rotary.py: 4-D views with a unit stride along head_dim; writes q_out and k_out (fresh
    contiguous tensors when None) and returns them."""
    if q_out is None:
        q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype,
                                                                                          device=k.device)
    batch, seqlen, _, head_dim = q.shape
    half = cos.shape[1]
    if half > MAX_BLOCK_HALF:
        raise ValueError(f"cos: the triton backend supports rotary_dim <= {2 * MAX_BLOCK_HALF}, got {2 * half}")
    if batch * seqlen == 0:
        return q_out, k_out
    strides = [t.stride(d) for t in (q, k, q_out, k_out) for d in range(3)]
    align = 8 if all(v % 8 == 0 for v in strides + [head_dim, half]) else 1
    block_half, block_h = block_config(half, align, interleaved)
    # Out of place unless the outputs are the inputs (compared per side: an empty side may have a null pointer).
    out_of_place = q_out.data_ptr() != q.data_ptr() or k_out.data_ptr() != k.data_ptr()
    pos_mode = 1 if position_ids is not None else 2 if cu_seqlens is not None else 0
    launch(rotary_kernel, (batch * seqlen,),
        q, *[v // align for v in strides[0:3]], k, *[v // align for v in strides[3:6]],
        q_out, *[v // align for v in strides[6:9]], k_out, *[v // align for v in strides[9:12]],
        cos, sin, position_ids if position_ids is not None else cos,
        cu_seqlens if cu_seqlens is not None else cos,  # placeholders are never read: POS_MODE compiles it away
        cu_seqlens.shape[0] - 1 if cu_seqlens is not None else 0, seqlen, q.shape[2], k.shape[2],
        head_dim // align, half // align, cos.shape[0],
        ALIGN=align, BLOCK_H=block_h, BLOCK_HALF=block_half, INTERLEAVED=interleaved, CONJUGATE=conjugate,
        POS_MODE=pos_mode, COPY_PASS=out_of_place and 2 * half < head_dim,
        num_warps=NUM_WARPS)
    return q_out, k_out


def aot_specs():
    """Every kernel x launch configuration the launcher can pick, for the AOT checks (eurokernels/inspect): each
    BLOCK_HALF (rotary_dim 2 .. 1024) x layout x ALIGN. Compiled with the heaviest flags (packed positions with
    the binary search, conjugate, pass-through copy) at bf16 with fp32 tables. ALIGN=8 rows mark the pointers
    aligned, as the JIT assumes for head_dim a multiple of 8: those must show 128-bit loads and stores."""
    specs = []
    sig = dict(Q="*bf16", stride_q_batch="i32", stride_q_seq="i32", stride_q_head="i32",
               K="*bf16", stride_k_batch="i32", stride_k_seq="i32", stride_k_head="i32",
               Q_OUT="*bf16", stride_qo_batch="i32", stride_qo_seq="i32", stride_qo_head="i32",
               K_OUT="*bf16", stride_ko_batch="i32", stride_ko_seq="i32", stride_ko_head="i32",
               COS="*fp32", SIN="*fp32", POS="*i64", CU_SEQLENS="*i32",
               n_seqs="i32", seqlen="i32", n_q_heads="i32", n_k_heads="i32", head_dim="i32", half="i32",
               n_positions="i32")
    for k in range(MAX_BLOCK_HALF.bit_length()):
        for interleaved in (False, True):
            for align in (1, 8) if 1 << k >= 8 else (1,):  # ALIGN=8 needs half % 8 == 0
                block_half, block_h = block_config(1 << k, align, interleaved)
                specs.append(dict(
                    name=f"rotary_{'gptj' if interleaved else 'neox'}", variant=f"half{block_half}_align{align}",
                    kernel=rotary_kernel, num_warps=NUM_WARPS, signature=sig,
                    memory_bound=True, rows_aligned=align == 8, block=block_h * block_half,
                    constexprs=dict(ALIGN=align, BLOCK_H=block_h, BLOCK_HALF=block_half, INTERLEAVED=interleaved,
                                    CONJUGATE=True, POS_MODE=2, COPY_PASS=True),
                    aligned=["Q", "K", "Q_OUT", "K_OUT", "COS", "SIN", "POS", "CU_SEQLENS"] if align == 8 else []))
    return specs
