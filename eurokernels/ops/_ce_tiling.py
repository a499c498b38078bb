"""The tiling engine of the fused LM-head loss (linear_cross_entropy and its vocab-parallel variant): logits are
made one [token_chunk, vocab_chunk] tile at a time by a matmul and handed to the cross-entropy kernel as a
vocabulary shard; see eurokernels/ops/linear_cross_entropy.py's docstring for the design and its costs.
"""
import os

import torch

from .._ext import cpu as _cpu_ext

# (tokens, vocabulary) per tile: 64 MB of bf16 logits at most (still wide for CPU matmuls)
DEFAULT_CHUNKS = (4096, 8192)
FORWARD_GRAD_CHUNK_ELEMENTS = 1 << 27  # grad_in_forward=True: tokens per chunk = this // V (256 MB of bf16 logits)
# The automatic mode (linear_cross_entropy's docstring): token chunks of whole vocabulary rows holding at most this
# many bytes of logits, in multiples of 64 rows and never under AUTO_MIN_TOKENS. At V = 128000 fp32 that is 448 rows
# (219 MiB): under a quarter of the [2048, V] fp32 logits that an unfused loss (or Cut Cross-Entropy's CPU path)
# holds at 2048 tokens. The floor keeps the matmuls tall: each chunk's d_weight update reads and writes the whole
# [V, H] fp32 gradient, and MKL's fp32 GEMMs lose ~10% from 512 to 256 rows and much more below.
AUTO_TILE_BYTES = 224 << 20
AUTO_MIN_TOKENS = 256
# The 3-matmul path's matmuls on CPU, in vocabulary slices of this many columns: the same GEMM shapes as the tiled
# path's tiles, whose packed weight slice stays in cache (at 2048 x 1024 x 128000 fp32, 512-token chunks: 4.6 s
# sliced vs 4.8 s whole-row; the unchunked three matmuls on fresh [N, V] buffers took 9.8 s in the same run).
CPU_VOCAB_SLICE = 8192


def auto_token_chunk(n, v, dtype):
    """The automatic mode's choice: tokens per chunk for the 3-matmul gradient-in-forward path, or None for the
    4-matmul tiled path. The 3-matmul path needs d_weight accumulated over token chunks: in place when d_weight is
    fp32 (no extra memory), but a 16-bit weight gradient would need an fp32 [V, H] accumulator, twice the weight --
    more than the logits tile itself at every LM-head shape we serve -- so 16-bit weights take it only when all
    tokens fit in one chunk (one d_weight matmul, no accumulation)."""
    rows = max(AUTO_MIN_TOKENS, AUTO_TILE_BYTES // max(1, v * dtype.itemsize) // 64 * 64)
    if dtype == torch.float32:
        return min(max(n, 1), rows)
    return max(n, 1) if n * v * dtype.itemsize <= AUTO_TILE_BYTES else None


def chunks(chunk_size):
    if chunk_size is None:
        return DEFAULT_CHUNKS
    sizes = (DEFAULT_CHUNKS[0], chunk_size) if isinstance(chunk_size, int) else tuple(chunk_size)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"chunk_size: expected a positive int (vocabulary columns) or a (tokens, vocabulary) pair "
                         f"of positive ints, got {chunk_size!r}")
    return sizes


# --- the tiles (cpu / triton / cuda) ----------------------------------------------------------------

class _Scratch:
    """A reusable buffer for the tiles of one loop, handed out as contiguous [rows, cols] views. On CPU a fresh
    tile would be page-faulted again every time (a freed large block goes back to the OS), which costs more than
    the matmul filling it; on GPU the caching allocator would reuse the memory anyway."""

    def __init__(self, numel, dtype, device):
        self.buf = _empty(numel, dtype=dtype, device=device)

    def get(self, rows, cols):
        return self.buf[: rows * cols].view(rows, cols)


def _empty(*shape, dtype, device):
    """torch.empty, on CPU with huge pages and prefaulted (csrc/cpu_alloc.h): the matmuls writing these buffers
    would otherwise pay a 4 KiB page fault per page of a fresh multi-hundred-MB block on every call."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    if type(t) is torch.Tensor and t.device.type == "cpu" and t.numel():  # a real tensor, not a traced stand-in
        _cpu_ext().prepare_fresh(t)
    return t


def _bad_labels(labels, ignore_index, vocab_total):
    return (labels != ignore_index) & ((labels < 0) | (labels >= vocab_total))


# --- the matmuls: 16-bit GEMMs on CPUs without native 16-bit matrix units --------------------------

GEMM_ENV = "EUROKERNELS_CPU_GEMM16"  # "native" | "fp32": overrides the choice below (tests force both paths)


def cpu_gemm16_native(dtype):
    """Whether a bf16 / fp16 matmul on this CPU, as torch's math libraries run it, is at least as fast as the fp32
    one. Only with AMX tiles that oneDNN may use (AMX-BF16 for bfloat16, AMX-FP16 for float16). Measured one
    thread, 512x1024 @ 1024x4096, on an AMX Xeon with oneDNN's ISA capped by ONEDNN_MAX_CPU_ISA (fp32 141-147
    GFLOP/s throughout): bf16 990 (AMX), 97 (AVX512_CORE_BF16, the Zen 4 class), 34 (AVX512_CORE), 0.3 (AVX2);
    fp16 148 with AVX512-FP16 but no AMX-FP16, 1.1 at AVX2. Zen 2 (AVX2 only) measured 7.8 bf16 vs 62 fp32. So
    without AMX the fp32 GEMM is never slower and often 8-300x faster, and the 16-bit tiles go through it."""
    forced = os.environ.get(GEMM_ENV, "").strip().lower()
    if forced in ("native", "fp32"):
        return forced == "native"
    if forced:
        raise ValueError(f"{GEMM_ENV}: expected 'native' or 'fp32', got {forced!r}")
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    amx = torch.cpu._is_amx_tile_supported() if dtype == torch.bfloat16 else torch.cpu._is_amx_fp16_supported()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).strip().upper()
    allowed = cap == "ALL" or "AMX" in cap and (dtype == torch.bfloat16 or "FP16" in cap)
    return bool(amx and allowed)


def _mm(a, b, out, bias=None):
    """out = a @ b (+ bias), one rounding to out's dtype. A 16-bit product on a CPU without native 16-bit GEMMs
    (cpu_gemm16_native) runs on fp32 copies of the operands: the same fp32 accumulation and single rounding as
    the 16-bit GEMM, at fp32 GEMM speed, for one conversion pass over each operand (small next to the matmul: the
    tiles are [4096, 8192] and the operands [4096 or 8192, hidden])."""
    if out.device.type == "cpu" and out.dtype in (torch.bfloat16, torch.float16) and not cpu_gemm16_native(out.dtype):
        a32, b32 = a.float(), b.float()
        res = _empty(out.shape, dtype=torch.float32, device=out.device)
        torch.addmm(bias.float(), a32, b32, out=res) if bias is not None else torch.mm(a32, b32, out=res)
        return out.copy_(res)
    return torch.addmm(bias, a, b, out=out) if bias is not None else torch.mm(a, b, out=out)


def _tile_logits(h, weight, bias, c0, c1, out):
    return _mm(h, weight[c0:c1].t(), out, None if bias is None else bias[c0:c1])


def tiled_forward(kernel, hidden2, weight, bias, labels1, opts, token_chunk, vocab_chunk, vocab_start=0,
                  vocab_total=None):
    """Per-token (loss, lse) in fp32 over [token_chunk, vocab_chunk] tiles (see the module docstring).

    Each tile is a vocabulary shard [c0, c1) for the kernel, called without z-loss: it returns the tile's lse and
    loss_tile = lse_tile - (1 - eps) z_label [label in tile] - eps / V sum(z_tile), so loss_tile - lse_tile is the
    tile's share of the loss's linear terms, which add up over tiles. The z-loss is added once lse is complete.
    ``weight`` may itself be a shard [vocab_start, vocab_start + rows) of a vocabulary of vocab_total classes.
    """
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, v = hidden2.shape[0], weight.shape[0]
    vocab_total = v if vocab_total is None else vocab_total
    loss = torch.empty(n, dtype=torch.float32, device=hidden2.device)
    lse = torch.empty(n, dtype=torch.float32, device=hidden2.device)
    tiles = _Scratch(min(n, token_chunk) * min(v, vocab_chunk), hidden2.dtype, hidden2.device)
    for t0 in range(0, n, token_chunk):
        t1 = min(n, t0 + token_chunk)
        h, lab = hidden2[t0:t1], labels1[t0:t1]
        m = None
        for c0 in range(0, v, vocab_chunk):
            c1 = min(v, c0 + vocab_chunk)
            tile = _tile_logits(h, weight, bias, c0, c1, tiles.get(t1 - t0, c1 - c0))
            l_c, lse_c = kernel(tile, lab, None, None, None, None, ignore_index, label_smoothing, 0.0, softcap,
                                vocab_start + c0, vocab_total)
            lin_c = l_c - lse_c
            if m is None:
                m, lin = lse_c, lin_c
            else:
                m, lin = torch.logaddexp(m, lse_c), lin + lin_c
        valid = lab != ignore_index
        # A label outside [0, vocab_total) is no tile's, so nothing above sees it: NaN for that token, as the
        # cross-entropy kernels give on a GPU (a silently finite loss before; tests/test_fuzz.py). The cpu backend's
        # kernel raises instead.
        m = torch.where(_bad_labels(lab, ignore_index, vocab_total), float("nan"), m)
        lse[t0:t1] = m
        # lin is -lse_tile on ignored rows (the kernel zeroes their loss): mask them, keep NaN of bad labels.
        loss[t0:t1] = torch.where(valid, m + z_loss * m * m + lin, 0.0)
    return loss, lse


def tiled_backward(kernel, dloss, dlse, hidden2, weight, bias, labels1, lse, opts, token_chunk, vocab_chunk,
                   vocab_start=0, vocab_total=None, fp32_dh=False):
    """(d_hidden, d_weight, d_bias) over tiles; vocabulary chunks outermost so d_weight needs only a chunk-sized
    fp32 accumulator. Each tile's logits are recomputed and overwritten in place by their gradient. With a weight
    shard, d_hidden is this shard's share only (the vocab-parallel caller all-reduces it, in fp32: ``fp32_dh``)."""
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, (v, hdim) = hidden2.shape[0], weight.shape
    vocab_total = v if vocab_total is None else vocab_total
    dev, dt = hidden2.device, hidden2.dtype
    dloss = torch.where(_bad_labels(labels1, ignore_index, vocab_total), float("nan"), dloss)  # as in the forward
    dh = torch.zeros(hidden2.shape, dtype=torch.float32, device=dev)
    if n == 0:  # no token chunk writes them (an uninitialized d_weight came back before; tests/test_fuzz.py)
        return dh if fp32_dh else dh.to(dt), torch.zeros_like(weight), (
            torch.zeros_like(bias) if bias is not None else weight.new_empty(0))
    dw = _empty(weight.shape, dtype=weight.dtype, device=dev)
    db = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    tn, tv = min(n, token_chunk), min(v, vocab_chunk)
    one_token_chunk = n <= token_chunk
    tiles, dh_part = _Scratch(tn * tv, dt, dev), _Scratch(tn * hdim, dt, dev)
    if not one_token_chunk:
        dw_part = _Scratch(tv * hdim, dt, dev)
        dw_acc = _Scratch(tv * hdim, torch.float32, dev)
    for c0 in range(0, v, vocab_chunk):
        c1 = min(v, c0 + vocab_chunk)
        w = weight[c0:c1]
        acc = None if one_token_chunk else dw_acc.get(c1 - c0, hdim)
        db_acc = torch.zeros(c1 - c0, dtype=torch.float32, device=dev) if bias is not None else None
        for t0 in range(0, n, token_chunk):
            t1 = min(n, t0 + token_chunk)
            h = hidden2[t0:t1]
            tile = _tile_logits(h, weight, bias, c0, c1, tiles.get(t1 - t0, c1 - c0))
            kernel(tile, labels1[t0:t1], lse[t0:t1], dloss[t0:t1], None if dlse is None else dlse[t0:t1], tile,
                   ignore_index, label_smoothing, z_loss, softcap, vocab_start + c0, vocab_total)
            # the tile's share of d_hidden, rounded once, summed over vocabulary chunks in fp32
            dh[t0:t1] += _mm(tile, w, dh_part.get(t1 - t0, hdim))
            if one_token_chunk:
                _mm(tile.t(), h, dw[c0:c1])
            else:
                part = _mm(tile.t(), h, dw_part.get(c1 - c0, hdim))
                if t0 == 0:
                    acc.copy_(part)  # the first token chunk initializes (no zero fill)
                else:  # the last one writes d_weight's slice, rounded once
                    _accumulate(acc, part, dw[c0:c1] if t1 == n else None)
            if db_acc is not None:
                db_acc += tile.sum(0, dtype=torch.float32)
        if db_acc is not None:
            db[c0:c1] = db_acc
    return dh if fp32_dh else dh.to(dt), dw, db


def forward_with_grads(kernel, hidden2, weight, bias, labels1, opts, token_chunk, row_scale):
    """grad_in_forward: (loss scalar fp32, d_hidden, d_weight, d_bias) for the unit upstream gradient, in 3 matmuls
    (see linear_cross_entropy's docstring). row_scale [rows] fp32: each token's factor in the reduced loss
    (_ce_core.row_scale: 0 when ignored, the mean's 1 / count, the token's weight); the loss and the gradients
    already carry it."""
    ignore_index, label_smoothing, z_loss, softcap = opts
    n, (v, hdim) = hidden2.shape[0], weight.shape
    dev, dt = hidden2.device, hidden2.dtype
    row_scale = torch.where(_bad_labels(labels1, ignore_index, v), float("nan"), row_scale)  # as in tiled_forward
    loss = torch.zeros((), dtype=torch.float32, device=dev)
    dh = _empty(hidden2.shape, dtype=dt, device=dev)
    one_chunk = n <= token_chunk
    # d_weight over token chunks: one chunk needs no accumulation (one matmul written straight into its dtype, fp32
    # accumulation inside it, as in F.linear's backward). Several: an fp32 d_weight accumulates in place (each
    # chunk's GEMM adds into it, beta = 1: no buffer, no extra pass); a 16-bit one in an fp32 [V, H] buffer, in
    # vocabulary slices, rounded once at the end.
    in_place = not one_chunk and weight.dtype == torch.float32
    dw = (torch.zeros if n == 0 else _empty)(weight.shape, dtype=weight.dtype, device=dev)  # n = 0: no chunk writes it
    acc = None if one_chunk or in_place else _empty(weight.shape, dtype=torch.float32, device=dev)
    db = torch.zeros(v, dtype=torch.float32, device=dev) if bias is not None else None
    slice_v = min(v, max(1, (1 << 24) // max(1, hdim)))  # d_weight updated in slices: small temporaries
    tiles = _Scratch(min(n, token_chunk) * v, dt, dev)
    dw_part = None if one_chunk or in_place else _Scratch(slice_v * hdim, dt, dev)
    # fp32 on CPU: every matmul in vocabulary slices (CPU_VOCAB_SLICE), d_hidden accumulated in place over them.
    step = CPU_VOCAB_SLICE if dev.type == "cpu" and weight.dtype == torch.float32 else v
    for t0 in range(0, n, token_chunk):
        t1 = min(n, t0 + token_chunk)
        h = hidden2[t0:t1]
        logits = tiles.get(t1 - t0, v)
        for c0 in range(0, v, step):
            _tile_logits(h, weight, bias, c0, min(v, c0 + step), logits[:, c0:c0 + step])
        l_t, _ = kernel(logits, labels1[t0:t1], None, row_scale[t0:t1], None, logits, ignore_index, label_smoothing,
                        z_loss, softcap, 0, v)  # logits now hold d_logits
        loss += (l_t * row_scale[t0:t1]).sum()
        if one_chunk or in_place:
            for c0 in range(0, v, step):
                g, w = logits[:, c0:c0 + step], weight[c0:c0 + step]
                if c0 == 0:
                    _mm(g, w, dh[t0:t1])
                else:  # only with step < v, i.e. fp32: in place
                    dh[t0:t1].addmm_(g, w)
                if t0 == 0:
                    _mm(g.t(), h, dw[c0:c0 + step])
                else:  # in_place: fp32 d_weight, this chunk's GEMM adds into it
                    dw[c0:c0 + step].addmm_(g.t(), h)
        else:
            _mm(logits, weight, dh[t0:t1])
            for c0 in range(0, v, slice_v):
                c1 = min(v, c0 + slice_v)
                part = _mm(logits[:, c0:c1].t(), h, dw_part.get(c1 - c0, hdim))
                if t0 == 0:
                    acc[c0:c1] = part  # the first chunk initializes: no zero fill of the fp32 buffer
                else:  # the last chunk writes d_weight, rounded once
                    _accumulate(acc[c0:c1], part, dw[c0:c1] if t1 == n else None)
        if db is not None:
            db += logits.sum(0, dtype=torch.float32)
    return loss, dh, dw, (db.to(bias.dtype) if db is not None else weight.new_empty(0))


def _accumulate(acc, part, out=None):
    """acc += part (acc fp32, part in the weight's dtype), or for the last token chunk out = round(acc + part).
    On CPU one pass (csrc/cross_entropy/accumulate_cpu.cpp): torch's add_ would first convert part to an fp32
    temporary, and rounding acc afterwards is another pass over a [V, H] fp32 buffer."""
    if acc.device.type == "cpu":
        _cpu_ext().accumulate(acc, part, out)
    elif out is None:
        acc += part
    else:
        torch.add(acc, part, out=out)


def scaled(t, g, step=1 << 24):
    """t * g with one rounding (exact when g == 1, the usual case; no host sync to find out).

    On CPU one multiply: PyTorch's CPU kernels read a 0-dim CPU g in fp32 (opmath), so t * g is rounded once
    (checked bit for bit in the tests), with no fp32 temporary. (Not in place on the saved gradient: autograd's
    functionalization forbids mutating a forward output in the backward, and a retained graph would see it.)
    Elsewhere through fp32 in slices of ``step`` elements: the fp32 temporary of a whole [V, H] weight gradient
    would be twice the gradient itself."""
    if t.device.type == "cpu" and g.device.type == "cpu" and g.dim() == 0:
        return torch.mul(t, g, out=_empty(t.shape, dtype=t.dtype, device=t.device))
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    src, dst = t.reshape(-1), out.view(-1)
    for i in range(0, src.numel(), step):
        torch.mul(src[i:i + step].float(), g, out=dst[i:i + step])
    return out
