"""Kernel inspection: `python -m eurokernels.inspect [--json] [--targets ...] [--kernels PATTERN]`.

Compiles every Triton kernel configuration (each op module's `aot_specs()`) for NVIDIA sm_80 / sm_90 and AMD
gfx90a / gfx942 without a GPU, reads the CUDA C++ cubins of the built extension, and reports per kernel, config and
target: registers, spills, shared memory / LDS, occupancy (AMD), the widest global load and store in the machine
code, and matrix-instruction counts. tests/test_aot.py turns these rows into checks. It also lists the CUDA C++
kernels that run on CPU under the simulation (eurokernels._cuda_sim, EUROKERNELS_CUDA_SIM=1).
"""
from .aot import CUDA_ARCHS, SHARED_LIMIT, SPEC_MODULES, TARGETS, cuda_rows, find_cuda_extension, triton_rows


def inspect(targets=tuple(TARGETS), pattern="*", workers=2, cuda_so=None):
    """All rows: Triton kernels for `targets`, then the CUDA C++ extension's kernels for the CUDA archs among them.
    Returns {"targets", "cuda_extension" (path or None), "rows", "simulated" (the kernel instantiations the CUDA
    simulation runs, or None when eurokernels._cuda_sim is not built)}."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"targets: unknown {unknown}; choose from {list(TARGETS)}")
    rows = triton_rows(targets, pattern, workers=workers)
    so = cuda_so or find_cuda_extension()
    cuda_targets = [t for t in targets if t in CUDA_ARCHS]
    if so is not None and cuda_targets:
        rows += cuda_rows(so, cuda_targets, pattern)
    return dict(targets=list(targets), cuda_extension=so, rows=rows, simulated=simulated_kernels())


def simulated_kernels():
    """The CUDA kernel instantiations that run under the simulation, or None when it is not built."""
    from .. import _ext
    try:
        return list(_ext.cuda_sim().kernels())
    except RuntimeError:
        return None


__all__ = ["inspect", "simulated_kernels", "triton_rows", "cuda_rows", "find_cuda_extension", "TARGETS",
           "SHARED_LIMIT", "SPEC_MODULES", "CUDA_ARCHS"]
