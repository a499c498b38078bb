"""README command 1 (the benchmark CLI) end to end on one op: the table on stdout, the JSON of every figure and one
PNG per op and mode. Timings are not checked (no timing assertions); that every provider ran and reported is."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_cli_quick_rotary(tmp_path):
    # rotary: the op whose quick cases are cheapest; the harness (timing, memory, table, files) is shared by all ops.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--ops", "rotary", "--device", "cpu",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "] rotary fwd" in proc.stderr  # progress lines while it runs
    header = next(line for line in proc.stdout.splitlines() if line.startswith("op "))
    for col in ("provider", "ms", "GB/s", "of floor", "vs eager", "vs compile", "peak MB"):
        assert col in header, header
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["device"] == "cpu" and "torch" in data["machine"]
    modes = {r["mode"] for r in data["rows"]}
    assert modes == {"fwd", "fwd+bwd", "inplace"}, modes
    for mode in modes:
        providers = {r["provider"] for r in data["rows"] if r["mode"] == mode}
        assert "eurokernels[cpu]" in providers and "eager" in providers, (mode, providers)
    for r in data["rows"]:
        assert r["ms"] > 0 and r["gbps"] > 0, r
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["rotary_fwd.png", "rotary_fwd_bwd.png",
                                                              "rotary_inplace.png"]


def test_gpu_check_dry_run():
    # The one-command GPU run (benchmarks/gpu_check.py) cannot run here: its dry run checks that every step's
    # files, modules and arguments exist and that pytest collects both of its test selections.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 steps ready" in proc.stdout


def test_gpu_check_budget_drops_from_the_end():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)  # standard library only: no package import needed
    args = argparse.Namespace(jobs=16, out="results")
    all_steps = gpu_check.steps(args)
    kept, dropped = gpu_check.plan(all_steps, 480)
    assert [s[0] for s in kept] == ["install", "env", "tests-gpu", "bench"] and dropped == ["tests-cpu"]
    kept, dropped = gpu_check.plan(all_steps, 1)  # the install and the probe always run
    assert [s[0] for s in kept] == ["install", "env"] and dropped == ["tests-gpu", "bench", "tests-cpu"]
    assert [s[0] for s in gpu_check.plan(all_steps, None)[0]] == [s[0] for s in all_steps]
    with pytest.raises(SystemExit):
        gpu_check.main(["--budget", "-5"])


def test_lm_head_comparison_tiny(tmp_path):
    # benchmarks.lm_head (the LM-head comparison, one process per row) at a tiny shape: every requested provider
    # reports a time and a workspace, or says why it cannot run (a peer not installed); the JSON holds the rows.
    out = tmp_path / "lm_head.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.lm_head", "--shapes", "64x32x1000", "--dtypes",
                           "float32", "--providers", "eurokernels,eurokernels[tiled],cut-cross-entropy,matmuls",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vs matmuls" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["provider"] for r in rows] == ["eurokernels", "eurokernels[tiled]", "cut-cross-entropy", "matmuls"]
    for r in rows:
        if r["provider"] == "cut-cross-entropy" and r["status"]:
            assert r["status"].startswith("not installed"), r  # an optional peer: named, never faked
            continue
        assert r["status"] is None and r["s"] > 0 and r["workspace_mb"] is not None, r
    bad = subprocess.run([sys.executable, "-m", "benchmarks.lm_head", "--providers", "liger"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--providers: unknown provider 'liger'" in bad.stderr
