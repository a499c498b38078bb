"""Benchmark harness shared by every op: timing, memory, the result table and files.

A benchmark module (benchmarks/bench_<op>.py) exposes ``cases(device, quick) -> list[Case]``; each Case names the
providers to compare on one shape (our backend, reference eager, torch.compile(reference), a floor ...) as
zero-argument callables. The same cases drive the CLI (benchmarks/run.py) and pytest-benchmark (the module's
test functions), so the two can never measure different things.
"""
import functools
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch


# torch.compile(reference) is traced once per benchmark shape; the default recompile limit (8) would silently
# fall back to eager after the 8th shape of an op.
torch._dynamo.config.recompile_limit = 256


@dataclass
class Case:
    op: str                      # "rms_norm"
    label: str                   # "8192x4096 bf16"
    mode: str                    # "fwd" | "fwd+bwd"
    providers: dict              # provider name -> zero-argument callable running the work once
    bytes: int = 0               # bytes a perfect kernel must move (for GB/s); 0 if compute-bound
    flops: int = 0               # useful floating-point operations (for TFLOP/s); 0 if memory-bound
    floor: str = None            # name of the provider that is the memory floor (reported as a fraction)
    out_bytes: int = 0           # bytes of the results every provider must return (e.g. the gradients): the
                                 # "workspace" column is the peak minus these, the memory a provider adds on top
    meta: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)  # provider name -> status ("not installed", ...): an optional peer
                                                 # that is not here; reported as a row with that status, no timing


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
    """Peak extra memory of one fn() call, in MB: the CUDA allocator's peak on a GPU; on Linux CPUs the rise of
    the process's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs); None elsewhere."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        _glibc_maps_large_blocks()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        base = _proc_status_kb("VmRSS:")
        fn()
        return (_proc_status_kb("VmHWM:") - base) / 1024
    except (OSError, StopIteration, AttributeError):
        return None


def _proc_status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


@functools.cache
def _glibc_maps_large_blocks():
    """glibc serves blocks under its adaptive mmap threshold (up to 32 MB) from a heap it keeps after free, so a
    repeated call reuses memory without growing the RSS and the high-water mark under-counts. A fixed 1 MB threshold
    maps every larger block and returns it on free, so VmHWM sees the live peak. Set once, before any measurement;
    it applies to every provider alike."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)


def run_case(case, device, progress=None, max_seconds=20.0):
    """Every provider of ``case``: time (median; at least 3 timed calls, more while under ``max_seconds``), derived
    throughput, peak memory, speed-ups against eager / compile and the fraction of the floor."""
    rows = []
    for name, fn in case.providers.items():
        if name in case.missing:
            continue
        if progress:
            progress(f"{case.op} {case.mode} {case.label}: {name}")
        gc.collect()
        # First call: compiles, autotunes, page-faults the inputs. Second call: the peak memory of a steady-state
        # call, and the second warm-up of the timing (slow CPU cases would otherwise pay six calls, not five).
        fn()
        peak_mb = peak_memory_mb(fn, device)
        ms = time_ms(fn, device, warmup=0, max_seconds=max_seconds)
        rows.append(dict(op=case.op, case=case.label, mode=case.mode, provider=name, ms=ms,
                         gbps=case.bytes / ms / 1e6 if case.bytes else None,
                         tflops=case.flops / ms / 1e9 if case.flops else None,
                         peak_mb=peak_mb, **case.meta))
        if case.out_bytes and rows[-1]["peak_mb"] is not None:
            rows[-1]["workspace_mb"] = rows[-1]["peak_mb"] - case.out_bytes / 2**20
    by = {r["provider"]: r["ms"] for r in rows}
    for r in rows:
        r["status"] = None  # measured
        r["floor_fraction"] = by[case.floor] / r["ms"] if case.floor in by else None  # 1.0 = at the floor
        for other in ("eager", "compile"):
            r[f"speedup_vs_{other}"] = by[other] / r["ms"] if other in by else None
    for name, status in case.missing.items():  # never faked: a row that says why there is no figure
        rows.append(dict(op=case.op, case=case.label, mode=case.mode, provider=name, ms=None, gbps=None,
                         tflops=None, peak_mb=None, status=status, floor_fraction=None, speedup_vs_eager=None,
                         speedup_vs_compile=None, **case.meta))
    return rows


def our_backends(device, op):
    """The compiled backends of ``op`` (eurokernels/manifest.py) to time on ``device``: cpu on CPU (the Triton
    interpreter is a test tool, not a contender); triton and, when built, cuda on a GPU."""
    from eurokernels import _ext, manifest
    device_type = torch.device(device).type
    return [b for b in manifest.op(op).backends_on(device_type)
            if b != "reference" and not (device_type == "cpu" and b == "triton")
            and (b != "cuda" or _ext.has_cuda_extension())]


def machine():
    info = dict(python=platform.python_version(), torch=torch.__version__, platform=platform.platform(),
                processor=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    else:
        # The CPU model changes between this project's machines ("AMD EPYC" alone does not tell Zen 2 from Zen 5):
        # family / model and ATen's instruction set go with every figure.
        try:
            with open("/proc/cpuinfo") as f:
                fields = dict(l.split(":", 1) for l in f.read().split("\n\n")[0].splitlines() if ":" in l)
            fields = {k.strip(): v.strip() for k, v in fields.items()}
            info["cpu"] = (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} "
                           f"model {fields.get('model', '?')})")
        except OSError:
            pass
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def machine_label(info=None):
    """One line naming the machine for the table header and the plot titles: the GPU's name, or the CPU model, its
    ATen ISA path (torch.backends.cpu.get_cpu_capability()) and the thread count."""
    info = machine() if info is None else info
    if info.get("gpu"):
        return f"GPU {info['gpu']}, torch {info.get('torch', '?')}"
    return (f"CPU {info.get('cpu', info.get('processor', '?'))}, ISA {info.get('cpu_capability', '?')}, "
            f"{info.get('threads', '?')} threads, torch {info.get('torch', '?')}")


def format_table(rows):
    cols = [("op", "op", "{}"), ("mode", "mode", "{}"), ("case", "shape", "{}"), ("provider", "provider", "{}"),
            ("ms", "ms", "{:.2f}"), ("gbps", "GB/s", "{:.1f}"), ("tflops", "TFLOP/s", "{:.3f}"),
            ("floor_fraction", "of floor", "{:.0%}"), ("speedup_vs_eager", "vs eager", "{:.1f}x"),
            ("speedup_vs_compile", "vs compile", "{:.2f}x"), ("peak_mb", "peak MB", "{:.0f}"),
            ("workspace_mb", "workspace MB", "{:.0f}"), ("status", "status", "{}")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    cells = [[c[1] for c in cols]] + [[("" if r.get(k) is None else f.format(r[k])) for k, _, f in cols]
                                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path, rows, device):
    """Every row (a peer that is not here is a row with its ``status`` and no figures) and the machine: CPU model
    and ISA path (``machine.cpu``, ``machine.cpu_capability``) or the GPU, and ``machine_label`` as printed."""
    info = machine()
    with open(path, "w") as f:
        json.dump(dict(machine=info, machine_label=machine_label(info), device=str(device), rows=rows), f, indent=1)


def benchmark_test(cases_fn):
    """A pytest-benchmark test over every (case, provider) of ``cases_fn``'s quick cases on the default device;
    a bench module says ``test_<op> = benchmark_test(cases)``. The CLI (benchmarks/run.py) covers every shape."""
    import sys
    if "pytest" not in sys.modules:
        # The CLI imports the bench modules too: building the params would make every quick case's tensors (GBs)
        # at import time, for nothing.
        return None
    import pytest

    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = [(case, provider) for case in cases_fn(device, quick=True) for provider in case.providers]

    @pytest.mark.parametrize("case,provider", params,
                             ids=[f"{c.op}-{c.mode}-{c.label}-{p}".replace(" ", "_") for c, p in params])
    def test(benchmark, case, provider):
        fn = case.providers[provider]
        fn()  # warm-up (compiles, page-faults the inputs)
        benchmark.extra_info.update(op=case.op, case=case.label, mode=case.mode, bytes=case.bytes,
                                    flops=case.flops)
        benchmark.pedantic(lambda: (fn(), sync(device)), rounds=5, iterations=1, warmup_rounds=1)

    return test


# Plot colours: ours in blues, torch's eager / compile in greys, the floor in black, every peer in a colour of its
# own (named peers keep theirs across ops and runs; others take the next free one in order of appearance).
_BLUES = ["#08519c", "#3182bd", "#6baed6", "#2171b5", "#4292c6", "#9ecae1", "#084594", "#c6dbef"]
_TORCH = {"eager": "#525252", "compile": "#969696"}
_PEERS = {"sdpa": "#ff7f0e", "flex_attention": "#2ca02c", "cut-cross-entropy": "#d62728",
          "torch F.linear_cross_entropy": "#9467bd", "liger": "#8c564b", "flash-attn": "#e377c2",
          "quack": "#bcbd22"}
_OTHER = ["#17becf", "#7f3b08", "#b2182b", "#1b7837", "#762a83", "#e08214"]


def provider_colors(providers):
    """Provider name -> colour, stable for a given provider list (see the palette above)."""
    colors, blues, other = {}, iter(_BLUES * 4), iter(_OTHER * 4)
    for p in dict.fromkeys(providers):
        if p.startswith("eurokernels"):
            colors[p] = next(blues)
        elif p in _TORCH:
            colors[p] = _TORCH[p]
        elif p == "floor":
            colors[p] = "#000000"
        else:
            key = next((k for k in _PEERS if p.lower().startswith(k.lower())), None)
            colors[p] = _PEERS[key] if key else next(other)
    return colors


def write_plots(rows, outdir, machine_info=None):
    """One PNG per op and mode: throughput (GB/s, or TFLOP/s for compute-bound ops) per provider, in the provider's
    colour (provider_colors). Several shapes: a line per provider across the shapes; one shape (--quick): a bar per
    provider (a line through one point reads as nothing). Rows without a figure (a peer not installed) are left
    out. Each title names the machine (machine_label). Returns the paths written. matplotlib is a benchmark-only
    dependency (.ci/requirements.txt)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = machine_label(machine_info)
    rows = [r for r in rows if r.get("ms") is not None]
    colors = provider_colors(r["provider"] for r in rows)
    paths = []
    for op, mode in dict.fromkeys((r["op"], r["mode"]) for r in rows):
        sel = [r for r in rows if r["op"] == op and r["mode"] == mode]
        metric = "tflops" if any(r.get("tflops") for r in sel) else "gbps"
        unit = "TFLOP/s" if metric == "tflops" else "GB/s"
        cases = list(dict.fromkeys(r["case"] for r in sel))
        providers = list(dict.fromkeys(r["provider"] for r in sel if r.get(metric)))
        if len(cases) == 1:
            fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(providers) + 3), 4.5))
            values = [next(r[metric] for r in sel if r["provider"] == p and r.get(metric)) for p in providers]
            bars = ax.bar(range(len(providers)), values, color=[colors[p] for p in providers])
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
            ax.set_xticks(range(len(providers)), providers, rotation=30, ha="right", fontsize=8)
            ax.set_xlabel(cases[0], fontsize=8)
        else:
            fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(cases) + 3), 4.5))
            for provider in providers:
                pts = {r["case"]: r[metric] for r in sel if r["provider"] == provider and r.get(metric)}
                ax.plot(range(len(cases)), [pts.get(c, float("nan")) for c in cases], marker="o", label=provider,
                        color=colors[provider], linestyle="--" if provider == "floor" else "-")
            ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
            ax.legend(fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(f"{op} {mode}\n{where}", fontsize=8)
        ax.grid(alpha=0.3, axis="y" if len(cases) == 1 else "both")
        fig.tight_layout()
        path = os.path.join(outdir, f"{op}_{mode.replace('+', '_')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
