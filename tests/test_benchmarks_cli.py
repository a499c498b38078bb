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


# --- peers, status rows and plots: cheap checks of the harness and the bench modules, no benchmark run ------------

def _benchmarks():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import harness
    return harness


def test_missing_peer_is_a_status_row(tmp_path):
    harness = _benchmarks()
    case = harness.Case("demo", "4x4 bf16", "fwd", {"eurokernels[cpu]": lambda: None, "eager": lambda: None},
                        bytes=64, missing={"liger": "not installed"})
    rows = harness.run_case(case, "cpu")
    by = {r["provider"]: r for r in rows}
    assert by["eurokernels[cpu]"]["status"] is None and by["eurokernels[cpu]"]["ms"] > 0
    row = by["liger"]  # in the table, never faked: no time, no throughput, no speed-up
    assert row["status"] == "not installed"
    assert all(row[k] is None for k in ("ms", "gbps", "peak_mb", "speedup_vs_eager"))
    table = harness.format_table(rows)
    assert "status" in table.splitlines()[0]
    assert any("liger" in line and line.rstrip().endswith("not installed") for line in table.splitlines())
    harness.write_json(tmp_path / "r.json", rows, "cpu")
    data = json.loads((tmp_path / "r.json").read_text())
    assert {r["provider"]: r["status"] for r in data["rows"]}["liger"] == "not installed"
    if "cpu" in data["machine"]:  # the CPU model and ISA path go with every figure (item 4)
        assert data["machine"]["cpu_capability"] and data["machine"]["cpu"] in data["machine_label"]
        assert f"ISA {data['machine']['cpu_capability']}" in data["machine_label"]


def _rows(cases, providers):
    return [dict(op="demo", mode="fwd", case=c, provider=p, ms=1.0, gbps=float(i + 1), tflops=None)
            for c in cases for i, p in enumerate(providers)]


def test_plots_bars_for_one_shape_and_the_machine_in_the_title(tmp_path, monkeypatch):
    harness = _benchmarks()
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    calls = {"bar": [], "plot": [], "title": []}
    for name in ("bar", "plot"):
        original = getattr(Axes, name)
        monkeypatch.setattr(Axes, name, lambda self, *a, _o=original, _n=name, **kw:
                            calls[_n].append(kw.get("color")) or _o(self, *a, **kw))
    original_title = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, t, *a, **kw: calls["title"].append(t)
                        or original_title(self, t, *a, **kw))
    info = dict(cpu="Test CPU 9000 (family 1 model 2)", cpu_capability="AVX512", threads=2, torch="x")
    providers = ["eurokernels[cpu]", "eager", "compile", "sdpa", "flex_attention"]
    rows = _rows(["b1 s2048"], providers) + [dict(op="demo", mode="fwd", case="b1 s2048", provider="liger",
                                                  ms=None, gbps=None, status="not installed")]
    paths = harness.write_plots(rows, str(tmp_path), machine_info=info)
    assert [os.path.basename(p) for p in paths] == ["demo_fwd.png"] and os.path.getsize(paths[0]) > 0
    assert len(calls["bar"]) == 1 and not calls["plot"]  # one shape: bars, not a line through one point
    colors = calls["bar"][0]
    assert len(colors) == len(providers) and len(set(colors)) == len(providers)  # the not-installed row: no bar
    assert "Test CPU 9000" in calls["title"][0] and "ISA AVX512" in calls["title"][0]
    # the colours are the provider's own, whatever else is in the plot: ours blue, torch grey, peers distinct
    palette = harness.provider_colors(providers)
    assert colors == [palette[p] for p in providers]
    assert harness.provider_colors(["sdpa"])["sdpa"] == palette["sdpa"]
    assert palette["eager"] in harness._TORCH.values() and palette["eurokernels[cpu]"] in harness._BLUES
    assert palette["sdpa"] not in harness._BLUES + list(harness._TORCH.values())

    calls.update(bar=[], plot=[], title=[])
    harness.write_plots(_rows(["s1", "s2"], providers), str(tmp_path), machine_info=dict(gpu="H100 Test"))
    assert not calls["bar"] and len(calls["plot"]) == len(providers)  # several shapes: a line per provider
    assert "GPU H100 Test" in calls["title"][0]


def test_flex_attention_absent_is_a_status_row(monkeypatch):
    _benchmarks()
    from benchmarks import bench_attention as ba
    monkeypatch.setattr(ba, "flex_attention", None)
    assert ba.flex_provider("causal", 256, "cpu") is None
    fwd, both = ba._spec_cases("causal", 1, 128, None, "cpu")  # tiny: only builds the providers (one check call)
    for case in (fwd, both):
        assert "flex_attention" not in case.providers and "sdpa" in case.providers
        assert case.missing == {"flex_attention": ba.FLEX_NOT_INSTALLED}


def test_flex_attention_forward_only_on_cpu():
    _benchmarks()
    from benchmarks import bench_attention as ba
    if ba.flex_attention is None:
        pytest.skip("this torch has no flex_attention")
    fwd, both = ba._spec_cases("window", 1, 256, None, "cpu")
    assert "flex_attention" in fwd.providers and "sdpa" not in fwd.providers  # SDPA cannot express a window
    assert "flex_attention" not in both.providers and both.missing["flex_attention"] == ba.FLEX_NO_CPU_BACKWARD


def test_peers_are_checked_before_timing_and_missing_ones_reported(monkeypatch):
    _benchmarks()
    import torch
    from benchmarks import bench_rms_norm, peers
    assert peers.rms_norm("cpu", 1e-6) == ({}, {}) and peers.attention("cpu") == ({}, {})  # CUDA-only peers
    fake = {"good": lambda x, w: bench_rms_norm.reference.rms_norm(x, w, 1e-6)[0],
            "wrong": lambda x, w: x * w}
    monkeypatch.setattr(peers, "rms_norm", lambda device, eps: (dict(fake), {"quack": peers.NOT_INSTALLED}))
    monkeypatch.setattr(bench_rms_norm, "QUICK_SHAPES", [(8, 64)])
    fwd, both = bench_rms_norm.cases("cpu", quick=True)
    for case in (fwd, both):
        assert "good" in case.providers and "wrong" not in case.providers
        assert case.missing == {"quack": "not installed"}
    both.providers["good"]()  # the peer's gradient path runs
    assert peers.agrees("t", "p", lambda: torch.ones(3), torch.ones(3))
    assert not peers.agrees("t", "p", lambda: torch.zeros(3), torch.ones(3))
    assert not peers.agrees("t", "p", lambda: 1 / 0, torch.ones(3))  # an error leaves it out too


def test_attention_targets_tiny(tmp_path):
    # benchmarks.attention_targets (issue 15's attention targets, ratios in one process) at a tiny sequence: every
    # row has our times and the GEMM ratio; flex and SDPA either a time and a ratio or a status saying why not.
    out = tmp_path / "at.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.attention_targets", "--seqlens", "256", "--dtypes",
                           "float32", "--features", "causal,softcap,docs", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert set(data["targets"]) == {"fwd_bwd_ge_0_9_gemm", "fwd_ge_1_5_flex", "fwd_ge_1_0_sdpa"}
    assert [r["feature"] for r in data["rows"]] == ["causal", "softcap", "docs"]
    for r in data["rows"]:
        assert r["ours_fwd_s"] > 0 and r["ours_fwd_bwd_s"] > 0 and r["fwd_bwd_vs_gemm"] > 0, r
        for peer in ("flex", "sdpa"):
            assert (f"fwd_vs_{peer}" in r) != (f"{peer}_status" in r), r
    assert "sdpa_status" in data["rows"][1]  # softcap: SDPA cannot express it, said so
    bad = subprocess.run([sys.executable, "-m", "benchmarks.attention_targets", "--seqlens", "100"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--seqlens: expected positive multiples of 128" in bad.stderr
