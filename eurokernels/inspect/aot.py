"""Ahead-of-time compile of every Triton kernel configuration, and parsing of the machine code it produces.

No GPU is needed: Triton compiles for a named target (`GPUTarget`) and the machine code is read back as text --
SASS through the `cuobjdump` that Triton ships, amdgcn assembly as Triton emits it. The same parsers read the
CUDA C++ cubins embedded in the built extension (eurokernels/_cuda*.so).

Compiles run in worker processes started with "spawn": each worker drops TRITON_INTERPRET before it imports
triton, so the tool gives real compiles even when called from a process that runs Triton under the interpreter
(the test suite). This module imports neither torch nor triton at import time for the same reason.
"""
import collections
import fnmatch
import glob
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .. import manifest

# Every Triton module that holds kernels (eurokernels/manifest.py), each with its aot_specs().
SPEC_MODULES = [f"eurokernels.triton.{m}" for m in manifest.triton_modules()]

# The GPUs European training runs on: NVIDIA A100 / H100 and AMD MI250X (LUMI) / MI300X.
TARGETS = {
    "sm_80": ("cuda", 80, 32),
    "sm_90": ("cuda", 90, 32),
    "gfx90a": ("hip", "gfx90a", 64),
    "gfx942": ("hip", "gfx942", 64),
}

# Shared memory one block / workgroup may use, in bytes (static + dynamic): CUDA C Programming Guide, compute
# capability table (163 KB on sm_80, 227 KB on sm_90); 64 KB of LDS per workgroup on CDNA2 (gfx90a) and CDNA3
# (gfx942).
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024, "gfx90a": 64 * 1024, "gfx942": 64 * 1024}
STATIC_SHARED_LIMIT = 48 * 1024  # statically declared __shared__ per block, every NVIDIA arch (CUDA C++ kernels)

def _default_cuda_archs():
    """The archs the CUDA C++ extension is built for by default: csrc/sources.txt's `archs` line (read by setup.py
    and CMake too)."""
    sources = Path(__file__).resolve().parents[2] / "csrc" / "sources.txt"
    for line in sources.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["archs"]:
            return tuple(f"sm_{a.strip()}" for a in words[1].replace(",", ";").split(";") if a.strip())
    raise RuntimeError(f"{sources}: no `archs` line")


CUDA_ARCHS = _default_cuda_archs()


def warp_size(target):
    return TARGETS[target][2]


# ---------------------------------------------------------------------------------------------- SASS (NVIDIA)

def cuda_bin(tool):
    """Path of a CUDA binary tool (cuobjdump): the copy Triton ships, else one on PATH."""
    spec = importlib.util.find_spec("triton")  # locate without importing triton
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin" / tool
        if path.exists():
            return str(path)
    found = shutil.which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} not found (neither in triton/backends/nvidia/bin nor on PATH)")
    return found


def _run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[:2000]}")
    return res.stdout


_SASS_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}
_SASS_MMA = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "OMMA", "UTCHMMA", "UTCQMMA", "UTCIMMA", "DMMA")
_SASS_INSN = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", re.M)


def sass_access_bits(opcode):
    """Bits moved per thread by an LDG/STG opcode: `LDG.E.128` -> 128, `LDG.E.U16` -> 16, `LDG.E` -> 32.
    Modifiers are matched whole, so cache hints such as `LTC128B` are not mistaken for a width."""
    bits = 32
    for mod in opcode.split(".")[1:]:
        bits = _SASS_WIDTH.get(mod, bits)
    return bits


def parse_sass(text):
    """SASS of one function -> global load/store width histograms {bits: count} and matrix-instruction counts."""
    loads, stores, mma = collections.Counter(), collections.Counter(), collections.Counter()
    for opcode in _SASS_INSN.findall(text):
        base = opcode.split(".")[0]
        if base == "LDG":
            loads[sass_access_bits(opcode)] += 1
        elif base == "STG":
            stores[sass_access_bits(opcode)] += 1
        elif base in _SASS_MMA:
            mma[base] += 1
    return dict(loads), dict(stores), dict(mma)


def sass_local_insns(text):
    """Local-memory instructions (LDL / STL) in one function's SASS: spills and stack arrays. cuobjdump's LOCAL
    alone misses some (a spill placed on the stack frame shows as STACK, with LOCAL 0)."""
    return sum(1 for opcode in _SASS_INSN.findall(text) if opcode.split(".")[0] in ("LDL", "STL"))


def _dynamic_shared(kernel, config):
    """Dynamic shared memory a launcher gives this kernel instantiation (bytes; 0 for kernels that take none), from
    the same tile constants the launchers use (asked of the simulation build, which compiles the same sources);
    None when that build is missing (tests/test_aot.py then fails rather than check static memory only)."""
    if not kernel.startswith("attention::"):
        return 0
    from .. import _ext
    args = [a.strip() for a in config.strip("<>").split(",")]
    if len(args) != 2 or not args[1].isdigit():
        return 0
    elem = 2 if args[0] in ("__half", "__nv_bfloat16") else 4
    try:
        sim = _ext.cuda_sim()
    except RuntimeError:
        return None
    return int(sim.attention_dynamic_smem(kernel.split("::")[-1], int(args[1]), elem))


_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def parse_resource_usage(text):
    """`cuobjdump --dump-resource-usage` -> {(arch, mangled function): {registers, stack, shared_static, local}}."""
    out, arch, func = {}, None, None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("arch = "):
            arch = s.split("=", 1)[1].strip()
        elif s.startswith("Function ") and s.endswith(":"):
            func = s[len("Function "):-1]
        else:
            m = _RESOURCE.search(s)
            if m and func is not None:
                reg, stack, shared, local = map(int, m.groups())
                out[(arch, func)] = dict(registers=reg, stack=stack, shared_static=shared, local=local)
                func = None
    return out


def split_sass(text):
    """`cuobjdump -sass` of a cubin or fatbin -> {(arch, mangled function): SASS text}."""
    out, arch, func, lines = {}, None, None, []

    def flush():
        if func is not None:
            out[(arch, func)] = "\n".join(lines)

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("arch = ") or s.startswith("code for sm_"):
            flush()
            func, lines = None, []
            arch = s.split("=", 1)[1].strip() if s.startswith("arch") else s[len("code for "):]
        elif s.startswith("Function : "):
            flush()
            func, lines = s[len("Function : "):], []
        elif func is not None:
            lines.append(line)
    flush()
    return out


# Disassembly (~1 s a cubin) dominates a run once Triton's cache holds the compiles, so summaries are cached by the
# cubin's hash (identical cubins, e.g. the JIT's div-16 and the launcher's ALIGN variants, are read once).
_CACHE_VERSION = b"eurokernels-inspect-2"  # 2: local_insns


def cache_dir():
    return Path(os.environ.get("EUROKERNELS_INSPECT_CACHE", Path.home() / ".cache" / "eurokernels" / "inspect"))


def inspect_cubin_bytes(cubin):
    """Resource usage and SASS summary of a single-kernel cubin (as Triton produces), cached by its hash."""
    path = cache_dir() / (hashlib.sha256(_CACHE_VERSION + cubin).hexdigest() + ".json")
    try:
        info = json.loads(path.read_text())
        for key in ("loads", "stores"):
            info[key] = {int(b): n for b, n in info[key].items()}
        return info
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    info = _inspect_cubin(cubin)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # atomic: concurrent workers never read a partial file
    except OSError:
        pass  # a read-only home only costs speed
    return info


def _inspect_cubin(cubin):
    cuobjdump = cuda_bin("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", path]))
        sass = split_sass(_run([cuobjdump, "-sass", path]))
    if len(usage) != 1 or len(sass) != 1:
        raise RuntimeError(f"expected one function in the cubin, got {sorted(usage)} / {sorted(sass)}")
    (res,), (text,) = usage.values(), sass.values()
    loads, stores, mma = parse_sass(text)
    return dict(res, loads=loads, stores=stores, mma=mma, local_insns=sass_local_insns(text))


# -------------------------------------------------------------------------------------------- amdgcn (AMD)

_AMD_WIDTH = {"ubyte": 8, "sbyte": 8, "byte": 8, "ushort": 16, "sshort": 16, "short": 16, "dword": 32,
              "dwordx2": 64, "dwordx3": 96, "dwordx4": 128, "b8": 8, "u8": 8, "i8": 8, "b16": 16, "u16": 16,
              "i16": 16, "b32": 32, "b64": 64, "b96": 96, "b128": 128}
_AMD_MEM = re.compile(r"^\s*(global|buffer)_(load|store)_(?:lds_)?([a-z0-9]+)", re.M)
_AMD_MMA = re.compile(r"^\s*(v_mfma_\w+|v_smfmac_\w+|v_wmma_\w+)", re.M)
_AMD_META = {"NumVgprs": "registers", "NumAgprs": "agprs", "ScratchSize": "scratch", "Occupancy": "occupancy",
             "LDSByteSize": "lds_static", "NumSgprs": "sgprs"}
# The private segment (per-lane scratch) the kernel descriptor requests: spills and stack objects beyond ScratchSize's
# comment (e.g. dynamic stack), as `.amdhsa_private_segment_fixed_size`.
_AMD_PRIVATE = re.compile(r"^\s*\.amdhsa_private_segment_fixed_size\s+(\d+)", re.M)


def parse_amdgcn(text):
    """amdgcn assembly of one kernel -> the compiler's resource comments, load/store widths and MFMA counts.
    `global_load_dwordx4` / `buffer_load_dwordx4` move 128 bits, `*_ushort` / `*_short_d16` 16 bits."""
    out = {}
    for key, name in _AMD_META.items():
        m = re.search(rf"^\s*;\s*{key}:\s*(\d+)", text, re.M)
        out[name] = int(m.group(1)) if m else None
    m = _AMD_PRIVATE.search(text)
    out["private_segment"] = int(m.group(1)) if m else None
    loads, stores = collections.Counter(), collections.Counter()
    for _, kind, width in _AMD_MEM.findall(text):
        bits = _AMD_WIDTH.get(width)
        if bits is None:
            raise ValueError(f"unknown amdgcn memory access width {width!r}")
        (loads if kind == "load" else stores)[bits] += 1
    mma = collections.Counter(m.split("_")[0] + "_" + m.split("_")[1] for m in _AMD_MMA.findall(text))
    out.update(loads=dict(loads), stores=dict(stores), mma=dict(mma))
    return out


# ------------------------------------------------------------------------------------------ Triton specs

def _spec_meta(module, index, spec):
    """The picklable description of a spec (the kernel object itself stays in the worker)."""
    return dict(module=module, index=index, name=spec["name"], num_warps=spec["num_warps"],
                constexprs=dict(spec.get("constexprs", {})), aligned=list(spec.get("aligned", [])),
                memory_bound=bool(spec.get("memory_bound", False)),
                rows_aligned=spec.get("rows_aligned"), block=spec.get("block"),
                variant=spec.get("variant", ""), targets=spec.get("targets"), num_stages=spec.get("num_stages"),
                fallback=spec.get("fallback"), dtype=spec.get("dtype"))


def _worker_init():
    os.environ.pop("TRITON_INTERPRET", None)


def list_specs(modules):
    """Every spec of every module, as picklable descriptions. Runs in a worker (imports triton)."""
    metas = []
    for module in modules:
        for i, spec in enumerate(importlib.import_module(module).aot_specs()):
            metas.append(_spec_meta(module, i, spec))
    return metas


def _backend_class(backend):
    if backend == "cuda":
        from triton.backends.nvidia.compiler import CUDABackend
        return CUDABackend
    from triton.backends.amd.compiler import HIPBackend
    return HIPBackend


def compile_spec(module, index, target):
    """Compile spec `index` of `module` for `target` and summarize its machine code. Runs in a worker."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.import_module(module).aot_specs()[index]
    kernel = spec["kernel"]
    constexprs = dict(spec.get("constexprs", {}))
    signature = dict(spec["signature"])
    signature.update({k: "constexpr" for k in constexprs})
    backend, arch, warp = TARGETS[target]
    # The attributes the JIT gives this launch on this backend (eurokernels/triton/_launch.py), parsed by the
    # backend as the JIT parses them: "D" -> tt.divisibility 16, and on AMD "S" -> tt.pointer_range 32.
    parse = _backend_class(backend).parse_attr
    # Hand-written specs (not yet recorded from their launchers) give only the divisible arguments.
    given = spec["attrs"][backend] if "attrs" in spec else {a: "D" for a in spec.get("aligned", [])}
    attrs = {(kernel.arg_names.index(a),): parse(desc) for a, desc in given.items()}
    options = {"num_warps": spec["num_warps"]}
    if spec.get("num_stages") is not None:  # else the backend's default, as the JIT uses when a launch names none
        options["num_stages"] = spec["num_stages"]
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget(backend, arch, warp), options=options)
    shared = int(compiled.metadata.shared)  # dynamic shared memory / LDS the launch requests
    if backend == "cuda":
        info = inspect_cubin_bytes(compiled.asm["cubin"])
        return dict(registers=info["registers"], agprs=None, spills=info["local"], stack=info["stack"],
                    local_insns=info["local_insns"], private_segment=None,
                    shared=shared + info["shared_static"], occupancy=None,
                    loads=info["loads"], stores=info["stores"], mma=info["mma"])
    info = parse_amdgcn(compiled.asm["amdgcn"])
    return dict(registers=info["registers"], agprs=info["agprs"], spills=info["scratch"], stack=None,
                local_insns=None, private_segment=info["private_segment"],
                shared=max(shared, info["lds_static"] or 0), occupancy=info["occupancy"],
                loads=info["loads"], stores=info["stores"], mma=info["mma"])


# What counts as a spill, per vendor: NVIDIA local memory per thread (cuobjdump LOCAL), the stack frame (STACK:
# ptxas may put a spill there with LOCAL 0) and the LDL/STL instructions in the SASS; AMD scratch per lane
# (`; ScratchSize:`) and the private segment the kernel descriptor requests (`.amdhsa_private_segment_fixed_size`).
SPILL_KEYS = {"cuda": ("spills", "stack", "local_insns"), "hip": ("spills", "private_segment")}


def spill_counts(row):
    """{counter: value} of a row's spill counters for its target's vendor (SPILL_KEYS); a counter the compile did
    not report is None (the tests treat that as a spill: not measured is not zero)."""
    return {k: row.get(k) for k in SPILL_KEYS[TARGETS[row["target"]][0]]}


def spill_free(row):
    return all(v == 0 for v in spill_counts(row).values())


def fallback_measured(meta, target):
    """The spill counters a fallback spec declares for `target` ({} when none are declared)."""
    fb = meta.get("fallback")
    return dict((fb or {}).get("measured", {}).get(target, {})) if isinstance(fb, dict) else {}


def _widest(hist):
    return max((int(b) for b in hist), default=None)


def _config_text(meta):
    parts = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in meta["constexprs"].items()]
    parts.append(f"warps={meta['num_warps']}")
    if meta.get("num_stages") is not None:
        parts.append(f"stages={meta['num_stages']}")
    if meta["variant"]:
        parts.append(meta["variant"])
    return " ".join(parts)


def _row(meta, target, result=None, error=None):
    row = dict(source="triton", kernel=meta["name"], config=_config_text(meta), target=target,
               module=meta["module"], constexprs=meta["constexprs"], num_warps=meta["num_warps"],
               aligned=meta["aligned"], variant=meta["variant"], memory_bound=meta["memory_bound"],
               rows_aligned=meta["rows_aligned"], block=meta["block"], warp_size=warp_size(target),
               shared_limit=SHARED_LIMIT[target], num_stages=meta["num_stages"], fallback=meta["fallback"],
               dtype=meta["dtype"], error=error,
               fallback_reason=(meta["fallback"] or {}).get("reason") if isinstance(meta["fallback"], dict)
               else meta["fallback"], fallback_measured=fallback_measured(meta, target))
    for key in ("registers", "agprs", "spills", "stack", "local_insns", "private_segment", "shared", "occupancy",
                "loads", "stores", "mma"):
        row[key] = None if result is None else result[key]
    row["load_bits"] = _widest(row["loads"] or {})
    row["store_bits"] = _widest(row["stores"] or {})
    row["mma_count"] = None if result is None else sum(row["mma"].values())
    row["spill_free"] = None if result is None else spill_free(row)
    return row


def triton_rows(targets, pattern="*", modules=None, workers=2):
    """Compile every spec matching `pattern` (fnmatch on the kernel name) for every target. A failed compile gives
    a row with `error` set instead of raising, so one broken kernel does not hide the others."""
    modules = SPEC_MODULES if modules is None else modules
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        metas = [m for m in pool.submit(list_specs, modules).result() if fnmatch.fnmatch(m["name"], pattern)]
        # A spec with `targets` is the config its launcher picks on those GPUs only (per-arch tiles).
        jobs = [(m, t, pool.submit(compile_spec, m["module"], m["index"], t)) for m in metas for t in targets
                if m["targets"] is None or t in m["targets"]]
        rows = []
        for meta, target, fut in jobs:
            try:
                rows.append(_row(meta, target, fut.result()))
            except Exception as e:  # noqa: BLE001 -- reported in the row
                rows.append(_row(meta, target, error=f"{type(e).__name__}: {e}"))
    return rows


# ------------------------------------------------------------------------------------ CUDA C++ extension

def find_cuda_extension():
    """Path of the built CUDA extension eurokernels/_cuda*.so next to this package, or None (not _cuda_sim, the
    host build of the same kernels: it holds no cubins)."""
    pkg = Path(__file__).resolve().parent.parent
    found = sorted(glob.glob(str(pkg / "_cuda.so")) + glob.glob(str(pkg / "_cuda.*.so")))
    return found[0] if found else None


def _demangle(names):
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None or not names:
        return {n: n for n in names}
    res = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if res.returncode == 0 and len(out) == len(names) else {n: n for n in names}


def _split_cxx_name(demangled):
    """'void eurokernels::rms_norm::(anonymous namespace)::k<float, 2>(Params)' -> ('rms_norm::k', '<float, 2>')."""
    name = demangled
    if name.startswith("void "):
        name = name[5:]
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut].replace("(anonymous namespace)::", "")
    if name.startswith("eurokernels::"):
        name = name[len("eurokernels::"):]
    lt = name.find("<")
    return (name, "") if lt < 0 else (name[:lt], name[lt:])


def cuda_rows(so_path, targets=CUDA_ARCHS, pattern="*"):
    """One row per kernel function and arch in the extension's embedded cubins."""
    cuobjdump = cuda_bin("cuobjdump")
    usage = parse_resource_usage(_run([cuobjdump, "--dump-resource-usage", so_path]))
    sass = split_sass(_run([cuobjdump, "-sass", so_path]))
    names = _demangle(sorted({f for _, f in usage}))
    rows = []
    for (arch, func), res in sorted(usage.items()):
        if arch not in targets:
            continue
        kernel, config = _split_cxx_name(names[func])
        if not fnmatch.fnmatch(kernel, pattern) and not fnmatch.fnmatch(kernel.split("::")[-1], pattern):
            continue
        text = sass.get((arch, func), "")
        loads, stores, mma = parse_sass(text)
        # Static shared memory is held to 48 KB; a kernel launched with dynamic shared memory (opted in with
        # cudaFuncSetAttribute) to the arch's limit, static + dynamic.
        dynamic = _dynamic_shared(kernel, config)
        rows.append(dict(source="cuda", kernel=kernel, config=config, target=arch, module=os.path.basename(so_path),
                         mangled=func, registers=res["registers"], agprs=None, spills=res["local"],
                         stack=res["stack"], local_insns=sass_local_insns(text), shared_static=res["shared_static"],
                         shared_dynamic=dynamic, shared=res["shared_static"] + (dynamic or 0),
                         shared_limit=SHARED_LIMIT[arch] if dynamic else STATIC_SHARED_LIMIT,
                         occupancy=None, loads=loads, stores=stores, mma=mma, load_bits=_widest(loads),
                         store_bits=_widest(stores), mma_count=sum(mma.values()),
                         has_sass=(arch, func) in sass, error=None))
    return rows
