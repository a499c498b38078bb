"""Triton kernels and their launchers, one module per op. Imported lazily by eurokernels.ops.

Shared launch helpers live here so every op's launcher picks its grid and block the same way.
"""
import functools
from dataclasses import dataclass

import torch


def next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class RowConfig:
    """Launch configuration of a row-wise kernel: BLOCK_N elements of a row per step, num_warps warps."""
    block_n: int
    num_warps: int
    single_block: bool  # the whole row fits in one block: keep it in registers instead of looping over it


# Elements a program holds at once. Beyond this a row is swept in BLOCK_N steps (two sweeps: statistics, then
# output), which keeps registers at <= 16 fp32 values per thread and per live array on every target.
MAX_BLOCK_N = 8192


def row_config(n):
    block = min(max(16, next_pow2(n)), MAX_BLOCK_N)
    return RowConfig(block, max(1, min(16, block // 512)), n <= block)


def all_row_configs():
    """Every RowConfig row_config() can return: the list the AOT checks compile."""
    configs = [row_config(1 << k) for k in range(4, MAX_BLOCK_N.bit_length())]
    return configs + [row_config(MAX_BLOCK_N + 1)]


def all_block_configs():
    """The distinct (block_n, num_warps) of all_row_configs(): the list for kernels that always sweep the row in
    blocks (no SINGLE_BLOCK specialization), where the looping 8192 config is the same kernel as the single one."""
    return list({(c.block_n, c.num_warps): c for c in all_row_configs()}.values())


def row_alignment(element_size, *extents):
    """ALIGN for a row-wise kernel: the elements in 16 bytes when every row length and row stride in `extents`
    is a multiple of it (each row then starts 16-byte aligned, so 128-bit accesses are possible), else 1. It only
    states integer divisibility the launcher has checked, so it is always true; pointer alignment is the JIT's."""
    vec = max(1, 16 // element_size)
    return vec if all(e % vec == 0 for e in extents) else 1


@functools.cache
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device, rows):
    """Programs for a row-chunked kernel (e.g. a backward with per-program weight-gradient partials): two per SM
    on a GPU, 4 under the CPU interpreter; fixed for a device, so partial sums are reduced in a fixed order."""
    from ._launch import recording_sm_count  # recording (AOT specs): the SM count of the GPU recorded for
    sm = recording_sm_count() if device.type == "cuda" else None
    per_device = 2 * (sm or _sm_count(device.index or 0)) if device.type == "cuda" else 4
    return max(1, min(rows, per_device))
