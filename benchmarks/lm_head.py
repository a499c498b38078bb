"""The LM head + loss, one process per measurement: ours against Cut Cross-Entropy, torch's chunked loss, eager,
and the bare matmuls (issue 15's "fast and small" comparison).

    python -m benchmarks.lm_head [--shapes 2048x1024x128000,4096x2304x256000] [--dtypes float32,bfloat16]
                                 [--providers ...] [--out benchmarks/results/lm_head.json]

Each (shape, dtype, provider) runs in a fresh process, so that no provider inherits another's allocator state or
compiled graphs: a first call (compiles, page-faults the inputs), then the second call is timed and its memory
measured (harness.peak_memory_mb: the rise of the resident-set high-water mark), and a third call is timed; the
row keeps the faster of the two. ``workspace MB`` is that peak minus the gradients of hidden and weight, which every
provider returns. Providers:
  eurokernels                 linear_cross_entropy with its defaults (the automatic mode, see its docstring)
  eurokernels[tiled]          grad_in_forward=False: 4 matmuls, one tile of logits
  eurokernels[grad_in_forward] grad_in_forward=True with the previous fixed chunking (2^27 logits per chunk)
  cut-cross-entropy           Cut Cross-Entropy's own CPU path (impl="torch_compile"), when installed
  torch-chunked               torch's F.linear_cross_entropy(options=LinearCrossEntropyOptions())
  eager                       F.cross_entropy(F.linear(h, w), y)
  matmuls                     the three matmuls of any LM head, nothing else: logits = h W^T, d_h = g W, d_W = g^T h
                              (g the logits' buffer), in the inputs' dtype -- or on fp32 copies where this CPU has no
                              native 16-bit GEMM, as ours does (eurokernels.ops._ce_tiling.cpu_gemm16_native)
A provider that is not installed or not in this torch is a row saying so.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

SHAPES = [(2048, 1024, 128000), (4096, 2304, 256000)]
DTYPES = ["float32", "bfloat16"]
PROVIDERS = ["eurokernels", "eurokernels[tiled]", "eurokernels[grad_in_forward]", "cut-cross-entropy",
             "torch-chunked", "eager", "matmuls"]


def _provider(name, h, w, y):
    """A zero-argument callable computing (d_hidden, d_weight), or a string saying why it cannot run here."""
    import torch.nn.functional as F

    import eurokernels as ek

    def grads(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(), (h, w))

    if name == "eurokernels":
        return grads(lambda: ek.linear_cross_entropy(h, w, y))
    if name == "eurokernels[tiled]":
        return grads(lambda: ek.linear_cross_entropy(h, w, y, grad_in_forward=False))
    if name == "eurokernels[grad_in_forward]":
        chunk = max(1, (1 << 27) // w.shape[0])
        return grads(lambda: ek.linear_cross_entropy(h, w, y, grad_in_forward=True, chunk_size=(chunk, w.shape[0])))
    if name == "cut-cross-entropy":
        try:
            from cut_cross_entropy import linear_cross_entropy as cce
        except ImportError:
            return "not installed (pip install eurokernels[peers])"
        impl = "torch_compile" if h.device.type == "cpu" else "cce"
        return grads(lambda: cce(h, w, y, impl=impl))
    if name == "torch-chunked":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            return f"not in torch {torch.__version__}"
        return grads(lambda: F.linear_cross_entropy(h, w, y, options=torch.nn.LinearCrossEntropyOptions()))
    if name == "eager":
        return grads(lambda: F.cross_entropy(F.linear(h, w), y))
    if name == "matmuls":
        return _matmuls(h.detach(), w.detach())
    raise ValueError(f"--providers: unknown provider {name!r}; expected some of {PROVIDERS}")


def _matmuls(h, w):
    from eurokernels.ops._ce_tiling import cpu_gemm16_native
    emulate = h.device.type == "cpu" and h.dtype != torch.float32 and not cpu_gemm16_native(h.dtype)

    def run():
        a, b = (h.float(), w.float()) if emulate else (h, w)
        g = a @ b.t()
        dh, dw = g @ b, g.t() @ a
        return (dh.to(h.dtype), dw.to(w.dtype)) if emulate else (dh, dw)
    return run


def measure_one(shape, dtype, name, device="cpu"):
    """One row, in this process (the parent runs each in a child process)."""
    from .harness import machine, peak_memory_mb, sync
    n, hdim, v = shape
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hdim, generator=g).to(device, dt).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) * 0.02).to(device, dt).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g).to(device)
    row = dict(shape="x".join(map(str, shape)), dtype=dtype, provider=name, machine=machine())
    fn = _provider(name, h, w, y)
    if isinstance(fn, str):
        return dict(row, status=fn)
    fn()
    sync(device)
    t0 = time.perf_counter()
    peak = peak_memory_mb(fn, device)
    sync(device)
    t1 = time.perf_counter()
    fn()
    sync(device)
    t2 = time.perf_counter()
    grads_mb = (h.numel() + w.numel()) * h.element_size() / 2**20
    return dict(row, status=None, s=min(t1 - t0, t2 - t1), peak_mb=peak,
                workspace_mb=None if peak is None else peak - grads_mb)


def _child(shape, dtype, name, timeout):
    cmd = [sys.executable, "-m", "benchmarks.lm_head", "--one", f"{'x'.join(map(str, shape))}:{dtype}:{name}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return dict(shape="x".join(map(str, shape)), dtype=dtype, provider=name, status=f"timed out ({timeout} s)")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return dict(shape="x".join(map(str, shape)), dtype=dtype, provider=name, status=f"failed: {tail}")
    return json.loads(lines[-1])


def _table(rows):
    out = []
    for key in dict.fromkeys((r["shape"], r["dtype"]) for r in rows):
        sel = [r for r in rows if (r["shape"], r["dtype"]) == key]
        ref = {r["provider"]: r for r in sel if r.get("s")}
        out.append(f"\n{key[0]} {key[1]}")
        out.append(f"  {'provider':30s} {'s':>8s} {'workspace MB':>13s} {'vs matmuls':>11s} {'vs CCE time':>12s}"
                   f" {'vs CCE memory':>14s}")
        for r in sel:
            if not r.get("s"):
                out.append(f"  {r['provider']:30s} {r['status']}")
                continue
            mm, cce = ref.get("matmuls"), ref.get("cut-cross-entropy")
            ws = r.get("workspace_mb")
            cells = [f"{r['s']:8.2f}", f"{ws:13.0f}" if ws is not None else f"{'':13s}",
                     f"{r['s'] / mm['s']:10.2f}x" if mm else f"{'':11s}",
                     f"{r['s'] / cce['s']:11.2f}x" if cce else f"{'':12s}",
                     f"{ws / cce['workspace_mb']:13.2f}x" if cce and ws is not None and cce.get("workspace_mb")
                     else ""]
            out.append(f"  {r['provider']:30s} " + " ".join(cells))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--timeout", type=int, default=900, help="seconds per provider process")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "lm_head.json"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # SHAPE:DTYPE:PROVIDER, the child process
    args = p.parse_args(argv)
    if args.one:
        shape, dtype, name = args.one.split(":", 2)
        print(json.dumps(measure_one(tuple(map(int, shape.split("x"))), dtype, name)), flush=True)
        return
    try:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
        assert all(len(s) == 3 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        p.error(f"--shapes: expected TOKENSxHIDDENxVOCAB[,...], got {args.shapes!r}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES + ["float16"]:
            p.error(f"--dtypes: expected some of float32, bfloat16, float16, got {d!r}")
    providers = [q for q in args.providers.split(",") if q]
    for q in providers:
        if q not in PROVIDERS:
            p.error(f"--providers: unknown provider {q!r}; expected some of {PROVIDERS}")
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for name in providers:
                rows.append(_child(shape, dtype, name, args.timeout))
                r = rows[-1]
                print(f"{r['shape']} {r['dtype']} {name}: " + (f"{r['s']:.2f} s, workspace {r['workspace_mb']:.0f} MB"
                      if r.get("s") else r["status"]), file=sys.stderr, flush=True)
    from .harness import machine
    print(f"LM head + loss, fwd+bwd, one process per row; machine: {machine()}")
    print(_table(rows))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(machine=machine(), rows=rows), f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
