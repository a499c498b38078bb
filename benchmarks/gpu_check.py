"""The GPU run in one command: on a fresh clone on a machine with one NVIDIA GPU, build, run the whole test suite on
CUDA, then the quick benchmark table, and write one JSON and one log.

    python3 -m benchmarks.gpu_check [--budget SECONDS] [--out DIR] [--jobs N] [--dry-run]

Steps, most important first (the estimates are guesses for one GPU and 16 cores, not measurements; `--budget` drops
steps from the end of this list until the estimates fit -- the default 480 s keeps all but tests-cpu -- and gives
each step at most what is left of the budget):
  install     .venv, .ci/requirements.txt, `pip install -e .` with the CUDA extension (MAX_JOBS=--jobs)
  env         the GPU, CUDA and CPU as torch sees them, into the JSON (a missing GPU stops the run)
  tests-gpu   every test on the cuda device: reference, triton and cuda backends (`-k cuda`)
  bench       `python -m benchmarks.run --quick --device cuda` (the table, its JSON and plots under --out)
  tests-cpu   the rest of the suite (cpu device), which CI also runs on CPU-only machines

Standard library only at import time: it runs before torch is installed. `--dry-run` (a CPU-runnable test,
tests/test_benchmarks_cli.py) checks everything the real run calls exists: the step list, the files and modules
each step names, that benchmarks.run accepts the arguments given to it, and that pytest collects both test
selections. Nothing here has run on a GPU yet (no GPU has been lent to this project's CI).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"


def steps(args):
    """(name, estimated seconds, command) in priority order; commands run from the repository root."""
    py = str(VENV_PY)
    pip_install = (f"{sys.executable} -m venv .venv && {py} -m pip install -r .ci/requirements.txt && "
                   f"MAX_JOBS={args.jobs} {py} -m pip install --no-build-isolation -e .")
    probe = ("import json, os, platform, torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; "
             "p = torch.cuda.get_device_properties(0); print(json.dumps(dict(gpu=p.name, capability="
             "f'{p.major}.{p.minor}', memory_gib=round(p.total_memory / 2**30, 1), torch=torch.__version__, "
             "cuda=torch.version.cuda, cpu=platform.processor(), cores=os.cpu_count())))")
    junit = lambda name: f"--junitxml={args.out}/{name}.xml"  # noqa: E731
    return [
        ("install", 150, pip_install),
        ("env", 10, f"{py} -c \"{probe}\""),
        ("tests-gpu", 180, f"{py} -m pytest tests -q -k cuda -p no:cacheprovider {junit('tests-gpu')}"),
        ("bench", 120, f"{py} -m benchmarks.run --quick --device cuda --out {args.out}/bench"),
        ("tests-cpu", 300, f"{py} -m pytest tests -q -k 'not cuda' -p no:cacheprovider {junit('tests-cpu')}"),
    ]


def plan(all_steps, budget):
    """The steps that fit the budget by their estimates, dropping from the end (install and env always run)."""
    kept, total = [], 0
    for i, (name, est, cmd) in enumerate(all_steps):
        if i >= 2 and budget is not None and total + est > budget:
            break
        kept.append((name, est, cmd))
        total += est
    return kept, [s[0] for s in all_steps[len(kept):]]


def dry_run(args, all_steps):
    """Everything the real run would call exists and accepts its arguments (runs on CPU, in this interpreter)."""
    problems = []
    names = [s[0] for s in all_steps]
    if names != ["install", "env", "tests-gpu", "bench", "tests-cpu"]:
        problems.append(f"step list changed: {names}")
    for path in (".ci/requirements.txt", "setup.py", "tests", "benchmarks/run.py"):
        if not (ROOT / path).exists():
            problems.append(f"missing {path}")
    from benchmarks import run  # imports torch and eurokernels: this interpreter must have them
    try:
        run.parse_args(["--quick", "--device", "cuda", "--out", f"{args.out}/bench"])
    except SystemExit as e:
        problems.append(f"benchmarks.run refuses the step's arguments ({e})")
    for sel in ("cuda", "not cuda"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-q", "--collect-only", "-k", sel,
                               "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode not in (0, 5):  # 5: nothing selected (no cuda device here for `-k cuda`)
            problems.append(f"pytest cannot collect -k {sel!r}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=480.0, help="wall seconds for the whole run (default 480)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs (MAX_JOBS)")
    p.add_argument("--dry-run", action="store_true", help="check the steps' commands exist; run nothing")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    if args.jobs < 1:
        p.error(f"--jobs: expected at least 1, got {args.jobs}")
    all_steps = steps(args)
    if args.dry_run:
        problems = dry_run(args, all_steps)
        print("\n".join(problems) if problems else f"gpu_check dry run: {len(all_steps)} steps ready")
        return 1 if problems else 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kept, dropped = plan(all_steps, args.budget)
    report = dict(budget_s=args.budget, dropped_for_budget=dropped, steps=[])
    t0 = time.time()
    with open(out / "gpu_check.log", "w") as log:
        for name, est, cmd in kept:
            left = args.budget - (time.time() - t0)
            if left <= 0:
                report["dropped_for_budget"].append(name)
                continue
            log.write(f"\n===== {name} (estimate {est} s, {left:.0f} s left): {cmd}\n")
            log.flush()
            start = time.time()
            try:  # env's one JSON line goes to the report, everything else to the log
                proc = subprocess.run(cmd, shell=True, cwd=ROOT, stdout=subprocess.PIPE if name == "env" else log,
                                      stderr=subprocess.STDOUT, text=True, timeout=left)
                rc = proc.returncode
                if name == "env":
                    log.write(proc.stdout)
                    report["machine"] = json.loads(proc.stdout.strip().splitlines()[-1]) if rc == 0 else None
            except subprocess.TimeoutExpired:
                rc = "timeout"
            report["steps"].append(dict(name=name, rc=rc, seconds=round(time.time() - start, 1)))
            print(f"{name}: rc={rc} in {time.time() - start:.0f} s", flush=True)
            if name in ("install", "env") and rc != 0:
                break  # nothing after them can run
    report["total_s"] = round(time.time() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.log'}")
    return 0 if all(s["rc"] == 0 for s in report["steps"]) else 1  # a step left out for the budget is reported


if __name__ == "__main__":
    sys.exit(main())
