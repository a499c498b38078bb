"""The one way the Triton launchers launch a kernel, and the record mode that turns their launches into AOT specs.

Every launcher calls `launch(kernel, grid, *args, num_warps=..., **constexprs)`. Normally that is
`kernel[grid](...)`. Inside `recording()` the launch is not run but recorded: kernel, grid, and the
specialization Triton's JIT would compute for these arguments -- the signature (`*bf16`, `i32`, ...), the
integers that become constexprs (Triton 3.8 specializes an int equal to 1, and None), and the divisibility
attributes (`tt.divisibility` 16 for an int that is a multiple of 16 and for a pointer 16-byte aligned; on AMD
also `tt.pointer_range` 32 for a tensor whose storage is under 2 GiB, when buffer ops are on, the default).
The attributes are computed by Triton's own binder (`create_function_from_signature` with the NVIDIA and the
AMD backend, `native_specialize_impl` underneath), so they follow the installed Triton's rules exactly rather
than a copy of them.

`aot_specs()` of each kernel module runs that module's launchers in record mode over the shapes European models
use (eurokernels/triton/_shapes.py); the rows eurokernels.inspect compiles are those records, deduplicated.
Launchers pick their configuration by device type, so the tensors must say "cuda" without a GPU: they are
FakeTensorMode tensors (torch._subclasses.fake_tensor), which carry device, dtype, shape, strides and storage
offset and allocate nothing, and launchers' own tensor code (torch.empty, .sum, .to) runs on them unchanged.
A fake tensor has no data pointer, so the recorder gives each one a base at a multiple of 512 bytes (what the CUDA
caching allocator returns) plus storage_offset * itemsize: views keep the misalignment a real one would have.
"""
import contextlib
import contextvars
import functools
from dataclasses import dataclass, field

import torch
import triton

_RECORDER = contextvars.ContextVar("eurokernels_triton_recorder", default=None)

# Base address of every recorded tensor's storage: the CUDA caching allocator hands out blocks aligned to 512 bytes.
ALLOCATOR_ALIGNMENT = 512

# SMs / CUs of the GPUs the launchers are recorded for (persistent grids depend on it): A100 108, H100 SXM 132,
# MI250X (one GCD) 110, MI300X 304.
RECORDED_SM_COUNTS = (108, 132, 110, 304)


@dataclass
class Recorder:
    sm_count: int
    family: object = None  # GPU family the launchers must assume (attention.gpu_family), None: not overridden
    run: bool = False  # also launch (tests: a real launch and its record side by side)
    launches: list = field(default_factory=list)


@contextlib.contextmanager
def recording(sm_count=RECORDED_SM_COUNTS[1], run=False, family=None):
    """Record the launches made inside the block (see the module docstring); yields the Recorder. `family`: the
    GPU family launchers that pick per-family configs assume (eurokernels/triton/attention.py gpu_family)."""
    rec = Recorder(sm_count, family, run)
    token = _RECORDER.set(rec)
    try:
        yield rec
    finally:
        _RECORDER.reset(token)


def recording_sm_count():
    """The SM count launchers must assume while recording (None when not recording)."""
    rec = _RECORDER.get()
    return None if rec is None else rec.sm_count


def recording_family():
    """The GPU family launchers must assume while recording (None when not recording or not given)."""
    rec = _RECORDER.get()
    return None if rec is None else rec.family


def launch(kernel, grid, *args, num_warps, num_stages=None, **kwargs):
    """kernel[grid](*args, **kwargs, num_warps=..., num_stages=...) -- or, while recording, its record."""
    rec = _RECORDER.get()
    opts = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    if rec is not None:
        rec.launches.append(record(kernel, grid, args, kwargs, opts))
        if not rec.run:
            return None
    return kernel[grid](*args, **kwargs, **opts)


class _Pointer:
    """What Triton's specializer reads of a tensor argument: dtype, data_ptr(), and (AMD buffer ops) the byte range
    of its storage."""

    def __init__(self, t):
        self.dtype = t.dtype
        fake = isinstance(t, torch._subclasses.fake_tensor.FakeTensor) or t.device.type == "meta"
        base = ALLOCATOR_ALIGNMENT if fake else t.untyped_storage().data_ptr()
        self._ptr = base + t.storage_offset() * t.element_size()
        self._range = t.untyped_storage().nbytes()

    def data_ptr(self):
        return self._ptr

    def ptr_range(self):
        return self._range


@functools.cache
def _binders(kernel):
    """Triton's own argument binder for `kernel`, per backend: the function the JIT calls at every launch to get the
    specialization (built from the plain Python function, so it works when the module runs under the interpreter)."""
    from triton.backends.amd.compiler import HIPBackend
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import JITFunction, create_function_from_signature
    jit = JITFunction(kernel.fn)
    return jit, {"cuda": create_function_from_signature(jit.signature, jit.params, CUDABackend),
                 "hip": create_function_from_signature(jit.signature, jit.params, HIPBackend)}


def jit_key(kernel, args, kwargs, opts):
    """The JIT's specialization of a launch: (signature {arg: type}, constexprs {arg: value}, attrs {backend: {arg:
    descriptor}}, options). A descriptor is Triton's: "D" divisible by 16, "S" pointer range 32 bits (AMD)."""
    jit, binders = _binders(kernel)
    wrap = [_Pointer(a) if isinstance(a, torch.Tensor) else a for a in args]
    wrapk = {k: _Pointer(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    names = [p.name for p in jit.params]
    signature, constexprs, attrs = {}, {}, {}
    for backend, binder in binders.items():
        params, spec, options = binder(*wrap, **wrapk, **opts)
        attrs[backend] = {}
        for name, (ty, desc) in zip(names, spec):
            if ty == "constexpr":
                constexprs[name] = params[name]
            else:
                signature[name] = ty
                if desc:
                    attrs[backend][name] = desc
    return signature, constexprs, attrs, dict(options)


@dataclass(frozen=True)
class Launch:
    kernel: object
    grid: tuple
    signature: dict
    constexprs: dict
    attrs: dict
    num_warps: int
    num_stages: object  # None: the backend's default, as a launch without num_stages gets

    def key(self):
        """What makes two launches the same compiled kernel."""
        return (self.kernel.fn.__qualname__, tuple(self.signature.items()),
                tuple(sorted((k, repr(v)) for k, v in self.constexprs.items())),
                tuple((b, tuple(sorted(a.items()))) for b, a in sorted(self.attrs.items())),
                self.num_warps, self.num_stages)


def record(kernel, grid, args, kwargs, opts):
    signature, constexprs, attrs, options = jit_key(kernel, args, kwargs, opts)
    grid = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
    return Launch(kernel, grid, signature, constexprs, attrs, options["num_warps"], options.get("num_stages"))


def fake_cuda():
    """The FakeTensorMode the representative launches run under (tensors on "cuda", no GPU, no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode()


def specs_from_launches(launches, describe):
    """AOT spec dicts (eurokernels/inspect/aot.py) of recorded launches, one per distinct compiled kernel, in first-seen
    order. `describe(launch)` gives the module's own labels: name, memory_bound, rows_aligned, block, and optionally
    `fallback` (a config the test lets spill, with its measured count)."""
    seen, specs = set(), []
    for launch_ in launches:
        k = launch_.key()
        if k in seen:
            continue
        seen.add(k)
        spec = dict(kernel=launch_.kernel, signature=dict(launch_.signature), constexprs=dict(launch_.constexprs),
                    attrs={b: dict(a) for b, a in launch_.attrs.items()}, num_warps=launch_.num_warps,
                    num_stages=launch_.num_stages, aligned=sorted(launch_.attrs["cuda"]),
                    variant=variant_text(launch_))
        spec.update(describe(launch_))
        specs.append(spec)
    return specs


def variant_text(launch_):
    """The JIT specialization of a launch in a few words, so each compiled kernel has its own inspect row:
    the integer arguments marked divisible by 16, the pointers that are not, and whether AMD gets 32-bit
    pointer ranges (buffer ops) for all, some or none of the tensors."""
    cuda, hip = launch_.attrs["cuda"], launch_.attrs["hip"]
    ptrs = [n for n, t in launch_.signature.items() if t.startswith("*")]
    ints = [n for n, t in launch_.signature.items() if t[0] in "iu" and t != "u1"]
    parts = ["div16:" + (",".join(n for n in ints if "D" in cuda.get(n, "")) or "-")]
    odd = [n for n in ptrs if "D" not in cuda.get(n, "")]
    if odd:
        parts.append("ptr_unaligned:" + ",".join(odd))
    ranged = [n for n in ptrs if "S" in hip.get(n, "")]
    parts.append("amd_range32:" + ("all" if len(ranged) == len(ptrs) else ",".join(ranged) or "none"))
    return " ".join(parts)


# Shapes of the European models the launchers are recorded with (hidden sizes, vocabularies, heads, head dims),
# beside the odd sizes whose variants the launchers pick (a multiple of 8 but not 16; odd).
HIDDEN = (2048, 4096, 6144)
VOCAB = (128000, 256000, 262144)
HEADS = ((32, 8), (32, 32))  # (query heads, key/value heads)
HEAD_DIMS = (64, 128, 256)
TOKENS = 8192


def recorded_specs(calls, describe):
    """Run `calls()` (a module's launchers on fake CUDA tensors) in record mode once per GPU of
    RECORDED_SM_COUNTS, and return the deduplicated AOT specs of what they launched."""
    launches = []
    for sm in RECORDED_SM_COUNTS:
        with fake_cuda(), recording(sm) as rec:
            calls()
        launches += rec.launches
    return specs_from_launches(launches, describe)
