"""python -m eurokernels.inspect: see eurokernels/inspect/__init__.py."""
import os

if __name__ == "__main__":  # run as the command: real compiles (the workers drop it too; this covers this process).
    os.environ.pop("TRITON_INTERPRET", None)  # Imported (a test reading its helpers), it leaves the process alone.

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from . import TARGETS, inspect  # noqa: E402

COLUMNS = [  # header, row key, formatter
    ("kernel", "kernel", str), ("config", "config", str), ("target", "target", str),
    ("regs", "registers", str), ("agprs", "agprs", str), ("spills", "spills", str), ("local", "local_insns", str),
    ("shared", "shared", str), ("occ", "occupancy", str), ("ld_bits", "load_bits", str),
    ("st_bits", "store_bits", str), ("mma", "mma_count", str), ("stack", "stack", str),
    ("priv", "private_segment", str), ("fallback", "fallback_reason", lambda v: "yes"),
]


LEGEND = """\
regs     registers per thread (VGPRs on AMD; agprs: AMD accumulation registers)
spills   bytes spilled per thread: NVIDIA local memory (cuobjdump LOCAL), AMD scratch (ScratchSize)
shared   shared memory / LDS bytes per block (CUDA C++ kernels: static, plus the dynamic shared memory the
         launcher passes where it passes some: the attention kernels)
local    local-memory instructions in the SASS (LDL/STL: spills, stack arrays), 0 expected (NVIDIA)
stack    stack frame bytes per thread (cuobjdump STACK; ptxas may spill there with LOCAL 0), 0 expected (NVIDIA)
priv     private segment bytes per lane the kernel descriptor requests (.amdhsa_private_segment_fixed_size), AMD
fallback a config declared as a deliberate fallback (e.g. fp32 attention): allowed to spill, with its measured
         counts, and never chosen for bf16/fp16 (tests/test_aot.py); every other row must have all of
         spills, stack, local (NVIDIA) / spills, priv (AMD) at 0
occ      AMD waves per SIMD as the compiler reports it
ld/st_bits  widest global load / store per thread in the machine code (SASS LDG/STG, amdgcn global/buffer)
mma      matrix instructions: HMMA/HGMMA on NVIDIA, v_mfma on AMD
config   Triton constexprs, warps, and the alignment case (div16: hidden and strides multiples of 16 elements;
         div8: multiples of 8 only; odd: neither)"""


def _fmt(v):
    return "-" if v is None else str(v)


def table(result):
    rows = result["rows"]
    lines = []
    for source in ("triton", "cuda"):
        part = [r for r in rows if r["source"] == source]
        if not part:
            continue
        cells = [[h for h, _, _ in COLUMNS]]
        for r in part:
            if r.get("error"):
                cells.append([r["kernel"], r["config"], r["target"], "ERROR: " + r["error"].splitlines()[0]])
            else:
                cells.append([_fmt(None if r.get(k) is None else f(r.get(k))) for _, k, f in COLUMNS])
        widths = [max(len(c[i]) for c in cells if i < len(c) and len(c) == len(COLUMNS)) for i in range(len(COLUMNS))]
        title = "Triton kernels" if source == "triton" else f"CUDA C++ kernels ({result['cuda_extension']})"
        lines += ["", title]
        for c in cells:
            if len(c) != len(COLUMNS):
                lines.append("  ".join(c))
            else:
                lines.append("  ".join(x.rjust(w) if i >= 3 else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths))))
    if result["cuda_extension"] is None:
        lines += ["", "CUDA C++ kernels: extension eurokernels/_cuda*.so not built (build with nvcc on PATH)"]
    lines += ["", simulated(result.get("simulated"))]
    lines += ["", LEGEND]
    return "\n".join(lines)


def simulated(names):
    """Which CUDA C++ kernels run on CPU under the simulation, per kernel (instantiations counted)."""
    if names is None:
        return "CUDA simulation: eurokernels._cuda_sim not built (reinstall: pip install --no-build-isolation -e .)"
    counts = {}
    for n in names:
        base = n.split("<", 1)[0]
        counts[base] = counts.get(base, 0) + 1
    lines = ["CUDA C++ kernels that run on CPU under the simulation (EUROKERNELS_CUDA_SIM=1, backend='cuda'):"]
    lines += [f"  {k}  ({v} instantiations)" for k, v in sorted(counts.items())  # (not the test kernels)
              if not k.startswith(("eurokernels::sim::tests::", "eurokernels::testing::"))]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eurokernels.inspect", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output: {targets, cuda_extension, rows}")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--kernels", default="*", help="fnmatch pattern on kernel names (e.g. 'rms_norm_*')")
    p.add_argument("--workers", type=int, default=2, help="compile processes (default 2)")
    p.add_argument("--cuda-so", default=None, help="CUDA extension to read (default: eurokernels/_cuda*.so)")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        result = inspect(targets, args.kernels, workers=args.workers, cuda_so=args.cuda_so)
    except ValueError as e:
        p.error(str(e))
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(table(result))
    return 1 if any(r.get("error") for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
