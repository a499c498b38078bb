"""@triton.jit helpers shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """Round fp32 ``x`` to DTYPE (round-to-nearest-even) and return it as fp32.

    For bf16 the rounding is done with integer ops instead of ``x.to(tl.bfloat16)``: Triton's CPU interpreter
    truncates fp32 -> bf16 (the GPU rounds to nearest even), so the cast alone would make the interpreter tests
    disagree with the GPU build. A value rounded here casts exactly on both. The few integer ops are free in a
    memory-bound kernel. NaNs pass through unchanged.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    elif DTYPE == tl.float32:
        return x
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def cast_to(x, DTYPE: tl.constexpr):
    """``x`` (fp32) as DTYPE, rounded to nearest even on every target including the interpreter."""
    return round_to(x, DTYPE).to(DTYPE)
