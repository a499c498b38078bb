"""The main job: run every op benchmark on the default device; print one table, write JSON and PNG plots.

    python -m benchmarks.run [--quick] [--ops rms_norm,...] [--device cpu|cuda] [--out benchmarks/results]
"""
import argparse
import importlib
import os
import sys
import time

import torch

from eurokernels import manifest

from .harness import format_table, machine, machine_label, run_case, write_json, write_plots

OPS = manifest.benchmarks()  # each has benchmarks/bench_<op>.py with cases(device, quick)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one representative shape per op, fewer timed calls (under 5 minutes on 2 idle CPU cores)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            p.error(f"--ops: unknown op {o!r}; expected a subset of {OPS}")
    return args, ops


def main(argv=None):
    args, ops = parse_args(argv)
    print(f"eurokernels benchmarks on {args.device}: {machine()}", flush=True)
    t0, rows = time.time(), []
    for op in ops:
        module = importlib.import_module(f"benchmarks.bench_{op}")
        for case in module.cases(args.device, quick=args.quick):
            rows += run_case(case, args.device, max_seconds=3.0 if args.quick else 20.0,
                             progress=lambda s: print(f"[{time.time() - t0:6.0f}s] {s}", file=sys.stderr, flush=True))
    print(f"\n{machine_label()}")  # the table's header: CPU model and ISA path, or the GPU
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    write_json(path, rows, args.device)
    print(f"\nwrote {path}")
    for png in write_plots(rows, args.out):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
