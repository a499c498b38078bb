"""Attention Triton kernels and launchers: FlashAttention-2 forward and backward (math: eurokernels/reference.py).

Layout (packed): q [total_q, hq, d], k/v [total_k, hk, d] with a unit stride along d; int32 cu_seqlens_q/k
[n_docs + 1]; lse and delta [hq, total_q] fp32. Program ids: axis 0 = document x head (can exceed 65535), axis 1 =
block of queries (forward, dq) or keys (dk/dv).

- Scores are kept in log2 units: the softmax scale is multiplied by log2(e) once, so the kernels use exp2.
- Masks: query i of a document sits at key position i + sk - sq (bottom-right alignment) and sees keys
  [pos - left, pos + right]; the launcher turns "unbounded" (-1) into a large window so the kernels never branch
  on it. Key (or query) blocks outside a block's visible band are never loaded; in the forward only the blocks that
  cross the band's edge evaluate the mask.
- Backward without atomics: a dk/dv program owns one key block of one kv head and loops over every query head of
  its group; a dq program owns one query block. Deterministic by construction.
- A row that sees no key keeps m = -inf and l = 0: output 0, lse = -inf; the backward reads that lse as +inf so
  exp2(s - lse) = 0.
"""
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import next_pow2
from ._common import cast_to
from ._launch import fake_cuda, launch, recording, recording_family, specs_from_launches
from .._backend import triton_interpreter_enabled

LOG2E = 1.4426950408889634
UNBOUNDED = 1 << 30  # a window side of -1 (unbounded) becomes this many tokens


@triton.jit
def _tanh(x):
    """tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits for large |x|, portable (no libdevice), fp32."""
    return 1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0)


@triton.jit
def _scores(qk, qk_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """Raw q.k -> (scores in log2 units, tanh for the softcap derivative). With a softcap, qk_scale is
    scale / softcap, else scale * log2(e)."""
    if HAS_SOFTCAP:
        t = _tanh(qk * qk_scale)
        return t * (softcap * 1.4426950408889634), t
    else:
        return qk * qk_scale, qk


@triton.jit
def _program(CU_Q, CU_K, n_heads):
    """This program's head (axis 0 = document x head) and its document's first query and key token, all int64
    (head x stride_head, head x total_q and total tokens x strides can pass 2^31), and lengths (int32: positions
    inside a document stay int32; they are widened wherever they meet a stride)."""
    doc = tl.program_id(0) // n_heads
    q0 = tl.load(CU_Q + doc)
    k0 = tl.load(CU_K + doc)
    return ((tl.program_id(0) % n_heads).to(tl.int64), q0.to(tl.int64), tl.load(CU_Q + doc + 1) - q0,
            k0.to(tl.int64), tl.load(CU_K + doc + 1) - k0)


@triton.jit
def _band(start, n, n_other, shift, before, after, BLOCK: tl.constexpr, BLOCK_OTHER: tl.constexpr):
    """Rows of the other side that the block [start, start + BLOCK) of this side (n long) may see: [lo_blk, end),
    lo_blk rounded down to a multiple of BLOCK_OTHER (empty when end == lo_blk), and the block's last row. A query
    i sees the keys [i + shift - left, i + shift + right] (shift = sk - sq): (n, n_other, shift, before, after) =
    (sq, sk, shift, left, right). A key j is seen by the queries [j - shift - right, j - shift + left]: the same
    with (sk, sq, -shift, right, left)."""
    last = tl.minimum(start + BLOCK, n) - 1
    lo = tl.maximum(start + shift - before, 0)
    hi = tl.minimum(last + shift + after + 1, n_other)
    lo_blk = lo // BLOCK_OTHER * BLOCK_OTHER
    return lo_blk, tl.where(hi > lo, hi, lo_blk), last


@triton.jit
def _query_block(sq, BLOCK_M: tl.constexpr):
    """First query of this program's block, the document's last block first (axis 1 counts down from it): under a
    causal (or any right-bounded) mask the last query blocks see the most keys, so the longest programs start
    first and the short ones fill the tail. Negative once the document has no block left for this program
    (a shorter document of a varlen batch): such programs exit after this one load-free test."""
    return (tl.cdiv(sq, BLOCK_M) - 1 - tl.program_id(1)) * BLOCK_M


@triton.jit
def _visible(offs_q, offs_k, valid, shift, window_left, window_right):
    """Whether query offs_q sees key offs_k (broadcast shapes; query i sits at key i + shift, shift = sk - sq);
    valid: where both exist (at least offs_k < sk)."""
    pos = offs_q + shift
    return valid & (offs_k >= pos - window_left) & (offs_k <= pos + window_right)


@triton.jit
def _load_rows(PTR, stride_tok, offs, n, offs_d, d_mask, TRANSPOSE: tl.constexpr):
    """Rows offs (< n) of a [tokens, d] slice with a unit stride along d, zero-padded: [rows, d] or, transposed,
    [d, rows]. Row offsets in int64: a document's length x stride_tok can pass 2^31 (the product is formed on the
    [rows] vector, so the [rows, d] tile only pays one 64-bit add per element, as any pointer does)."""
    rows = offs.to(tl.int64) * stride_tok
    if TRANSPOSE:
        return tl.load(PTR + rows[None, :] + offs_d[:, None], mask=d_mask[:, None] & (offs[None, :] < n), other=0.0)
    else:
        return tl.load(PTR + rows[:, None] + offs_d[None, :], mask=(offs[:, None] < n) & d_mask[None, :], other=0.0)


@triton.jit
def _store_rows(PTR, start, head, n_heads, head_dim, offs, n, offs_d, d_mask, x):
    """x [rows, d] into rows start + offs (offs < n) of head `head` of a contiguous [tokens, n_heads, head_dim]."""
    stride_tok = n_heads.to(tl.int64) * head_dim  # int64: rows x heads x head_dim can pass 2^31
    tl.store(PTR + start * stride_tok + head * head_dim + offs.to(tl.int64)[:, None] * stride_tok + offs_d[None, :],
             cast_to(x, PTR.dtype.element_ty), mask=(offs[:, None] < n) & d_mask[None, :])


@triton.jit
def _probs(s, lse, visible):
    """The backward's P = exp2(s - lse) where visible, else 0 (s, lse in log2 units)."""
    return tl.where(visible, tl.exp2(s - lse), 0.0)


@triton.jit
def _dscores(p, dp, delta, t, HAS_SOFTCAP: tl.constexpr):
    """dS = P (dP - delta), times tanh' = 1 - t^2 under a soft cap (the gradient w.r.t. the raw scores)."""
    ds = p * (dp - delta)
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    return ds


@triton.jit
def _fwd_blocks(acc, m_i, l_i, q, K_DOC, V_DOC, stride_k_tok, stride_v_tok, start, end, offs_m, offs_d, d_mask,
                sk, shift, window_left, window_right, qk_scale, softcap,
                BLOCK_N: tl.constexpr, MASKED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """Online-softmax update of one query block over the key blocks [start, end)."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt = _load_rows(K_DOC, stride_k_tok, offs_n, sk, offs_d, d_mask, True)
        s, _ = _scores(tl.dot(q, kt, input_precision=DOT_PRECISION), qk_scale, softcap, HAS_SOFTCAP)
        if MASKED:
            visible = _visible(offs_m[:, None], offs_n[None, :], offs_n[None, :] < sk, shift, window_left,
                               window_right)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet: p = exp2(-inf) = 0
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V_DOC, stride_v_tok, offs_n, sk, offs_d, d_mask, False)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attention_fwd_kernel(
    Q, stride_q_tok, stride_q_head,  # [total_q, hq, d]
    K, stride_k_tok, stride_k_head,  # [total_k, hk, d]
    V, stride_v_tok, stride_v_head,  # [total_k, hk, d]
    O,                               # output [total_q, hq, d], contiguous
    LSE,                             # output [hq, total_q] fp32 (natural log)
    CU_Q, CU_K,                      # int32 [n_docs + 1]
    total_q, n_heads_q, group, head_dim, qk_scale, softcap, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    head, q_start, sq, k_start, sk = _program(CU_Q, CU_K, n_heads_q)
    i0 = _query_block(sq, BLOCK_M)
    if i0 < 0:
        return
    shift = sk - sq
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    q = _load_rows(Q + q_start * stride_q_tok + head * stride_q_head, stride_q_tok, offs_m, sq, offs_d, d_mask, False)
    K_DOC = K + k_start * stride_k_tok + (head // group) * stride_k_head
    V_DOC = V + k_start * stride_v_tok + (head // group) * stride_v_head

    # Key blocks this block sees: [lo_blk, hi_blk); every key of [full_lo, full_hi) is seen by every row of the block.
    lo_blk, end, i_last = _band(i0, sq, sk, shift, window_left, window_right, BLOCK_M, BLOCK_N)
    hi_blk = tl.cdiv(end, BLOCK_N) * BLOCK_N  # lo_blk when empty (a multiple of BLOCK_N)
    full_lo = tl.maximum(i_last + shift - window_left, 0)
    full_hi = tl.minimum(i0 + shift + window_right + 1, sk)
    fs = tl.minimum(tl.maximum(tl.cdiv(full_lo, BLOCK_N) * BLOCK_N, lo_blk), hi_blk)
    fe = tl.minimum(tl.maximum(full_hi // BLOCK_N * BLOCK_N, fs), hi_blk)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _fwd_blocks(acc, m_i, l_i, q, K_DOC, V_DOC, stride_k_tok, stride_v_tok, lo_blk, fs, offs_m,
                                offs_d, d_mask, sk, shift, window_left, window_right, qk_scale, softcap,
                                BLOCK_N, True, HAS_SOFTCAP, DOT_PRECISION)
    acc, m_i, l_i = _fwd_blocks(acc, m_i, l_i, q, K_DOC, V_DOC, stride_k_tok, stride_v_tok, fs, fe, offs_m,
                                offs_d, d_mask, sk, shift, window_left, window_right, qk_scale, softcap,
                                BLOCK_N, False, HAS_SOFTCAP, DOT_PRECISION)
    acc, m_i, l_i = _fwd_blocks(acc, m_i, l_i, q, K_DOC, V_DOC, stride_k_tok, stride_v_tok, fe, hi_blk, offs_m,
                                offs_d, d_mask, sk, shift, window_left, window_right, qk_scale, softcap,
                                BLOCK_N, True, HAS_SOFTCAP, DOT_PRECISION)

    # l = 0: the row saw no key (zeros, lse -inf). A NaN score (NaN or inf * 0 in q, k) makes l NaN: out and lse are
    # then NaN, as PyTorch's softmax gives, never a silent "no key".
    empty = l_i == 0.0
    out = acc * tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, l_i))[:, None]
    _store_rows(O, q_start, head, n_heads_q, head_dim, offs_m, sq, offs_d, d_mask, out)
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(LSE + (head * total_q + q_start) + offs_m, lse, mask=offs_m < sq)


@triton.jit
def attention_bwd_preprocess_kernel(
    O, stride_o_tok, stride_o_head,     # forward output [total_q, hq, d]
    DO, stride_do_tok, stride_do_head,  # its gradient [total_q, hq, d]
    DELTA,                              # output [hq, total_q] fp32: rowsum(dO * O)
    total_q, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(0).to(tl.int64)  # head x total_q (DELTA) can pass 2^31
    offs_m = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < total_q) & (offs_d[None, :] < head_dim)
    o = tl.load(O + offs_m[:, None] * stride_o_tok + head * stride_o_head + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_do_tok + head * stride_do_head + offs_d[None, :], mask=mask, other=0.0)
    tl.store(DELTA + head * total_q + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1),
             mask=offs_m < total_q)


@triton.jit
def _row_stats(LSE, DELTA, row0, offs_m, m_mask):
    """lse in log2 units (+inf where no key is visible, so exp2(s - lse) = 0) and delta for query rows."""
    lse = tl.load(LSE + row0 + offs_m, mask=m_mask, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + row0 + offs_m, mask=m_mask, other=0.0)
    return lse, delta


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, stride_q_tok, stride_q_head,     # [total_q, hq, d]
    K, stride_k_tok, stride_k_head,     # [total_k, hk, d]
    V, stride_v_tok, stride_v_head,     # [total_k, hk, d]
    DO, stride_do_tok, stride_do_head,  # [total_q, hq, d]
    LSE, DELTA,                         # [hq, total_q] fp32
    DK, DV,                             # outputs [total_k, hk, d], contiguous
    CU_Q, CU_K,                         # int32 [n_docs + 1]
    total_q, n_heads_k, group, head_dim, qk_scale, softcap, scale, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One key block of one kv head: dV = sum P^T dO, dK = scale sum dS^T Q over the query heads of its group.
    head_k, q_start, sq, k_start, sk = _program(CU_Q, CU_K, n_heads_k)
    # Key blocks in order: under a causal mask the first key blocks are seen by the most queries (heavy first).
    j0 = tl.program_id(1) * BLOCK_N
    if j0 >= sk:
        return
    shift = sk - sq
    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    k = _load_rows(K + k_start * stride_k_tok + head_k * stride_k_head, stride_k_tok, offs_n, sk, offs_d, d_mask, False)
    v = _load_rows(V + k_start * stride_v_tok + head_k * stride_v_head, stride_v_tok, offs_n, sk, offs_d, d_mask, False)
    DTYPE = k.dtype
    # Query blocks that see this block: [lo_blk, hi_blk).
    lo_blk, hi_blk, _ = _band(j0, sk, sq, -shift, window_right, window_left, BLOCK_N, BLOCK_M)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, group):
        head = head_k * group + g
        Q_DOC = Q + q_start * stride_q_tok + head * stride_q_head
        DO_DOC = DO + q_start * stride_do_tok + head * stride_do_head
        for start_m in range(lo_blk, hi_blk, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_mask = offs_m < sq
            q = _load_rows(Q_DOC, stride_q_tok, offs_m, sq, offs_d, d_mask, False)
            do = _load_rows(DO_DOC, stride_do_tok, offs_m, sq, offs_d, d_mask, False)
            lse, delta = _row_stats(LSE, DELTA, head * total_q + q_start, offs_m, m_mask)
            # Transposed scores [keys, queries].
            st, t = _scores(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION), qk_scale, softcap, HAS_SOFTCAP)
            visible = _visible(offs_m[None, :], offs_n[:, None], m_mask[None, :] & (offs_n[:, None] < sk), shift,
                               window_left, window_right)
            pt = _probs(st, lse[None, :], visible)
            dv = tl.dot(pt.to(DTYPE), do, dv, input_precision=DOT_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dst = _dscores(pt, dpt, delta[None, :], t, HAS_SOFTCAP)
            dk = tl.dot(dst.to(DTYPE), q, dk, input_precision=DOT_PRECISION)
    # Not _store_rows: one int64 offset tile for both stores takes ~20 fewer registers at head_dim 256 (sm_80/90).
    stride_kv_tok = n_heads_k.to(tl.int64) * head_dim
    base = k_start * stride_kv_tok + head_k * head_dim
    out = offs_n.to(tl.int64)[:, None] * stride_kv_tok + offs_d[None, :]
    kv_mask = (offs_n[:, None] < sk) & d_mask[None, :]
    tl.store(DK + base + out, cast_to(dk * scale, DTYPE), mask=kv_mask)
    tl.store(DV + base + out, cast_to(dv, DTYPE), mask=kv_mask)


@triton.jit
def attention_bwd_dq_kernel(
    Q, stride_q_tok, stride_q_head,     # [total_q, hq, d]
    K, stride_k_tok, stride_k_head,     # [total_k, hk, d]
    V, stride_v_tok, stride_v_head,     # [total_k, hk, d]
    DO, stride_do_tok, stride_do_head,  # [total_q, hq, d]
    LSE, DELTA,                         # [hq, total_q] fp32
    DQ,                                 # output [total_q, hq, d], contiguous
    CU_Q, CU_K,                         # int32 [n_docs + 1]
    total_q, n_heads_q, group, head_dim, qk_scale, softcap, scale, window_left, window_right,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One query block of one head: dQ = scale sum dS K over the key blocks it sees.
    head, q_start, sq, k_start, sk = _program(CU_Q, CU_K, n_heads_q)
    i0 = _query_block(sq, BLOCK_M)
    if i0 < 0:
        return
    shift = sk - sq
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    q = _load_rows(Q + q_start * stride_q_tok + head * stride_q_head, stride_q_tok, offs_m, sq, offs_d, d_mask, False)
    do = _load_rows(DO + q_start * stride_do_tok + head * stride_do_head, stride_do_tok, offs_m, sq, offs_d, d_mask,
                    False)
    DTYPE = q.dtype
    lse, delta = _row_stats(LSE, DELTA, head * total_q + q_start, offs_m, offs_m < sq)
    K_DOC = K + k_start * stride_k_tok + (head // group) * stride_k_head
    V_DOC = V + k_start * stride_v_tok + (head // group) * stride_v_head
    lo_blk, hi_blk, _ = _band(i0, sq, sk, shift, window_left, window_right, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo_blk, hi_blk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt = _load_rows(K_DOC, stride_k_tok, offs_n, sk, offs_d, d_mask, True)
        vt = _load_rows(V_DOC, stride_v_tok, offs_n, sk, offs_d, d_mask, True)
        s, t = _scores(tl.dot(q, kt, input_precision=DOT_PRECISION), qk_scale, softcap, HAS_SOFTCAP)
        visible = _visible(offs_m[:, None], offs_n[None, :], offs_n[None, :] < sk, shift, window_left, window_right)
        p = _probs(s, lse[:, None], visible)
        dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
        ds = _dscores(p, dp, delta[:, None], t, HAS_SOFTCAP)
        dq = tl.dot(ds.to(DTYPE), tl.trans(kt), dq, input_precision=DOT_PRECISION)
    _store_rows(DQ, q_start, head, n_heads_q, head_dim, offs_m, sq, offs_d, d_mask, dq * scale)


# ---- launch configurations ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttnConfig:
    block_m: int  # queries per block
    block_n: int  # keys per block
    num_warps: int
    num_stages: int = 2  # software-pipelining depth of the key (forward, dq) or query (dk/dv) loop


def _table(fwd, dkdv, dq):
    """{kernel: {padded head dim: config}} from per-kernel (block_m, block_n, num_warps, num_stages) tuples over the
    head dims 16, 32, 64, 128, 256."""
    dims = (16, 32, 64, 128, 256)
    return {name: {bd: AttnConfig(*c) for bd, c in zip(dims, cfgs)}
            for name, cfgs in (("fwd", fwd), ("dkdv", dkdv), ("dq", dq))}


# bf16/fp16 launch configurations per GPU family (gpu_family()) and kernel and padded head dim (BLOCK_D), each
# checked by compiling aot_specs() for its targets with the softcap (the heaviest variant): 0 spill instructions
# (STL/LDL, STACK, LOCAL; AMD ScratchSize), shared memory / LDS within the arch's limit. The README's GPU section
# lists what each compiles to. Why the shapes differ:
# - sm_90 (H100): wgmma needs 64 rows per warpgroup, so every tile whose rows are the MMA's M is >= 64 (forward
#   and dq: BLOCK_M; dk/dv: BLOCK_N, the keys) and the forward's QK^T gets N = BLOCK_N of 64-128; deeper pipelines
#   (num_stages 3 at d128) where the 227 KB of shared memory allow.
# - sm_80 (A100; and any other NVIDIA GPU): mma.sync keeps the A operand (q, k) in registers, so the tiles that fit
#   without spills are smaller than on sm_90 at d64-d256.
# - hip (MI250X gfx90a, MI300X gfx942): 64-wide waves; with 8 waves a workgroup gets only 256 VGPRs per lane (no
#   AGPRs), where 4 waves also get the 256 AGPRs, so the backward runs 4 waves with smaller blocks; LDS 64 KB.
GPU_CONFIGS = {
    "sm_90": _table(
        fwd=[(128, 64, 4, 2), (128, 64, 4, 2), (128, 128, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2)],
        dkdv=[(64, 64, 8, 2), (64, 64, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2), (16, 64, 8, 2)],
        dq=[(64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 8, 2)]),
    "sm_80": _table(
        fwd=[(128, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 8, 2)],
        dkdv=[(64, 64, 8, 2), (64, 64, 8, 2), (32, 64, 8, 2), (32, 64, 8, 2), (16, 32, 8, 2)],
        dq=[(64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 8, 2)]),
    "hip": _table(
        fwd=[(128, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 2)],
        dkdv=[(64, 64, 4, 2), (64, 64, 4, 2), (32, 64, 4, 2), (32, 64, 4, 1), (16, 64, 4, 1)],
        dq=[(64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 2), (64, 32, 8, 2), (64, 16, 4, 2)]),
}
# The AOT targets each family's configs are compiled for (eurokernels/inspect/aot.py TARGETS).
FAMILY_TARGETS = {"sm_80": ("sm_80",), "sm_90": ("sm_90",), "hip": ("gfx90a", "gfx942")}


def gpu_family(device):
    """Which GPU_CONFIGS a device gets: "hip" on ROCm builds, "sm_90" on Hopper (compute capability 9.x), else
    "sm_80" (Ampere; Ada and Blackwell also take these, unchecked: inspect compiles for sm_80 and sm_90 only).
    While recording AOT specs (eurokernels/triton/_launch.py), the family being recorded."""
    if recording_family() is not None:
        return recording_family()
    if torch.version.hip:
        return "hip"
    return "sm_90" if torch.cuda.get_device_capability(device)[0] == 9 else "sm_80"


# fp32 inputs (every GPU family): a deliberate fallback, not tuned for zero spills (marked `fallback` in
# aot_specs(); the README gives the counts); tiles twice the size in registers and shared memory, so smaller query
# blocks. Head dims up to 128 only: at 256 the dk/dv and dq kernels spill on gfx90a/gfx942 at every block shape tried (and the forward needs
# more shared memory than an A100 has), so the launcher refuses fp32 with head_dim > 128.
GPU_CONFIGS_FP32 = {
    "fwd": {16: AttnConfig(128, 64, 4), 32: AttnConfig(128, 64, 4), 64: AttnConfig(64, 64, 4),
            128: AttnConfig(64, 32, 4)},
    "dkdv": {16: AttnConfig(64, 64, 4), 32: AttnConfig(32, 64, 4), 64: AttnConfig(16, 64, 4),
             128: AttnConfig(16, 64, 4)},
    "dq": {16: AttnConfig(64, 64, 4), 32: AttnConfig(64, 64, 4), 64: AttnConfig(32, 64, 4),
           128: AttnConfig(32, 32, 4)},
}
FP32_FALLBACK = "fp32 inputs: spills accepted, never picked for bf16/fp16"
# The spill counters each fp32 fallback spec compiles to, per target (eurokernels/inspect/aot.py SPILL_KEYS:
# NVIDIA LOCAL bytes, STACK bytes, LDL/STL instructions; AMD ScratchSize and private segment bytes), as
# `python -m eurokernels.inspect --json --kernels 'attention_*_fp32'` measured them (Triton 3.8, 2026-12-04).
# tests/test_aot.py lets only these rows spill, and only about this much. Specs not listed spill nothing.
FP32_FALLBACK_SPILLS = {
    "attention_fwd_d16_fp32": {
        "sm_80": dict(spills=0, stack=424, local_insns=450),
        "sm_90": dict(spills=0, stack=40, local_insns=59),
    },
    "attention_bwd_dkdv_d16_fp32": {
        "sm_90": dict(spills=0, stack=704, local_insns=303),
    },
    "attention_fwd_d32_fp32": {
        "sm_80": dict(spills=0, stack=10752, local_insns=30348),
        "sm_90": dict(spills=0, stack=8968, local_insns=24514),
    },
    "attention_bwd_dkdv_d32_fp32": {
        "sm_80": dict(spills=0, stack=24, local_insns=11),
        "sm_90": dict(spills=0, stack=8, local_insns=4),
    },
    "attention_bwd_dq_d32_fp32": {
        "sm_80": dict(spills=0, stack=184, local_insns=97),
        "sm_90": dict(spills=0, stack=32, local_insns=14),
    },
    "attention_fwd_d64_fp32": {
        "sm_80": dict(spills=0, stack=10944, local_insns=30757),
        "sm_90": dict(spills=0, stack=9872, local_insns=29163),
    },
    "attention_bwd_dq_d64_fp32": {
        "sm_80": dict(spills=0, stack=208, local_insns=91),
        "sm_90": dict(spills=0, stack=152, local_insns=74),
    },
    "attention_fwd_d128_fp32": {
        "sm_80": dict(spills=0, stack=8272, local_insns=24492),
        "sm_90": dict(spills=0, stack=7480, local_insns=24818),
    },
    "attention_bwd_dkdv_d128_fp32": {
        "sm_80": dict(spills=0, stack=768, local_insns=761),
        "sm_90": dict(spills=0, stack=848, local_insns=797),
    },
    "attention_bwd_dq_d128_fp32": {
        "sm_80": dict(spills=0, stack=72, local_insns=39),
    },
}
# Under the CPU interpreter: small blocks, so that short test sequences still cross block boundaries.
INTERPRETER_CONFIG = AttnConfig(16, 16, 1)


def preprocess_block_m(bd):
    """Rows per delta program: 4096 elements of O and dO each (16 fp32 registers per thread at 4 warps)."""
    return max(16, 4096 // bd)


def block_d(head_dim):
    return max(16, next_pow2(head_dim))  # tl.dot needs K >= 16


def config(kernel, head_dim, device, dtype):
    if dtype == torch.float32 and block_d(head_dim) not in GPU_CONFIGS_FP32[kernel]:
        raise NotImplementedError(f"attention (triton backend): float32 inputs support head_dim <= 128, got "
                                  f"{head_dim}; use bfloat16/float16, or the cpu or reference backend")
    if device.type == "cpu" and triton_interpreter_enabled():
        return INTERPRETER_CONFIG
    table = GPU_CONFIGS_FP32 if dtype == torch.float32 else GPU_CONFIGS[gpu_family(device)]
    return table[kernel][block_d(head_dim)]


def _precision(dtype):
    # fp32 inputs: exact fp32 products, as the reference (NVIDIA would default to tf32); fp16/bf16: the default.
    return "ieee" if dtype == torch.float32 else None


def _with_strides(*tensors):
    """(t, t.stride(0), t.stride(1)) for each [tokens, heads, d] tensor, as the kernels take them."""
    return tuple(x for t in tensors for x in (t, t.stride(0), t.stride(1)))


def _launch(kernel, name, pointers, n_heads, max_len, q, k, cu_q, cu_k, softmax_scale, left, right, softcap,
            **scalars):
    """Launches the forward, dk/dv or dq kernel (`name`, its key in GPU_CONFIGS): grid (document x head, blocks of
    max_len queries or keys), then the arguments the three share; `scalars` are the kernel's own (scale).
    Nothing to compute (no document, empty sequences): no launch."""
    total_q, hq, d = q.shape
    cfg = config(name, d, q.device, q.dtype)  # refuses fp32 head dims the configs do not cover, even with no work
    n_docs = cu_q.shape[0] - 1
    if n_docs <= 0 or max_len <= 0 or total_q == 0:
        return
    # Scores in log2 units (see _scores); a window side of -1 (unbounded) becomes UNBOUNDED tokens.
    qk_scale, cap = (softmax_scale / softcap, softcap) if softcap > 0 else (softmax_scale * LOG2E, 0.0)
    grid = (n_docs * n_heads, triton.cdiv(max_len, cfg.block_n if name == "dkdv" else cfg.block_m))
    launch(kernel, grid,
        *pointers, cu_q, cu_k, total_q, n_heads, group=hq // k.shape[1], head_dim=d, qk_scale=qk_scale, softcap=cap,
        window_left=UNBOUNDED if left < 0 else left, window_right=UNBOUNDED if right < 0 else right, **scalars,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d(d), HAS_SOFTCAP=softcap > 0,
        DOT_PRECISION=_precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    """q [total_q, hq, d], k/v [total_k, hk, d] (unit stride along d), int32 cu_seqlens -> (out, lse [hq, total_q]).
    Rows outside every document are zero (lse -inf)."""
    total_q, hq, d = q.shape
    out = torch.zeros((total_q, hq, d), dtype=q.dtype, device=q.device)
    lse = torch.full((hq, total_q), float("-inf"), dtype=torch.float32, device=q.device)
    _launch(attention_fwd_kernel, "fwd", (*_with_strides(q, k, v), out, lse), hq, max_q, q, k, cu_q, cu_k, scale,
            left, right, softcap)
    return out, lse


def backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    """Gradients (dq, dk, dv) in the packed layout; lse [hq, total_q] from forward()."""
    total_q, hq, d = q.shape
    total_k, hk = k.shape[0], k.shape[1]
    n_docs = cu_q.shape[0] - 1
    dq = torch.zeros((total_q, hq, d), dtype=q.dtype, device=q.device)
    dk = torch.zeros((total_k, hk, d), dtype=k.dtype, device=k.device)
    dv = torch.zeros((total_k, hk, d), dtype=v.dtype, device=v.device)
    if n_docs <= 0 or total_q == 0 or total_k == 0:
        return dq, dk, dv
    delta = torch.empty((hq, total_q), dtype=torch.float32, device=q.device)
    rows = preprocess_block_m(block_d(d))
    launch(attention_bwd_preprocess_kernel, (hq, triton.cdiv(total_q, rows)),
        *_with_strides(out, dout), delta, total_q, d, BLOCK_M=rows, BLOCK_D=block_d(d), num_warps=4)
    inputs = (*_with_strides(q, k, v, dout), lse, delta)
    args = (q, k, cu_q, cu_k, scale, left, right, softcap)
    if max_k > 0:
        _launch(attention_bwd_dkdv_kernel, "dkdv", (*inputs, dk, dv), hk, max_k, *args, scale=scale)
    if max_q > 0:
        _launch(attention_bwd_dq_kernel, "dq", (*inputs, dq), hq, max_q, *args, scale=scale)
    return dq, dk, dv


# The launch the AOT specs are recorded from, per GPU family and head dim: packed documents of 8192 tokens in all
# (two of 4096), 32 query / 8 key-value heads (GQA, group 4), causal, with a softcap (the heaviest variant).
# Multiples of 16 everywhere, so the JIT marks total_q, n_heads_q, the strides, head_dim and the window bounds
# (UNBOUNDED, 0) divisible by 16, and on AMD every tensor gets a 32-bit pointer range (buffer ops).
AOT_TOKENS, AOT_HEADS = 8192, (32, 8)


def _representative_calls(dtype, dims):
    hq, hk = AOT_HEADS
    for d in dims:
        q = torch.empty((AOT_TOKENS, hq, d), dtype=dtype, device="cuda")
        k = torch.empty((AOT_TOKENS, hk, d), dtype=dtype, device="cuda")
        v = torch.empty_like(k)
        cu = torch.empty(3, dtype=torch.int32, device="cuda")
        half = AOT_TOKENS // 2
        out, lse = forward(q, k, v, cu, cu, half, half, d ** -0.5, -1, 0, 30.0)
        backward(torch.empty_like(out), q, k, v, out, lse, cu, cu, half, half, d ** -0.5, -1, 0, 30.0)


_KIND = {"attention_fwd_kernel": "fwd", "attention_bwd_dkdv_kernel": "bwd_dkdv", "attention_bwd_dq_kernel": "bwd_dq",
         "attention_bwd_preprocess_kernel": "bwd_preprocess"}


def _recorded(family, dtype, dims, extra):
    with fake_cuda(), recording(family=family) as rec:
        _representative_calls(dtype, dims)
    suffix = "fp32" if dtype == torch.float32 else family.replace("_", "")

    def describe(l):
        name = f"attention_{_KIND[l.kernel.fn.__name__]}_d{l.constexprs['BLOCK_D']}_{suffix}"
        return dict(name=name, memory_bound=False, **extra(name))
    return specs_from_launches(rec.launches, describe)


@functools.cache
def aot_specs():
    """Every kernel x launch configuration the launchers can pick on a GPU, for the AOT checks (eurokernels/inspect),
    recorded from the launchers (eurokernels/triton/_launch.py) for the launch above at head dims 16 .. 256: so each
    spec is the JIT's own specialization (signature, divisibility of every integer and pointer, AMD pointer ranges,
    num_warps, num_stages). In bf16 (fp16 compiles to the same code) per GPU family (gpu_family() is told the family),
    compiled for that family's targets only; and in fp32 (head dims <= 128; twice the registers and shared memory
    per tile; exact "ieee" dots; the same table for every family) for every target, marked `fallback` with the
    spill counters it is allowed (FP32_FALLBACK_SPILLS)."""
    specs = []
    for family in GPU_CONFIGS:
        specs += _recorded(family, torch.bfloat16, (16, 32, 64, 128, 256),
                           lambda name, f=family: dict(targets=FAMILY_TARGETS[f]))
    specs += _recorded("sm_80", torch.float32, (16, 32, 64, 128),
                       lambda name: dict(fallback=dict(reason=FP32_FALLBACK,
                                                       measured=FP32_FALLBACK_SPILLS.get(name, {}))))
    return specs
