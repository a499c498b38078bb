"""The CUDA simulation's controls: the CUDA C++ kernels compiled for the host and run on CPU tensors, one fiber per
CUDA thread (csrc/sim/README.md). Enabled by ``EUROKERNELS_CUDA_SIM=1``; then ``backend="cuda"`` takes CPU tensors.

    with eurokernels.cuda_sim.schedule("seed:3"):   # another deterministic interleaving of each block's threads
        loss = eurokernels.cross_entropy(x, y, backend="cuda")

Schedules: "rr" (round-robin by thread index, the default), "reverse", "seed:N" (a seeded random pick at every
yield point, plus yield points at global loads/stores and atomics). A kernel whose result differs between schedules
has an ordering race; tests run the kernels that share memory between threads under several.
"""
import contextlib

from . import _ext
from ._backend import cuda_sim_enabled as enabled

__all__ = ["enabled", "schedule", "arch", "max_grid_x", "launches", "kernels", "load_cubin_registers"]


def _module():
    return _ext.cuda_sim()


@contextlib.contextmanager
def _setting(get, set_, value):
    previous = get()
    set_(value)
    try:
        yield
    finally:
        set_(previous)


def schedule(spec):
    """Run the launches inside the block under ``spec``: "rr", "reverse" or "seed:N"."""
    m = _module()
    return _setting(m.schedule, m.set_schedule, spec)


def arch(sm):
    """Simulate sm_80 (A100: 108 SMs, 163 KB opt-in shared memory) or sm_90 (H100: 132 SMs, 227 KB)."""
    m = _module()
    return _setting(m.arch, m.set_arch, sm)


def max_grid_x(n):
    """Lower the largest gridDim.x (2^31 - 1 on a GPU), so that a few rows drive a kernel's grid-stride loop."""
    m = _module()
    return _setting(m.max_grid_x, m.set_max_grid_x, n)


@contextlib.contextmanager
def launches(run=True):
    """Record every launch inside the block: yields a list that holds, on exit, one dict per launch (kernel, grid,
    block, smem, error). ``run=False`` checks and records the launches without executing them. Not nestable: the
    records are one process-wide log."""
    m = _module()
    m.take_records()
    m.set_capture(record=True, run=run)
    out = []
    try:
        yield out
    finally:
        m.set_capture(record=False, run=True)
        out.extend(m.take_records())


def kernels():
    """Every CUDA kernel instantiation that runs under the simulation (one per template instantiation)."""
    return list(_module().kernels())


def load_cubin_registers(so=None, module=None):
    """Give the simulation each kernel's registers per thread from the GPU build's cubins (eurokernels._cuda, or
    ``so``), so that a launch whose block would not fit an SM's register file is refused as on the GPU. Done when
    the simulation loads, if the GPU build is there. Returns how many (arch, kernel) pairs were matched."""
    from .inspect import aot
    so = so or aot.find_cuda_extension()
    if so is None:
        return 0
    usage = aot.parse_resource_usage(aot._run([aot.cuda_bin("cuobjdump"), "--dump-resource-usage", so]))
    names = aot._demangle(sorted({func for _, func in usage}))
    m, matched = module or _module(), 0
    for (arch, func), res in usage.items():
        kernel, config = aot._split_cxx_name(names[func])
        matched += m.set_kernel_registers(int(arch.removeprefix("sm_")), kernel + config, res["registers"])
    return matched
