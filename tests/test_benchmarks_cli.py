"""README command 1 (the benchmark CLI) end to end on one op: the table on stdout, the JSON of every figure and one
PNG per op and mode. Timings are not checked (no timing assertions); that every provider ran and reported is."""
import json
import os
import subprocess
import sys

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
