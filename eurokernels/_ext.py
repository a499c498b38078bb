"""Access to the compiled extensions, imported on first use so `import eurokernels` works without them."""
import functools
import importlib


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


def has_cuda_extension():
    try:
        cuda()
        return True
    except RuntimeError:
        return False
