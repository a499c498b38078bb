"""Single-step precision of each op's cpu backend against float64 truth, next to PyTorch's own float32 error.

    python -m benchmarks.precision            # both CPU instruction-set paths of this machine, one table
    python -m benchmarks.precision --json     # this process's path only, as JSON (what the table is built from)

Why: a 30-step training curve (tests/test_integration_transformers.py) amplifies any rounding difference
chaotically, so it cannot say *which* op is less accurate, or whether one is. Here every op runs once, forward and
backward, at the shapes of that test's tiny models (tokens 4 x 32, hidden 64, 4 query / 2 key-value heads of dim
16, vocabulary 32000), in float32, and each output and gradient is compared with the same op in float64 (the
reference backend on float64 inputs). The figure is the normwise relative error max|out - truth| / max|truth|;
"torch" is the reference backend in float32, i.e. plain PyTorch arithmetic, the yardstick the tests scale by.

The two paths: the package's C++ is built for AVX2; the exp-bound softmax family switches to AVX-512 code at run
time where ATen reports AVX-512 (csrc/cpu_avx512.h); ATen's vectorized ops follow ATEN_CPU_CAPABILITY, while MKL
and oneDNN (torch's matmuls, also inside our attention and fused loss) pick their own code paths. AVX2_ENV lowers
all three, so a fresh process with it computes what an AVX2-only machine computes: on an AVX-512 machine it
reproduced the Zen 2 machine's HF fp32 Gemma-3 training curve (largest deviation from fp64 2.4e-6, as measured
there; 1.5e-5 without it). The table runs each path in its own subprocess (the variables are read once).
"""
import argparse
import json
import os
import subprocess
import sys

import torch

import eurokernels as ek

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TOKENS, SEQ, HIDDEN, HEADS_Q, HEADS_KV, HEAD_DIM, VOCAB = 128, 32, 64, 4, 2, 16, 32000


def rel_err(out, truth):
    scale = truth.abs().max().item()
    return (out.double() - truth).abs().max().item() / (scale if scale > 0 else 1.0)


def _cases():
    """name -> (fn(backend, *fp64 leaves) -> tensor or tuple of tensors, fp64 input leaves, indices of the leaves
    whose gradients are compared). Inputs are drawn once in float64; both backends see the same values."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

    cos, sin = ek.rotary_cos_sin(256, HEAD_DIM, base=10000.0, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    labels[::9] = -100
    b = TOKENS // SEQ
    return {
        "rms_norm (gemma)": (lambda be, x, w: ek.rms_norm(x, w, offset=1.0, casting="gemma", backend=be),
                             [randn(TOKENS, HIDDEN), randn(HIDDEN, scale=0.1)], [0, 1]),
        "rms_norm (llama)": (lambda be, x, w: ek.rms_norm(x, w, backend=be),
                             [randn(TOKENS, HIDDEN), 1 + randn(HIDDEN, scale=0.1)], [0, 1]),
        "rotary": (lambda be, q, k, c, s: ek.apply_rotary(q, k, c, s, backend=be),
                   [randn(b, SEQ, HEADS_Q, HEAD_DIM), randn(b, SEQ, HEADS_KV, HEAD_DIM), cos, sin], [0, 1]),
        "attention (causal, window 8)": (
            lambda be, q, k, v: ek.attention(q, k, v, causal=True, window_size=(7, 0), backend=be),
            [randn(b, SEQ, HEADS_Q, HEAD_DIM), randn(b, SEQ, HEADS_KV, HEAD_DIM), randn(b, SEQ, HEADS_KV, HEAD_DIM)],
            [0, 1, 2]),
        "attention (causal, softcap 1)": (
            lambda be, q, k, v: ek.attention(q, k, v, causal=True, softcap=1.0, backend=be),
            [randn(b, SEQ, HEADS_Q, HEAD_DIM), randn(b, SEQ, HEADS_KV, HEAD_DIM), randn(b, SEQ, HEADS_KV, HEAD_DIM)],
            [0, 1, 2]),
        "softmax": (lambda be, x: ek.softmax(x, backend=be), [randn(TOKENS, VOCAB, scale=3.0)], [0]),
        "cross_entropy": (lambda be, x: ek.cross_entropy(x, labels, backend=be),
                          [randn(TOKENS, VOCAB, scale=3.0)], [0]),
        "cross_entropy (softcap 3)": (lambda be, x: ek.cross_entropy(x, labels, softcap=3.0, backend=be),
                                      [randn(TOKENS, VOCAB, scale=3.0)], [0]),
        "linear_cross_entropy": (lambda be, h, w: ek.linear_cross_entropy(h, w, labels, backend=be),
                                 [randn(TOKENS, HIDDEN), randn(VOCAB, HIDDEN, scale=0.1)], [0, 1]),
        "swiglu": (lambda be, g, u: ek.swiglu(g, u, backend=be),
                   [randn(TOKENS, 2 * HIDDEN, scale=2.0), randn(TOKENS, 2 * HIDDEN)], [0, 1]),
        "geglu (tanh)": (lambda be, g, u: ek.geglu(g, u, backend=be),
                         [randn(TOKENS, 2 * HIDDEN, scale=2.0), randn(TOKENS, 2 * HIDDEN)], [0, 1]),
    }


def _run(fn, leaves, grad_of, backend, dtype, upstream):
    """Outputs and the gradients of the leaves in grad_of for one backend and dtype; the upstream gradient is the
    same fp64 draw, rounded to dtype."""
    xs = [t.to(dtype).requires_grad_(i in grad_of) for i, t in enumerate(leaves)]
    outs = fn(backend, *xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * u.to(dtype)).sum() for o, u in zip(outs, upstream))
    grads = torch.autograd.grad(loss, [xs[i] for i in grad_of])
    return [o.detach() for o in outs], list(grads)


def measure():
    """{op: {"torch": {what: err}, "cpu": {what: err}}} for this process's instruction-set path."""
    g = torch.Generator().manual_seed(1)
    result = {}
    for name, (fn, leaves, grad_of) in _cases().items():
        with torch.no_grad():
            shapes = [o.shape for o in (lambda r: r if isinstance(r, tuple) else (r,))(fn("reference", *leaves))]
        upstream = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        truth = _run(fn, leaves, grad_of, "reference", torch.float64, upstream)
        row = {}
        for label, backend in (("torch", "reference"), ("cpu", "cpu")):
            outs, grads = _run(fn, leaves, grad_of, backend, torch.float32, upstream)
            errs = {f"out{i}" if len(outs) > 1 else "out": rel_err(o, t)
                    for i, (o, t) in enumerate(zip(outs, truth[0]))}
            errs.update({f"d{i}": rel_err(d, t) for i, d, t in zip(grad_of, grads, truth[1])})
            row[label] = errs
        result[name] = row
    return result


def path_name():
    from eurokernels import _ext
    return "avx512" if _ext.cpu().cpu_avx512_enabled() else "avx2"


def measure_in_subprocess(avx2=False):
    """measure() in a fresh process (the ISA variables are read once, at the libraries' first use)."""
    env = dict(os.environ, **(AVX2_ENV if avx2 else {}))
    out = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--json"], env=env, check=True,
                         capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    return json.loads(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="this process's path only, as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.json:
        print(json.dumps({"path": path_name(), "capability": torch.backends.cpu.get_cpu_capability(),
                          "errors": measure()}))
        return
    from .harness import machine
    print(f"single-step relative error against float64 (max|err| / max|truth|), float32, cpu backend: {machine()}")
    runs = [measure_in_subprocess()]
    if runs[0]["path"] == "avx512":
        runs.append(measure_in_subprocess(avx2=True))
    header = f"{'op':30} {'what':5}" + "".join(f" | {r['path'] + ' torch':>12} {r['path'] + ' cpu':>10} {'ratio':>5}"
                                             for r in runs)
    print(header)
    for op, row in runs[0]["errors"].items():
        for what in row["torch"]:
            line = f"{op:30} {what:5}"
            for r in runs:
                base, ours = r["errors"][op]["torch"][what], r["errors"][op]["cpu"][what]
                line += f" | {base:12.2e} {ours:10.2e} {ours / base if base else float('inf'):5.2f}"
            print(line)

if __name__ == "__main__":
    main()
