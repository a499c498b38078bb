"""The one list of ops: each op family declares here, once, its public functions, its backends and where each
backend's kernels live. Everything that enumerates ops or backends derives from this module:

- ``_registry.define_op`` refuses an op whose implementations are not exactly its family's backends, and
  ``_registry.kernel_table`` builds the backend -> kernel table an op file adapts (one loader for every backend);
- the test matrix (``tests/conftest.py``: which (device, backend) pairs a test module runs);
- the Triton modules whose kernels ``python -m eurokernels.inspect`` compiles (``triton_modules()``);
- the benchmark CLI's op list (``benchmarks/run.py``);
- the ops table in ``eurokernels.__doc__``; ``tests/test_manifest.py`` checks the README's table, the test and
  benchmark files and the compiled extensions against it.

Adding an op: an entry here, then the files named in the README's "Adding an op" section.
"""
from dataclasses import dataclass, field

BACKENDS = ("reference", "cpu", "triton", "cuda")

# Which backends may run on which device type (eurokernels._backend.resolve gives users the friendly error first).
DEVICE_BACKENDS = {
    "cpu": ("reference", "cpu", "triton"),
    "cuda": ("reference", "triton", "cuda"),
}


@dataclass(frozen=True)
class Op:
    """One op family.

    name: the family; its files are ``eurokernels/ops/<name>.py`` and ``tests/test_<name>.py``.
    functions: the public functions and modules (``eurokernels.<function>``, ``eurokernels.nn.<Module>``).
    title: what the README's ops table calls it.
    kernels: role ("forward", "backward", ...) -> {backend: where}; where is the attribute of the compiled extension
        (cpu: eurokernels._C, cuda: eurokernels._cuda) or "module.attr" under eurokernels.triton. The reference
        backend is always there (eurokernels/reference.py); the op file passes its kernel-shaped adapter.
    benchmark: the module under benchmarks/ (``bench_<benchmark>.py``) timing it, or None when another op's covers it.
    composite: the functions are plain PyTorch ops, no kernel of their own (no ``backend`` argument): they run on
        every device, with the outputs of every backend.
    """
    name: str
    functions: tuple
    title: str
    kernels: dict = field(default_factory=dict)
    benchmark: str = None
    composite: bool = False

    @property
    def backends(self):
        """Every backend of the op, in BACKENDS order (the reference is always one; a composite op runs with all)."""
        if self.composite:
            return BACKENDS
        have = {"reference"}.union(*(set(k) for k in self.kernels.values()))
        return tuple(b for b in BACKENDS if b in have)

    def backends_on(self, device_type):
        """The op's backends that may run on tensors of ``device_type``."""
        return tuple(b for b in self.backends if b in DEVICE_BACKENDS.get(device_type, ()))

    def triton_modules(self):
        return sorted({w.split(".")[0] for k in self.kernels.values() for b, w in k.items() if b == "triton"})


def _same(where):
    """The same kernel name for the three compiled backends (cpu / triton module.attr / cuda)."""
    cpu, triton, cuda = where
    return {"cpu": cpu, "triton": triton, "cuda": cuda}


_ATTENTION = {"forward": _same(("attention_fwd", "attention.forward", "attention_fwd")),
              "backward": _same(("attention_bwd", "attention.backward", "attention_bwd"))}
_CROSS_ENTROPY = {"forward_backward": _same(("cross_entropy_fwd_bwd", "cross_entropy.cross_entropy",
                                              "cross_entropy_fwd_bwd"))}

OPS = (
    Op("rms_norm", ("rms_norm", "nn.RMSNorm"), "RMSNorm (+ fused residual add)",
       {"forward": _same(("rms_norm_fwd", "rms_norm.forward", "rms_norm_fwd")),
        "backward": _same(("rms_norm_bwd", "rms_norm.backward", "rms_norm_bwd"))},
       benchmark="rms_norm"),
    Op("rotary", ("apply_rotary", "rotary_cos_sin", "nn.RotaryEmbedding"),
       "rotary embeddings (NeoX / GPT-J, partial, GQA, packed, in place)",
       {"rotate": _same(("rotary_fwd", "rotary.rotary", "rotary_fwd"))},
       benchmark="rotary"),
    Op("softmax", ("softmax", "log_softmax"), "softmax / log-softmax over any row length",
       {"forward": _same(("softmax_fwd", "softmax.forward", "softmax_fwd")),
        "backward": _same(("softmax_bwd", "softmax.backward", "softmax_bwd"))},
       benchmark="softmax"),
    Op("cross_entropy", ("cross_entropy", "nn.CrossEntropyLoss"), "cross-entropy (smoothing, z-loss, softcap, lse)",
       _CROSS_ENTROPY, benchmark="cross_entropy"),
    # The fused and vocab-parallel losses tile the same cross-entropy kernel (timed in bench_cross_entropy).
    Op("linear_cross_entropy", ("linear_cross_entropy", "nn.LinearCrossEntropyLoss"),
       "LM head + cross-entropy, logits never materialized", _CROSS_ENTROPY),
    Op("vocab_parallel", ("vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"),
       "vocab-parallel cross-entropy (+ linear), torch.distributed", _CROSS_ENTROPY),
    Op("swiglu", ("swiglu", "geglu"), "SwiGLU / GeGLU MLP activation (separate or fused gate+up projection)",
       {"forward": _same(("swiglu_fwd", "swiglu.forward", "swiglu_fwd")),
        "backward": _same(("swiglu_bwd", "swiglu.backward", "swiglu_bwd"))},
       benchmark="swiglu"),
    Op("attention", ("attention",),
       "fused attention (FlashAttention-2), causal / window / softcap / GQA / packed",
       _ATTENTION, benchmark="attention"),
    Op("merge_attention_states", ("merge_attention_states",),
       "merge two partial attention results (out, lse) over disjoint keys (PyTorch ops, fp32 math)", composite=True),
    # Context-parallel attention runs the attention kernels on each rank (timed in bench_attention).
    Op("context_parallel", ("context_parallel_attention", "context_parallel_shard", "context_parallel_unshard"),
       "context-parallel attention (load-balanced causal shards, ring or all-gather K/V), torch.distributed", _ATTENTION),
)

BY_NAME = {op.name: op for op in OPS}


def op(name):
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"op: expected one of {', '.join(BY_NAME)}, got {name!r}") from None


def triton_modules():
    """The modules under eurokernels.triton that hold kernels (and their AOT specs)."""
    return sorted({m for o in OPS for m in o.triton_modules()})


def benchmarks():
    return [o.benchmark for o in OPS if o.benchmark]


def table():
    """The ops table (markdown rows), as the README carries it."""
    rows = ["| op | function | " + " | ".join(BACKENDS) + " |", "|---|---|" + "---|" * len(BACKENDS)]
    for o in OPS:
        functions = ", ".join(f"`eurokernels.{f}`" for f in o.functions)
        rows.append(f"| {o.title} | {functions} | " + " | ".join("yes" if b in o.backends else "—" for b in BACKENDS)
                    + " |")
    return rows
