"""The one registration helper every op uses, and the one loader of kernels.

Each public op is a torch.library custom op in the ``eurokernels`` namespace whose last schema argument is
``str backend``. ``define_op`` registers one kernel per device type that forwards to the chosen backend's
implementation, plus the fake (meta) implementation used by torch.compile. Autograd is registered by the op
module with ``op.register_autograd`` and calls another registered op for the backward.

The idiom of every op file: ``kernel_table(family, role, reference)`` gives {backend: kernel}, each kernel taking the
same arguments whatever the backend (the reference adapter included), and one adapter per op turns the op's
arguments into a kernel call: ``impls={b: adapt(k) for b, k in table.items()}``.
"""
import importlib

import torch

from . import manifest
from ._backend import cuda_sim_enabled
from .manifest import DEVICE_BACKENDS

NAMESPACE = "eurokernels"


def _allowed(device_type):
    """The backends that run on ``device_type``: the manifest's rule, plus cuda on CPU tensors under
    EUROKERNELS_CUDA_SIM=1 (the CUDA kernels' host build, run by the SIMT simulation)."""
    if device_type == "cpu" and cuda_sim_enabled():
        return DEVICE_BACKENDS["cpu"] + ("cuda",)
    return DEVICE_BACKENDS[device_type]


def kernel(backend, where):
    """The kernel ``where`` of a compiled backend, loaded on first call: keeps `import eurokernels` free of triton
    and the compiled extensions, and lets TRITON_INTERPRET be set any time before the first Triton launch.
    where: an attribute of the extension (cpu, cuda) or "module.attr" under eurokernels.triton. The cuda kernels
    come from the module that takes the first argument's device (eurokernels._cuda, or eurokernels._cuda_sim for
    CPU tensors), looked up on every call."""
    from . import _ext
    if backend == "cuda":
        def call_cuda(*args):
            return getattr(_ext.cuda_for(args[0]), where)(*args)
        call_cuda.__name__ = f"cuda:{where}"
        return call_cuda
    target = None

    def load():
        if backend == "cpu":
            return getattr(_ext.cpu(), where)
        if backend == "triton":
            module, attr = where.rsplit(".", 1)
            return getattr(importlib.import_module(f"eurokernels.triton.{module}"), attr)
        raise ValueError(f"backend: expected cpu or triton here, got {backend!r}")

    def call(*args):
        nonlocal target
        if target is None:
            target = load()
        return target(*args)

    call.__name__ = f"{backend}:{where}"
    return call


def kernel_table(family, role, reference):
    """{backend: kernel} for one role of an op family, in the manifest's backend order; ``reference`` is the op
    file's adapter of eurokernels/reference.py with the same arguments as the compiled kernels."""
    where = manifest.op(family).kernels[role]
    return {b: reference if b == "reference" else kernel(b, where[b]) for b in manifest.op(family).backends}


def define_op(name, schema, impls, fake, family, mutates_args=()):
    """Declare ``eurokernels::<name>`` with ``schema``; ``impls`` maps backend name -> callable taking the schema's
    arguments without the trailing backend, for exactly the backends the manifest gives ``family``; ``fake`` (same
    arguments) computes output metadata for tracing. ``mutates_args`` names the arguments an in-place op writes
    (they carry ``(a!)`` annotations in the schema)."""
    backends = manifest.op(family).backends
    if set(impls) != set(backends):
        raise RuntimeError(f"eurokernels::{name}: implementations for {sorted(impls)}, but the manifest gives "
                           f"{family!r} the backends {list(backends)} (eurokernels/manifest.py)")

    def kernel_for(device_type):
        def run(*args):
            backend = args[-1]
            allowed = _allowed(device_type)
            if backend not in allowed:
                raise ValueError(f"eurokernels::{name}: backend {backend!r} does not run on {device_type} tensors")
            if backend not in impls:  # not every op has every backend; say so instead of failing obscurely
                raise NotImplementedError(f"eurokernels::{name} has no {backend!r} backend; available: "
                                          f"{', '.join(b for b in impls if b in allowed)}")
            return impls[backend](*args[:-1])

        run.__name__ = f"{name}_{device_type}"
        return run

    op = torch.library.custom_op(f"{NAMESPACE}::{name}", kernel_for("cpu"), mutates_args=mutates_args,
                                 device_types="cpu", schema=schema)
    op.register_kernel("cuda", kernel_for("cuda"))
    op.register_fake(lambda *args: fake(*args[:-1]))  # output metadata never depends on the backend
    return op
