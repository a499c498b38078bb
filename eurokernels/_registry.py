"""The one registration helper every op uses.

Each public op is a torch.library custom op in the ``eurokernels`` namespace whose last schema argument is
``str backend``. ``define_op`` registers one kernel per device type that forwards to the chosen backend's
implementation, plus the fake (meta) implementation used by torch.compile. Autograd is registered by the op
module with ``op.register_autograd`` and calls another registered op for the backward.
"""
import importlib

import torch

from ._backend import cuda_sim_enabled

NAMESPACE = "eurokernels"

# Which backends may run on which device type (resolve() in _backend.py gives users the friendly error first);
# also cuda on CPU tensors under EUROKERNELS_CUDA_SIM=1 (the simulation).
DEVICE_BACKENDS = {
    "cpu": ("reference", "cpu", "triton"),
    "cuda": ("reference", "triton", "cuda"),
}


def _allowed(device_type):
    if device_type == "cpu" and cuda_sim_enabled():
        return DEVICE_BACKENDS["cpu"] + ("cuda",)
    return DEVICE_BACKENDS[device_type]


def lazy(module, attr):
    """A callable that imports ``module`` on first call: keeps `import eurokernels` free of triton and the
    compiled extensions, and lets TRITON_INTERPRET be set any time before the first Triton launch."""
    target = None

    def call(*args):
        nonlocal target
        if target is None:
            target = getattr(importlib.import_module(module), attr)
        return target(*args)

    call.__name__ = f"{module}.{attr}"
    return call


def define_op(name, schema, impls, fake, mutates_args=()):
    """Declare ``eurokernels::<name>`` with ``schema``; ``impls`` maps backend name -> callable taking the schema's
    arguments without the trailing backend; ``fake`` (same arguments) computes output metadata for tracing.
    ``mutates_args`` names the arguments an in-place op writes (they carry ``(a!)`` annotations in the schema)."""
    def kernel_for(device_type):
        def kernel(*args):
            backend = args[-1]
            allowed = _allowed(device_type)
            if backend not in allowed:
                raise ValueError(f"eurokernels::{name}: backend {backend!r} does not run on {device_type} tensors")
            if backend not in impls:  # an op may not have every backend yet; say so instead of failing obscurely
                raise NotImplementedError(f"eurokernels::{name} has no {backend!r} backend; available: "
                                          f"{', '.join(b for b in impls if b in allowed)}")
            return impls[backend](*args[:-1])

        kernel.__name__ = f"{name}_{device_type}"
        return kernel

    op = torch.library.custom_op(f"{NAMESPACE}::{name}", kernel_for("cpu"), mutates_args=mutates_args,
                                 device_types="cpu", schema=schema)
    op.register_kernel("cuda", kernel_for("cuda"))
    op.register_fake(lambda *args: fake(*args[:-1]))  # output metadata never depends on the backend
    return op
