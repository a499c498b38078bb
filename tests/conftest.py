"""Shared test fixtures. The same tests run on CPU (here and in CI) and on a GPU when one is present.

Without a GPU the Triton kernels run under Triton's CPU interpreter: TRITON_INTERPRET must be set before triton
is first imported, so it is set here, at collection time, and never when CUDA is available. Likewise the CUDA C++
kernels run on CPU tensors through their host build (EUROKERNELS_CUDA_SIM=1, csrc/sim/README.md): the `cuda` backend
joins the CPU backends. Set either variable to 0 to leave that backend out.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("EUROKERNELS_CUDA_SIM", "1")

import pytest  # noqa: E402

from eurokernels import _backend, _ext  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device):
    """The backends that run on ``device`` here (on CPU: triton through the interpreter, cuda through the
    simulation)."""
    device = torch.device(device)
    if device.type == "cpu":
        return ["reference", "cpu", "triton"] + (["cuda"] if _backend.cuda_sim_enabled() else [])
    return ["reference", "triton"] + (["cuda"] if _ext.has_cuda_extension() else [])


def pytest_generate_tests(metafunc):
    """The `device` argument: every device present (CPU, and CUDA when available). A test that also takes
    `backend` runs once per (device, backend that runs there)."""
    if "device" not in metafunc.fixturenames:
        return
    if any("device" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test chooses its own devices
    if "backend" in metafunc.fixturenames:
        only = getattr(metafunc.module, "BACKENDS", None)  # a module may name the backends its op has
        pairs = [(torch.device(d), b) for d in DEVICES for b in backends_for(d) if only is None or b in only]
        metafunc.parametrize(("device", "backend"), pairs, ids=[f"{d.type}-{b}" for d, b in pairs])
    else:
        metafunc.parametrize("device", [torch.device(d) for d in DEVICES], ids=DEVICES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
