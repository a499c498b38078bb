"""eurokernels/manifest.py is the one list of ops and backends: every other place that enumerates them either
derives from it or is checked against it here (the README table, the package's exports, the compiled kernels'
entry points, the test and benchmark files)."""
import importlib
import os
import re

import pytest
import torch

import eurokernels as ek
from eurokernels import _ext, manifest
from eurokernels.inspect import aot

from conftest import backends_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resolve(name):
    obj = ek
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_public_function_is_in_the_manifest():
    listed = [f for o in manifest.OPS for f in o.functions]
    assert len(listed) == len(set(listed)), "a function is listed under two ops"
    for f in listed:
        assert callable(_resolve(f)), f
    # Every public op function of the package (what __all__ exports besides the infrastructure) is listed.
    infrastructure = {"BACKENDS", "default_backend", "use_backend", "manifest", "nn", "reference", "cuda_sim"}
    assert set(ek.__all__) - infrastructure == {f for f in listed if "." not in f}
    # and every module of eurokernels.nn
    modules = {n for n, v in vars(ek.nn).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v.__module__ == "eurokernels.nn"}
    assert modules == {f.split(".", 1)[1] for f in listed if f.startswith("nn.")}


def test_readme_ops_table_is_the_manifest():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read().splitlines()
    start = readme.index(manifest.table()[0])
    assert readme[start:start + len(manifest.table())] == manifest.table(), (
        "README.md's ops table differs from eurokernels.manifest.table(): paste the latter")


@pytest.mark.parametrize("op", manifest.OPS, ids=lambda o: o.name)
def test_kernel_entry_points_exist(op):
    # Every kernel the manifest names is there: in the CPU extension, the Triton module, the CUDA extension (when
    # built here). A name that drifted would otherwise fail only when that backend is first called.
    for role, where in op.kernels.items():
        for backend, name in where.items():
            if backend == "cpu":
                assert hasattr(_ext.cpu(), name), (op.name, role, name)
            elif backend == "triton":
                module, attr = name.rsplit(".", 1)
                assert hasattr(importlib.import_module(f"eurokernels.triton.{module}"), attr), (op.name, role, name)
            elif backend == "cuda" and _ext.has_cuda_extension():
                assert hasattr(_ext.cuda(), name), (op.name, role, name)
            assert backend in manifest.BACKENDS


@pytest.mark.parametrize("op", manifest.OPS, ids=lambda o: o.name)
def test_test_and_benchmark_files(op):
    path = os.path.join(ROOT, "tests", f"test_{op.name}.py")
    assert os.path.exists(path), f"{op.name}: no tests/test_{op.name}.py"
    with open(path) as f:
        source = f.read()
    if re.search(r"def test_\w+\([^)]*\bbackend\b", source):
        assert f'OP = "{op.name}"' in source, f"tests/test_{op.name}.py takes `backend` but does not declare OP"
    if op.benchmark:
        bench = importlib.import_module(f"benchmarks.bench_{op.benchmark}")
        assert callable(bench.cases)


def test_generated_test_matrix_only_has_backends_the_op_has():
    # The GPU host bug this replaced: attention's tests were given the cuda backend on a GPU host, where it raises.
    for op in manifest.OPS:
        for device_type in manifest.DEVICE_BACKENDS:
            for backend in backends_for(device_type, op.name):
                simulated = device_type == "cpu" and backend == "cuda"  # EUROKERNELS_CUDA_SIM=1
                assert backend in op.backends and (backend in manifest.DEVICE_BACKENDS[device_type] or simulated)
    # Attention has every backend now; its cuda tests run on a GPU host wherever the extension is built.
    assert "cuda" in manifest.op("attention").backends
    assert ("cuda" in backends_for("cuda", "attention")) == _ext.has_cuda_extension()


def test_triton_modules_are_inspected():
    assert aot.SPEC_MODULES == [f"eurokernels.triton.{m}" for m in manifest.triton_modules()]
    for module in aot.SPEC_MODULES:
        assert callable(importlib.import_module(module).aot_specs), module


def test_define_op_refuses_backends_the_manifest_does_not_list():
    from eurokernels._registry import define_op
    with pytest.raises(RuntimeError, match="manifest"):
        define_op("manifest_probe", "(Tensor x, str backend) -> Tensor", impls={"reference": lambda x: x},
                  fake=lambda x: x, family="rms_norm")


def test_no_hand_kept_backend_lists():
    # Outside the manifest, no source spells out the list of backends (derive it from eurokernels.manifest).
    pattern = re.compile(r"""["']reference["'],\s*["']cpu["'],\s*["']triton["']""")
    offenders = []
    for folder in ("eurokernels", "benchmarks", "tests"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith(".py") and not path.endswith(os.path.join("eurokernels", "manifest.py")):
                    with open(path) as f:
                        if pattern.search(f.read()):
                            offenders.append(os.path.relpath(path, ROOT))
    assert offenders == [], offenders
