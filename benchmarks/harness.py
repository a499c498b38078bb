"""Benchmark harness shared by every op: timing, memory, the result table and files.

A benchmark module (benchmarks/bench_<op>.py) exposes ``cases(device, quick) -> list[Case]``; each Case names the
providers to compare on one shape (our backend, reference eager, torch.compile(reference), a floor ...) as
zero-argument callables. The same cases drive the CLI (benchmarks/run.py) and pytest-benchmark (the module's
test functions), so the two can never measure different things.
"""
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Case:
    op: str                      # "rms_norm"
    label: str                   # "8192x4096 bf16"
    mode: str                    # "fwd" | "fwd+bwd"
    providers: dict              # provider name -> zero-argument callable running the work once
    bytes: int = 0               # bytes a perfect kernel must move (for GB/s); 0 if compute-bound
    flops: int = 0               # useful floating-point operations (for TFLOP/s); 0 if memory-bound
    floor: str = None            # name of the provider that is the memory floor (reported as a fraction)
    meta: dict = field(default_factory=dict)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, *, warmup=2, reps=7, max_seconds=20.0):
    """Median wall time of fn() in ms over `reps` runs after `warmup` runs (fewer when a run is very slow)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < reps:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    return statistics.median(times)


def peak_memory_mb(fn, device):
    """Peak extra memory of one fn() call: CUDA allocator stats on a GPU; None on CPU (no allocator stats)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(case, device, progress=None):
    rows = []
    for name, fn in case.providers.items():
        if progress:
            progress(f"{case.op} {case.mode} {case.label}: {name}")
        gc.collect()
        ms = time_ms(fn, device)
        rows.append(dict(op=case.op, case=case.label, mode=case.mode, provider=name, ms=ms,
                         gbps=case.bytes / ms / 1e6 if case.bytes else None,
                         tflops=case.flops / ms / 1e9 if case.flops else None,
                         peak_mb=peak_memory_mb(fn, device), **case.meta))
    by = {r["provider"]: r["ms"] for r in rows}
    for r in rows:
        r["floor_fraction"] = by[case.floor] / r["ms"] if case.floor else None  # 1.0 = at the floor
        for other in ("eager", "compile"):
            r[f"speedup_vs_{other}"] = by[other] / r["ms"] if other in by else None
    return rows


def machine():
    info = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                processor=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            with open("/proc/cpuinfo") as f:
                info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return info


def format_table(rows):
    cols = [("op", "op", "{}"), ("mode", "mode", "{}"), ("case", "shape", "{}"), ("provider", "provider", "{}"),
            ("ms", "ms", "{:.2f}"), ("gbps", "GB/s", "{:.1f}"), ("tflops", "TFLOP/s", "{:.3f}"),
            ("floor_fraction", "of floor", "{:.0%}"), ("speedup_vs_eager", "vs eager", "{:.1f}x"),
            ("speedup_vs_compile", "vs compile", "{:.2f}x"), ("peak_mb", "peak MB", "{:.0f}")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    cells = [[c[1] for c in cols]] + [[("" if r.get(k) is None else f.format(r[k])) for k, _, f in cols]
                                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path, rows, device):
    with open(path, "w") as f:
        json.dump(dict(machine=machine(), device=str(device), rows=rows), f, indent=1)


def pytest_benchmark_case(benchmark, case, provider, device):
    """Run one provider of one Case under pytest-benchmark (used by the bench_<op>.py test functions)."""
    fn = case.providers[provider]
    fn()  # warm-up (compiles, page-faults the inputs)
    benchmark.extra_info.update(op=case.op, case=case.label, mode=case.mode, bytes=case.bytes, flops=case.flops)
    benchmark.pedantic(lambda: (fn(), sync(device)), rounds=5, iterations=1, warmup_rounds=1)


def write_plots(rows, outdir):
    """One PNG per op and mode: throughput (GB/s, or TFLOP/s for compute-bound ops) per shape, a line per provider.
    Returns the paths written. matplotlib is a benchmark-only dependency (.ci/requirements.txt)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for op, mode in dict.fromkeys((r["op"], r["mode"]) for r in rows):
        sel = [r for r in rows if r["op"] == op and r["mode"] == mode]
        metric = "tflops" if any(r.get("tflops") for r in sel) else "gbps"
        cases = list(dict.fromkeys(r["case"] for r in sel))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cases) + 3), 4.5))
        for provider in dict.fromkeys(r["provider"] for r in sel):
            pts = {r["case"]: r[metric] for r in sel if r["provider"] == provider and r.get(metric)}
            ax.plot(range(len(cases)), [pts.get(c, float("nan")) for c in cases], marker="o", label=provider)
        ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("TFLOP/s" if metric == "tflops" else "GB/s")
        ax.set_title(f"{op} {mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, f"{op}_{mode.replace('+', '_')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
