"""Backend selection: one mechanism for every op.

Precedence: the op's ``backend=`` argument, else the innermost ``eurokernels.use_backend(...)`` block, else the
default for the tensor's device (``cpu`` for CPU tensors, ``triton`` for CUDA tensors).

Backends:
  reference  plain PyTorch in fp32 (eurokernels/reference.py): the oracle; any device.
  cpu        fused C++ kernels (csrc/*/_cpu.cpp), vectorized and multi-threaded; CPU tensors.
  triton     Triton kernels (eurokernels/triton/); CUDA tensors, or CPU tensors under TRITON_INTERPRET=1.
  cuda       CUDA C++ kernels (csrc/*/*.cu); CUDA tensors, when the extension was built with nvcc, or CPU tensors
             under EUROKERNELS_CUDA_SIM=1: the same kernels compiled for the host and run by the SIMT simulation
             (csrc/sim/README.md), as TRITON_INTERPRET=1 runs the Triton kernels.
"""
import contextlib
import os
import threading

import torch

from .manifest import BACKENDS

# Per thread, like torch's grad mode and autocast: a `use_backend` block in one thread never changes what another
# thread's ops run (tests/test_threads.py). torch.compile guards on the thread-local attribute without a graph break
# and recompiles when it changes. (A contextvar would also follow asyncio tasks, but dynamo cannot trace it.)
_local = threading.local()


def _override():
    return getattr(_local, "backend", None)


@contextlib.contextmanager
def use_backend(backend):
    """Run the ops this thread calls inside the block on ``backend`` unless a call passes ``backend=`` itself.
    The setting is per thread: other threads (and threads started inside the block) keep their own."""
    _check_name(backend)
    previous, _local.backend = _override(), backend
    try:
        yield
    finally:
        _local.backend = previous


def _check_name(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")


def triton_interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_sim_enabled():
    """EUROKERNELS_CUDA_SIM=1: backend 'cuda' runs CPU tensors through the CUDA simulation (read on every call)."""
    return os.environ.get("EUROKERNELS_CUDA_SIM", "0") not in ("", "0")


def resolve(backend, tensor):
    """The backend to run for ``tensor``; raises a ValueError naming what is wrong when it cannot run there."""
    device = tensor.device.type
    name = backend if backend is not None else _override()
    if name is None:
        name = "triton" if device == "cuda" else "cpu"
    _check_name(name)
    if name == "cpu" and device != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got a tensor on {tensor.device}")
    if name == "cuda":
        from . import _ext
        simulated = device == "cpu" and cuda_sim_enabled()
        if device != "cuda" and not simulated:
            raise ValueError(f"backend 'cuda' needs CUDA tensors (or CPU tensors under EUROKERNELS_CUDA_SIM=1), "
                             f"got a tensor on {tensor.device}")
        # Raises if the extension was not built. Not while torch.compile traces (an import breaks the graph): the
        # op raises the same error when it runs.
        if not torch.compiler.is_compiling():
            (_ext.cuda_sim if simulated else _ext.cuda)()
    if name == "triton" and device == "cpu" and not triton_interpreter_enabled():
        raise ValueError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)")
    if name == "triton" and device not in ("cpu", "cuda"):
        raise ValueError(f"backend 'triton' needs CUDA tensors (or CPU under TRITON_INTERPRET=1), got {device}")
    if name not in ("reference", "triton") and device not in ("cpu", "cuda"):
        raise ValueError(f"backend {name!r} does not run on {device} tensors")
    return name


def default_backend(device):
    """The backend ops pick for tensors on ``device`` when no ``backend=`` is passed."""
    return _override() or ("triton" if torch.device(device).type == "cuda" else "cpu")
