"""CMakeLists.txt configures and builds the extensions from csrc/sources.txt, and what it builds works.

One configure + build in a temporary directory (Ninja when available, -j2). The CUDA simulation module is always
built (host compiler, csrc/sim). The CUDA module is built when a
CUDA compiler is found (CMake's own default; EUROKERNELS_SKIP_CUDA=1 turns it off, as for setup.py), for sm_80
only to keep the test short: that also exercises the architecture override. Most of its time (2-5 minutes on 2
busy cores with nvcc) is the torch headers in the two binding files.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eurokernels
from eurokernels import reference
from eurokernels.inspect import aot

ROOT = Path(eurokernels.__file__).resolve().parent.parent


def _tool(name):
    """A build tool on PATH or next to this Python (pip's cmake / ninja wheels install there)."""
    found = shutil.which(name)
    if found is None and (Path(sys.executable).parent / name).exists():
        found = str(Path(sys.executable).parent / name)
    return found


def _skip_cuda():
    return os.environ.get("EUROKERNELS_SKIP_CUDA", "0") not in ("", "0")  # setup.py's switch, honoured here too


def _sources():
    groups = {"cpu": set(), "cuda": set(), "sim": set()}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] != "archs":  # the archs line is the CUDA arch default, not a source
            groups[words[0]].add(str((ROOT / "csrc" / words[1]).resolve()))
    return groups


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory):
    cmake = _tool("cmake")
    if cmake is None:
        pytest.fail("cmake not found: install it (e.g. `pip install cmake`); CI configures and builds CMakeLists.txt")
    build = tmp_path_factory.mktemp("cmake-build")
    configure = [cmake, "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
                 "-DEUROKERNELS_CUDA_ARCHS=80"] + (["-DEUROKERNELS_CUDA=OFF"] if _skip_cuda() else [])
    ninja = _tool("ninja")
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    logs = []
    for cmd in (configure, [cmake, "--build", str(build), "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        logs.append(res.stdout + res.stderr)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{(res.stdout + res.stderr)[-8000:]}"
    return build, "\n".join(logs)


def _load(path, name):
    spec = importlib.util.spec_from_file_location(f"eurokernels_cmake_build.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cmake_compiles_exactly_the_listed_sources(cmake_build):
    build, _ = cmake_build
    commands = json.loads((build / "compile_commands.json").read_text())
    compiled = {"cpu": set(), "cuda": set(), "sim": set()}
    for c in commands:
        if "TORCH_EXTENSION_NAME=_cuda_sim" in c["command"]:
            # a generated unit: `#include "<path relative to csrc>"`
            (included,) = re.findall(r'#include "(.+)"', Path(c["file"]).read_text())
            compiled["sim"].add(str((ROOT / "csrc" / included).resolve()))
        else:
            target = "cuda" if "TORCH_EXTENSION_NAME=_cuda" in c["command"] else "cpu"
            compiled[target].add(str(Path(c["file"]).resolve()))
    expected = _sources()
    assert compiled["cpu"] == expected["cpu"]
    assert compiled["sim"] == expected["cuda"] | expected["sim"]
    if compiled["cuda"]:
        assert compiled["cuda"] == expected["cuda"]


@pytest.mark.parametrize("module", ["_C", "_cuda_sim"])
def test_cmake_module_runs_rms_norm(cmake_build, module):
    # The CPU kernels, and the CUDA kernels' host build (the simulation), on CPU tensors.
    build, _ = cmake_build
    (so,) = (build / "eurokernels").glob(f"{module}.*.so")
    ext = _load(so, module)
    x = torch.randn(5, 40, dtype=torch.bfloat16)
    w = torch.randn(40, dtype=torch.float32)
    y, res_out, rstd = ext.rms_norm_fwd(x, w, None, 1e-6, 0.0, 0)  # casting 0: llama
    ref_y, _, ref_rstd = reference.rms_norm(x, w, 1e-6, 0.0, None, "llama")
    torch.testing.assert_close(rstd, ref_rstd.float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(y, ref_y, rtol=1.6e-2, atol=1e-2)
    assert res_out.numel() == 0


def test_cmake_cuda_module(cmake_build):
    build, log = cmake_build
    built = list((build / "eurokernels").glob("_cuda.*.so"))  # (not _cuda_sim)
    if not built:
        if _skip_cuda():
            pytest.skip("EUROKERNELS_SKIP_CUDA is set: configured with EUROKERNELS_CUDA=OFF")
        if _tool("nvcc") or os.environ.get("CUDA_HOME"):
            pytest.fail(f"a CUDA compiler is available but CMake did not build _cuda:\n{log[-4000:]}")
        pytest.skip("no CUDA compiler: CMake builds the CPU module only")
    ext = _load(built[0], "_cuda")  # imports without a GPU or driver
    assert callable(ext.rms_norm_fwd) and callable(ext.rms_norm_bwd)
    cuobjdump = aot.cuda_bin("cuobjdump")
    usage = aot.parse_resource_usage(subprocess.run([cuobjdump, "--dump-resource-usage", str(built[0])],
                                                    capture_output=True, text=True, check=True).stdout)
    assert usage and {arch for arch, _ in usage} == {"sm_80"}, "EUROKERNELS_CUDA_ARCHS=80 gives sm_80 cubins only"
    assert all(r["local"] == 0 for r in usage.values())
