"""Shared test fixtures. The same tests run on CPU (here and in CI) and on a GPU when one is present.

Without a GPU the Triton kernels run under Triton's CPU interpreter: TRITON_INTERPRET must be set before triton
is first imported, so it is set here, at collection time, and never when CUDA is available.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from eurokernels import _ext  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device):
    """The backends that run on ``device`` here (triton on CPU through the interpreter)."""
    device = torch.device(device)
    if device.type == "cpu":
        return ["reference", "cpu", "triton"]
    return ["reference", "triton"] + (["cuda"] if _ext.has_cuda_extension() else [])


def pytest_generate_tests(metafunc):
    """The `device` argument: every device present (CPU, and CUDA when available). A test that also takes
    `backend` runs once per (device, backend that runs there)."""
    if "device" not in metafunc.fixturenames:
        return
    if any("device" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test chooses its own devices
    if "backend" in metafunc.fixturenames:
        pairs = [(torch.device(d), b) for d in DEVICES for b in backends_for(d)]
        metafunc.parametrize(("device", "backend"), pairs, ids=[f"{d.type}-{b}" for d, b in pairs])
    else:
        metafunc.parametrize("device", [torch.device(d) for d in DEVICES], ids=DEVICES)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
