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

from eurokernels import _backend, _ext, manifest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device, op):
    """The backends of ``op`` (a family in eurokernels/manifest.py) that run on ``device`` here: the manifest's
    (triton runs on CPU through the interpreter), cuda on a GPU where the CUDA extension was built, and on CPU
    through the simulation (EUROKERNELS_CUDA_SIM=1, set above when there is no GPU)."""
    device_type = torch.device(device).type
    backends = list(manifest.op(op).backends_on(device_type))
    if device_type == "cpu" and "cuda" in manifest.op(op).backends and _backend.cuda_sim_enabled():
        backends.append("cuda")
    return [b for b in backends if b != "cuda" or device_type == "cpu" or _ext.has_cuda_extension()]


def pytest_generate_tests(metafunc):
    """The `device` argument: every device present (CPU, and CUDA when available). A test that also takes
    `backend` runs once per (device, backend of its module's op that runs there): each such test module names its
    op family in a module-level ``OP``."""
    if "device" not in metafunc.fixturenames:
        return
    if any("device" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test chooses its own devices
    if "backend" in metafunc.fixturenames:
        op = getattr(metafunc.module, "OP", None)
        if op is None:
            raise pytest.UsageError(f"{metafunc.module.__name__}: a test taking `backend` needs a module-level OP "
                                    f"naming its op family in eurokernels/manifest.py")
        pairs = [(torch.device(d), b) for d in DEVICES for b in backends_for(d, op)]
        metafunc.parametrize(("device", "backend"), pairs, ids=[f"{d.type}-{b}" for d, b in pairs])
    else:
        metafunc.parametrize("device", [torch.device(d) for d in DEVICES], ids=DEVICES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
