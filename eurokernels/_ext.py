"""Access to the compiled extensions, imported on first use so `import eurokernels` works without them."""
import functools
import importlib
import os


@functools.cache
def cpu():
    """eurokernels._C: the C++ CPU kernels (always part of a build)."""
    try:
        return importlib.import_module("eurokernels._C")
    except ImportError as e:
        raise RuntimeError(
            "backend 'cpu': the C++ extension eurokernels._C is not built or failed to load "
            f"({e}); reinstall with `pip install --no-build-isolation -e .`") from e


@functools.cache
def cuda():
    """eurokernels._cuda: the CUDA C++ kernels (built only where nvcc was found)."""
    try:
        return importlib.import_module("eurokernels._cuda")
    except ImportError as e:
        raise RuntimeError(
            "backend 'cuda': the CUDA extension eurokernels._cuda is not built "
            f"({e}); install with nvcc on PATH (or CUDA_HOME set) and without EUROKERNELS_SKIP_CUDA") from e


@functools.cache
def cuda_sim():
    """eurokernels._cuda_sim: the CUDA C++ kernels compiled for the host and run by the SIMT simulation (csrc/sim),
    on CPU tensors. Its schedule and simulated GPU start from EUROKERNELS_CUDA_SIM_SCHEDULE (default "rr") and
    EUROKERNELS_CUDA_SIM_ARCH (default 90); eurokernels.cuda_sim changes them."""
    try:
        module = importlib.import_module("eurokernels._cuda_sim")
    except ImportError as e:
        raise RuntimeError(
            "backend 'cuda' under EUROKERNELS_CUDA_SIM=1: the simulation extension eurokernels._cuda_sim is not built "
            f"({e}); reinstall with `pip install --no-build-isolation -e .`") from e
    module.set_schedule(os.environ.get("EUROKERNELS_CUDA_SIM_SCHEDULE", "rr"))
    module.set_arch(int(os.environ.get("EUROKERNELS_CUDA_SIM_ARCH", "90")))
    _load_registers = importlib.import_module("eurokernels.cuda_sim").load_cubin_registers
    try:  # the register limits of the GPU build's kernels, where there is one and cuobjdump to read it
        _load_registers(module=module)
    except (FileNotFoundError, RuntimeError):
        pass  # no cuobjdump: launches are checked without register counts (README: csrc/sim)
    return module


def cuda_for(tensor):
    """The module whose CUDA kernels take ``tensor``: _cuda for CUDA tensors, the simulation for CPU tensors (the
    caller has checked that the simulation is enabled: _backend.resolve and _registry)."""
    return cuda_sim() if tensor.device.type == "cpu" else cuda()


def has_cuda_extension():
    try:
        cuda()
        return True
    except RuntimeError:
        return False
