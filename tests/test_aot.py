"""AOT check: every Triton kernel configuration compiles for NVIDIA sm_80 / sm_90 and AMD gfx90a / gfx942 without
spills and within the shared-memory / LDS limit; memory-bound kernels issue 128-bit global accesses; the CUDA C++
kernels in the built extension have no spills on sm_80 and sm_90.

The rows come from one run of `python -m eurokernels.inspect --json` in a subprocess: real compiles need
TRITON_INTERPRET unset, and this test process runs Triton under the interpreter (conftest.py).
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import eurokernels
from eurokernels.inspect import aot

ROOT = Path(eurokernels.__file__).resolve().parent.parent
TARGETS = list(aot.TARGETS)


@pytest.fixture(scope="session")
def inspection():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run([sys.executable, "-m", "eurokernels.inspect", "--json", "--targets", ",".join(TARGETS)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    assert res.returncode in (0, 1), f"inspect crashed ({res.returncode}):\n{res.stderr[-5000:]}"
    return json.loads(res.stdout)


def _triton(inspection):
    return [r for r in inspection["rows"] if r["source"] == "triton"]


def _label(r):
    return f"{r['kernel']} [{r['config']}] on {r['target']}"


def test_every_spec_compiles_for_every_target(inspection):
    errors = [f"{_label(r)}: {r['error']}" for r in inspection["rows"] if r["error"]]
    assert not errors, "\n".join(errors)
    seen = defaultdict(set)
    for r in _triton(inspection):
        seen[(r["module"], r["kernel"], r["config"])].add(r["target"])
    n_specs = sum(len(importlib.import_module(m).aot_specs()) for m in aot.SPEC_MODULES)
    assert len(seen) == n_specs, f"{n_specs} specs in {aot.SPEC_MODULES}, {len(seen)} distinct configs compiled"
    # A spec that names its targets (a per-arch launch config) is compiled for those only.
    wanted = {(m, s["name"], aot._config_text(aot._spec_meta(m, i, s))): set(s.get("targets") or TARGETS) & set(TARGETS)
              for m in aot.SPEC_MODULES for i, s in enumerate(importlib.import_module(m).aot_specs())}
    missing = {k: sorted(wanted[k] - t) for k, t in seen.items() if t != wanted[k]}
    assert not missing, missing


@pytest.mark.parametrize("target", TARGETS)
def test_triton_no_spills(inspection, target):
    """Every row that is not a declared fallback spills nothing, counted every way the machine code shows it:
    NVIDIA local memory (cuobjdump LOCAL), stack frame (STACK) and LDL/STL instructions in the SASS; AMD scratch
    (`; ScratchSize:`) and the private segment of the kernel descriptor. A counter not reported fails too."""
    rows = [r for r in _triton(inspection) if r["target"] == target]
    assert rows
    spilled = [f"{_label(r)}: {aot.spill_counts(r)}, {r['registers']} registers" for r in rows
               if not r["fallback_reason"] and not aot.spill_free(r)]
    assert not spilled, "\n".join(spilled)


# How far a fallback's measured spill counters may drift from the counts its spec declares (compiler versions
# move them a little): a quarter of the declared count, or 16 (bytes / instructions), whichever is larger.
def _roughly(measured, declared):
    return measured is not None and abs(measured - declared) <= max(16, declared // 4)


@pytest.mark.parametrize("target", TARGETS)
def test_triton_fallbacks_spill_as_declared(inspection, target):
    """A row may spill only when its spec is a declared fallback (eurokernels/triton/attention.py: fp32), and then
    only about as much as the spec records for this target, counter by counter: a fallback whose spills grew (or
    vanished) fails until its recorded counts are updated."""
    rows = [r for r in _triton(inspection) if r["target"] == target and r["fallback_reason"]]
    assert rows, "the fp32 attention fallbacks must be compiled for every target"
    wrong = []
    for r in rows:
        counts = aot.spill_counts(r)
        declared = r["fallback_measured"] or dict.fromkeys(counts, 0)  # a fallback that declares none spills none
        if set(declared) != set(counts) or not all(_roughly(counts[k], declared[k]) for k in counts):
            wrong.append(f"{_label(r)}: measured {counts}, declared {declared}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("target", TARGETS)
def test_triton_shared_memory_within_limit(inspection, target):
    rows = [r for r in _triton(inspection) if r["target"] == target]
    assert rows
    over = [f"{_label(r)}: {r['shared']} > {aot.SHARED_LIMIT[target]} bytes" for r in rows
            if r["shared"] is None or r["shared"] > aot.SHARED_LIMIT[target]]
    assert not over, "\n".join(over)


def _holds_16_bytes(r):
    """A thread's share of the row tile is at least 16 bytes (8 elements of the 16-bit dtypes the specs compile).
    Smaller tiles (hidden <= 128 on NVIDIA, <= 256 on AMD's 64-wide waves) cannot use 128-bit accesses at all."""
    return r["block"] // (r["num_warps"] * r["warp_size"]) >= 8


@pytest.mark.parametrize("target", TARGETS)
def test_memory_bound_kernels_use_128bit_accesses(inspection, target):
    """Memory-bound kernels with 16-byte aligned rows (hidden a multiple of 8 for bf16/fp16, including the
    multiple-of-8-but-not-16 case the JIT does not specialize, e.g. 4104) load and store 128 bits at a time:
    LDG.E.128 / STG.E.128 in SASS, global|buffer_load_dwordx4 in amdgcn, and never a 16-bit element alone."""
    rows = [r for r in _triton(inspection) if r["target"] == target and r["memory_bound"] and r["rows_aligned"]
            and _holds_16_bytes(r)]
    kernels = {r["kernel"] for r in _triton(inspection) if r["memory_bound"]}
    assert kernels and {r["kernel"] for r in rows} == kernels, "every memory-bound kernel must be checked"
    # Widest 128 bits, and no 8/16-bit access at all: a wide fp32 side array (dw partials) alone cannot pass.
    narrow = [f"{_label(r)}: loads {r['loads']}, stores {r['stores']} (bits: count)" for r in rows
              if r["load_bits"] != 128 or r["store_bits"] != 128
              or min(int(b) for b in [*r["loads"], *r["stores"]]) < 32]
    assert not narrow, "\n".join(narrow)


@pytest.mark.parametrize("target", TARGETS)
def test_unaligned_rows_give_narrow_loads(inspection, target):
    """Negative control: where the compiler cannot know the alignment (odd hidden sizes), the same kernels must
    show narrower loads -- proof that the load-width check above reads the machine code and can fail."""
    rows = [r for r in _triton(inspection) if r["target"] == target and r["memory_bound"]
            and r["rows_aligned"] is False and _holds_16_bytes(r)]
    assert rows, "the specs must include unaligned variants of the memory-bound kernels"
    wide = [_label(r) for r in rows if r["load_bits"] is None or r["load_bits"] >= 128]
    assert not wide, "\n".join(wide)


def test_parsers_on_known_text():
    """The machine-code parsers on hand-written lines, including the cache hint that contains '128'."""
    sass = """
        /*0080*/                   LDG.E.128 R4, [R2.64] ;
        /*0090*/              @!P0 LDG.E.LTC128B.U16 R8, [R2.64+0x10] ;
        /*00a0*/                   STG.E.64 [R6.64], R4 ;
        /*00b0*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*00c0*/                   LDS.128 R4, [R0] ;
    """
    loads, stores, mma = aot.parse_sass(sass)
    assert loads == {128: 1, 16: 1} and stores == {64: 1} and mma == {"HMMA": 1}
    amd = """
        ; NumVgprs: 31
        ; NumAgprs: 4
        ; ScratchSize: 0
        ; Occupancy: 8
        global_load_dwordx4 v[0:3], v[4:5], off
        buffer_load_ushort v6, v7, s[0:3], 0 offen
        global_store_short v[4:5], v6, off
        v_mfma_f32_32x32x8bf16_1k a[0:15], v[0:1], v[2:3], a[0:15]
    """
    info = aot.parse_amdgcn(amd + "\n        .amdhsa_private_segment_fixed_size 48\n")
    assert (info["registers"], info["agprs"], info["scratch"], info["occupancy"]) == (31, 4, 0, 8)
    assert info["private_segment"] == 48 and aot.parse_amdgcn(amd)["private_segment"] is None
    assert info["loads"] == {128: 1, 16: 1} and info["stores"] == {16: 1} and info["mma"] == {"v_mfma": 1}


def _skip_cuda():
    return os.environ.get("EUROKERNELS_SKIP_CUDA", "0") not in ("", "0")  # setup.py's switch


def _cuda_rows(inspection):
    """The rows of the built extension's CUDA C++ kernels; fails (never passes) when nvcc is here but the extension
    is not built, and skips only where it cannot be built."""
    if inspection["cuda_extension"] is None:
        if _skip_cuda():
            pytest.skip("EUROKERNELS_SKIP_CUDA is set: the CUDA extension was not built")
        if shutil.which("nvcc") or os.environ.get("CUDA_HOME"):
            pytest.fail("nvcc is available but the CUDA extension eurokernels/_cuda*.so is not built: build it "
                        "(pip install --no-build-isolation -e . without EUROKERNELS_SKIP_CUDA)")
        pytest.skip("no CUDA extension built and no nvcc here: the CUDA C++ cubins cannot be checked")
    return [r for r in inspection["rows"] if r["source"] == "cuda"]


def test_cuda_cubins_have_no_spills(inspection):
    """The CUDA C++ kernels of eurokernels/_cuda*.so, for sm_80 and sm_90: every kernel in both, LOCAL 0 and STACK 0,
    static shared memory within 48 KB. (ptxas may put spills on the stack: a 16-byte spill of two RMSNorm backward
    instantiations on sm_90 showed as STACK:16 with LOCAL:0.)"""
    rows = _cuda_rows(inspection)
    by_arch = defaultdict(set)
    for r in rows:
        by_arch[r["target"]].add((r["kernel"], r["config"]))
    assert set(by_arch) == set(aot.CUDA_ARCHS), f"cubins for {sorted(by_arch)}, expected {aot.CUDA_ARCHS}"
    assert by_arch["sm_80"] == by_arch["sm_90"] and by_arch["sm_80"], "the same kernels for every arch"
    bad = [f"{r['kernel']}{r['config']} on {r['target']}: LOCAL {r['spills']}, STACK {r['stack']}, shared {r['shared']}"
           for r in rows if r["spills"] != 0 or r["stack"] != 0 or r["shared"] > r["shared_limit"] or not r["has_sass"]]
    assert not bad, "\n".join(bad)


def test_cuda_cubins_cover_every_cu_source(inspection):
    """The spill check above sees every .cu file of csrc/sources.txt: each defines its kernels in the namespace
    eurokernels::<its folder> (softmax/softmax.cu -> softmax::softmax_fwd_kernel), so a kernel file left out of
    the build, or one whose launcher no longer instantiates its kernels, fails here."""
    rows = _cuda_rows(inspection)
    folders = set()
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == "cuda" and words[1].endswith(".cu"):
            folders.add(words[1].split("/")[0])
    assert folders, "csrc/sources.txt lists no .cu files"
    missing = folders - {r["kernel"].split("::")[0] for r in rows}
    assert not missing, f"no kernels from csrc/{{{','.join(sorted(missing))}}}/*.cu in the cubins"


# The storage types the CUDA launchers dispatch to, with their widest vector (128 bits).
_WIDEST = (("float", 4), ("__nv_bfloat16", 8), ("__half", 8))


def _assert_every_dispatch_target(inspection, op, flags):
    """Every (direction, dtype, flag) the op's launcher can dispatch to -- `<op>::<op>_{fwd,bwd}_kernel<T, VEC,
    flag>` -- is compiled (and so spill-checked) for every arch, with 128-bit accesses at the widest vector."""
    rows = [r for r in _cuda_rows(inspection) if r["kernel"].startswith(f"{op}::")]
    for arch in aot.CUDA_ARCHS:
        configs = {(r["kernel"], r["config"]): r for r in rows if r["target"] == arch}
        for direction in ("fwd", "bwd"):
            for dtype, widest in _WIDEST:
                for flag in flags:
                    key = (f"{op}::{op}_{direction}_kernel", f"<{dtype}, {widest}, {flag}>")
                    assert key in configs, f"{key} not in the {arch} cubins: {sorted(configs)}"
                    r = configs[key]
                    assert r["load_bits"] == 128 and r["store_bits"] == 128, (key, arch, r["loads"], r["stores"])


# The most threads each CUDA C++ kernel family is launched with (the launchers' row_threads caps and fixed sizes).
MAX_THREADS = {"rms_norm::rms_norm_fwd_kernel": 1024, "rms_norm::rms_norm_bwd_kernel": 1024,
               "rms_norm::sum_partials_kernel": 256, "rotary::rotary_kernel": 256,
               "softmax::softmax_fwd_kernel": 512, "softmax::softmax_bwd_kernel": 512,
               "cross_entropy::cross_entropy_kernel": 512, "swiglu::swiglu_fwd_kernel": 256,
               "swiglu::swiglu_bwd_kernel": 256, "attention::attention_fwd_kernel": 128,
               "attention::attention_bwd_dq_kernel": 128, "attention::attention_bwd_dkdv_kernel": 256,
               "attention::attention_bwd_delta_kernel": 256, "testing::mma_fragments_kernel": 32,
               "testing::mma_ldmatrix_kernel": 32, "testing::ldmatrix_kernel": 32, "testing::cp_async_kernel": 32}


def test_cuda_kernels_fit_their_largest_block_in_the_register_file(inspection):
    """A block of T threads needs T x registers <= 65536 (the register file of an SM on sm_80 / sm_90), or the
    launch fails with 'too many resources requested'. The 1024-thread RMSNorm kernels may use 64 registers at most:
    __launch_bounds__(1024) makes the compiler keep to that (spilling instead, which the check above refuses)."""
    rows = _cuda_rows(inspection)
    unknown = {r["kernel"] for r in rows} - set(MAX_THREADS)
    assert not unknown, f"add the largest launch of {sorted(unknown)} to MAX_THREADS"
    bad = [f"{r['kernel']}{r['config']} on {r['target']}: {r['registers']} registers x {MAX_THREADS[r['kernel']]}"
           for r in rows if r["registers"] * MAX_THREADS[r["kernel"]] > 65536]
    assert not bad, "\n".join(bad)


def test_cuda_softmax_kernels_every_dispatch_target(inspection):
    _assert_every_dispatch_target(inspection, "softmax", ("false", "true"))  # flag: log-softmax


def test_cuda_swiglu_kernels_every_dispatch_target(inspection):
    _assert_every_dispatch_target(inspection, "swiglu", ("0", "1", "2"))  # flag: the activation (swiglu_common.h)


def test_cuda_attention_every_instantiation(inspection):
    """Every (kernel, dtype, head-dim class) of the CUDA attention for sm_80 and sm_90: tensor-core MMA (HMMA) in
    the SASS, no local memory at all (no LDL/STL instruction, LOCAL 0, STACK 0), static + dynamic shared memory
    within the arch's opt-in limit, registers reported."""
    rows = [r for r in _cuda_rows(inspection) if r["kernel"].startswith("attention::")]
    for arch in aot.CUDA_ARCHS:
        configs = {(r["kernel"], r["config"]): r for r in rows if r["target"] == arch}
        for dtype in ("__half", "__nv_bfloat16"):
            assert ("attention::attention_bwd_delta_kernel", f"<{dtype}>") in configs, (arch, sorted(configs))
            for kernel in ("attention_fwd_kernel", "attention_bwd_dq_kernel", "attention_bwd_dkdv_kernel"):
                for d in (64, 128, 256):
                    key = (f"attention::{kernel}", f"<{dtype}, {d}>")
                    assert key in configs, f"{key} not in the {arch} cubins: {sorted(configs)}"
                    r = configs[key]
                    facts = (key, arch, r["mma"], r["local_insns"], r["spills"], r["stack"], r["shared"])
                    assert r["mma"].get("HMMA", 0) > 0, facts
                    assert r["local_insns"] == 0 and r["spills"] == 0 and r["stack"] == 0, facts
                    assert r["shared_dynamic"] and r["shared"] <= aot.SHARED_LIMIT[arch], facts
                    assert r["registers"] > 0, facts


def test_sass_local_instructions_are_counted():
    # Spills and stack arrays show as LDL / STL (predicated or not), which the attention check refuses; global and
    # shared accesses do not count.
    sass = """
        /*0070*/                   STL.64 [R1], R2 ;
        /*0080*/              @!P0 LDL R4, [R1+0x8] ;
        /*0090*/                   LDG.E.128 R4, [R2.64] ;
        /*00a0*/                   LDSM.16.M88.4 R8, [R3] ;
    """
    assert aot.sass_local_insns(sass) == 2


def test_spill_counters_per_vendor():
    """Which counters make a row spill-free: all three on NVIDIA, both on AMD; a missing one is not zero."""
    nv = dict(target="sm_90", spills=0, stack=0, local_insns=0, private_segment=None)
    assert aot.spill_counts(nv) == dict(spills=0, stack=0, local_insns=0) and aot.spill_free(nv)
    assert not aot.spill_free(dict(nv, stack=16)) and not aot.spill_free(dict(nv, local_insns=2))
    assert not aot.spill_free(dict(nv, local_insns=None))
    amd = dict(target="gfx942", spills=0, stack=None, local_insns=None, private_segment=0)
    assert aot.spill_counts(amd) == dict(spills=0, private_segment=0) and aot.spill_free(amd)
    assert not aot.spill_free(dict(amd, private_segment=8)) and not aot.spill_free(dict(amd, spills=4))


def _attention_spec_for(specs, kernel, cfg, bd, family):
    """The attention specs compiled for `family`'s targets with exactly this launch config."""
    from eurokernels.triton import attention as A
    want = set(A.FAMILY_TARGETS[family])
    return [s for s in specs if s["kernel"] is kernel and s["constexprs"].get("BLOCK_D") == bd
            and s["constexprs"].get("BLOCK_M") == cfg.block_m and s["constexprs"].get("BLOCK_N") == cfg.block_n
            and s["num_warps"] == cfg.num_warps and s.get("num_stages") == cfg.num_stages
            and want <= set(s.get("targets") or TARGETS)]


def test_attention_launcher_never_picks_a_fallback_for_16bit(monkeypatch):
    """For bf16 and fp16 inputs, every config the attention launcher picks (attention.config, the function
    _launch calls) on every GPU family, kernel and head dim 1..256 is an AOT spec compiled for that family's targets
    that is not a fallback, so test_triton_no_spills holds it to zero spills. (Specs compile bf16; fp16 gives the
    same code.) The fp32 choices are the fallback specs."""
    import torch
    from eurokernels.triton import attention as A
    specs = A.aot_specs()
    assert set(A.GPU_CONFIGS) == set(A.FAMILY_TARGETS)
    kernels = {"fwd": A.attention_fwd_kernel, "dkdv": A.attention_bwd_dkdv_kernel, "dq": A.attention_bwd_dq_kernel}
    cuda = torch.device("cuda")
    bad = []
    for family in A.GPU_CONFIGS:
        monkeypatch.setattr(A, "gpu_family", lambda device, f=family: f)
        for d in range(1, 257):
            bd = A.block_d(d)
            for name, kernel in kernels.items():
                for dtype in (torch.bfloat16, torch.float16):
                    found = _attention_spec_for(specs, kernel, A.config(name, d, cuda, dtype), bd, family)
                    ok = [s for s in found if not s.get("fallback") and s["signature"]["Q"] == "*bf16"]
                    if not ok:
                        bad.append(f"{family} {name} d={d} {dtype}: {[s['name'] for s in found] or 'no spec'}")
                if d <= 128:  # fp32 picks the fallback specs
                    found = _attention_spec_for(specs, kernel, A.config(name, d, cuda, torch.float32), bd, family)
                    if not [s for s in found if s.get("fallback") and s["signature"]["Q"] == "*fp32"]:
                        bad.append(f"{family} {name} d={d} fp32: no fallback spec")
            pre = [s for s in specs if s["kernel"] is A.attention_bwd_preprocess_kernel
                   and s["constexprs"] == dict(BLOCK_M=A.preprocess_block_m(bd), BLOCK_D=bd)
                   and set(A.FAMILY_TARGETS[family]) <= set(s.get("targets") or TARGETS) and not s.get("fallback")]
            if not pre:
                bad.append(f"{family} preprocess d={d}: no non-fallback spec")
    assert not bad, "\n".join(bad[:40])


def test_attention_gpu_family(monkeypatch):
    """gpu_family(): ROCm builds -> hip, compute capability 9.x -> sm_90, anything else NVIDIA -> sm_80."""
    import torch
    from eurokernels.triton import attention as A
    monkeypatch.setattr(torch.version, "hip", None)
    for cap, family in (((8, 0), "sm_80"), ((8, 9), "sm_80"), ((9, 0), "sm_90"), ((10, 0), "sm_80")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=cap: c)
        assert A.gpu_family(torch.device("cuda")) == family
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert A.gpu_family(torch.device("cuda")) == "hip"


def _spec_key(spec):
    """A spec's JIT key, in the form of eurokernels.triton._launch.Launch.key()."""
    return (spec["kernel"].fn.__qualname__, tuple(spec["signature"].items()),
            tuple(sorted((k, repr(v)) for k, v in spec["constexprs"].items())),
            tuple((b, tuple(sorted(a.items()))) for b, a in sorted(spec["attrs"].items())),
            spec["num_warps"], spec.get("num_stages"))


def _launch_rms_norm():
    import torch
    from eurokernels.triton import rms_norm
    x = torch.empty((4096, 5120), dtype=torch.bfloat16, device="cuda")  # a shape not among the recorded ones
    w = torch.empty(5120, dtype=torch.bfloat16, device="cuda")
    y, res_out, rstd = rms_norm.forward(x, w, torch.empty_like(x), 1e-5, 0.0, 0)
    rms_norm.backward(torch.empty_like(x), res_out, w, rstd, torch.empty_like(x), 0.0)


def _launch_softmax():
    import torch
    from eurokernels.triton import softmax
    x = torch.empty((2048, 32000), dtype=torch.bfloat16, device="cuda")
    y, lse = softmax.forward(x, True)
    softmax.backward(torch.empty_like(y), x, lse, True)


def _launch_attention():
    import torch
    from eurokernels.triton import attention
    q = torch.empty((16384, 32, 128), dtype=torch.bfloat16, device="cuda")
    k = torch.empty((16384, 8, 128), dtype=torch.bfloat16, device="cuda")
    cu = torch.empty(5, dtype=torch.int32, device="cuda")
    out, lse = attention.forward(q, k, torch.empty_like(k), cu, cu, 4096, 4096, 128 ** -0.5, -1, 0, 50.0)
    attention.backward(torch.empty_like(out), q, k, torch.empty_like(k), out, lse, cu, cu, 4096, 4096,
                       128 ** -0.5, -1, 0, 50.0)


@pytest.mark.parametrize("module, calls, family, targets", [
    ("eurokernels.triton.rms_norm", _launch_rms_norm, None, ["sm_80", "sm_90", "gfx90a", "gfx942"]),
    ("eurokernels.triton.softmax", _launch_softmax, None, ["sm_80", "sm_90", "gfx90a", "gfx942"]),
    ("eurokernels.triton.attention", _launch_attention, "sm_90", ["sm_90"]),
    ("eurokernels.triton.attention", _launch_attention, "hip", ["gfx90a", "gfx942"]),
])
def test_launch_jit_key_has_an_inspect_row(inspection, module, calls, family, targets):
    """A launch the launchers make (on fake CUDA tensors, at shapes the specs were not recorded from) is
    specialized by Triton's own binder (eurokernels/triton/_launch.py jit_key: signature, constexprs, divisibility
    of every integer and pointer, AMD pointer ranges, num_warps, num_stages); that key is exactly one AOT spec's,
    and inspect compiled that spec for the launch's targets."""
    from eurokernels.triton._launch import fake_cuda, recording
    with fake_cuda(), recording(family=family) as rec:
        calls()
    assert rec.launches
    specs = importlib.import_module(module).aot_specs()
    index = defaultdict(list)  # a key can be several specs' (the attention preprocess: the same in every family)
    for i, s in enumerate(specs):
        index[_spec_key(s)].append(i)
    for launch_ in rec.launches:
        found = index.get(launch_.key())
        assert found, f"no AOT spec of {module} has the JIT key {launch_.key()}"
        metas = [aot._spec_meta(module, i, specs[i]) for i in found]
        got = {r["target"] for r in _triton(inspection) for m in metas if r["module"] == module
               and r["kernel"] == m["name"] and r["config"] == aot._config_text(m) and not r["error"]}
        assert set(targets) <= got, ([m["name"] for m in metas], aot._config_text(metas[0]), sorted(got))
