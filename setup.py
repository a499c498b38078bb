"""Build eurokernels: the C++ CPU kernels always, the CUDA C++ kernels whenever nvcc is found (no GPU needed).

Environment switches
  EUROKERNELS_SKIP_CUDA=1          do not build the CUDA extension even if nvcc is found
  EUROKERNELS_CUDA_ARCHS="80;90"   SM architectures to build (default "80;90"; PTX is embedded for the last one)
  EUROKERNELS_CPU_FLAGS="..."      replace the CPU ISA flags (default: AVX2+FMA+F16C on x86-64)
  CUDA_HOME                        the CUDA toolkit; else the toolkit that the nvcc on PATH belongs to
"""
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def read_sources():
    """csrc/sources.txt -> {"cpu": [...], "cuda": [...]} (paths relative to the repository root)."""
    groups = {"cpu": [], "cuda": []}
    for line in (CSRC / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            groups[line[0]].append(f"csrc/{line[1]}")
    return groups


def find_cuda_home():
    """CUDA_HOME if set, else the toolkit the nvcc on PATH belongs to.

    torch.utils.cpp_extension guesses CUDA_HOME from nvcc's location, which is wrong when nvcc is a wrapper script
    (as on our CI machines): it then fails to link -lcudart. nvcc's own --dryrun prints the toolkit root it uses
    (`#$ TOP=...`), which sees through wrappers and symlinks alike.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.*)$", out, re.M)
    return str(Path(m.group(1).strip()).resolve()) if m else str(Path(nvcc).resolve().parent.parent)


def cpu_isa_flags():
    if "EUROKERNELS_CPU_FLAGS" in os.environ:
        return os.environ["EUROKERNELS_CPU_FLAGS"].split()
    if platform.machine().lower() in ("x86_64", "amd64"):
        # at::vec picks its implementation from CPU_CAPABILITY_* at compile time; without it Vectorized<float> is
        # the scalar fallback. AVX2 runs on every x86 node of Europe's HPC centres.
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return []


def cuda_arch_flags():
    archs = [a.strip() for a in os.environ.get("EUROKERNELS_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
             if a.strip()]
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]  # PTX for newer GPUs
    return flags


def extensions():
    skip_cuda = os.environ.get("EUROKERNELS_SKIP_CUDA", "0") not in ("", "0")
    cuda_home = None if skip_cuda else find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = read_sources()
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"] + cpu_isa_flags()
    exts = [CppExtension("eurokernels._C", sources["cpu"], include_dirs=[str(CSRC)],
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    if cuda_home:
        print(f"eurokernels: building CUDA kernels with the toolkit in {cuda_home}")
        nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
        exts.append(CUDAExtension("eurokernels._cuda", sources["cuda"], include_dirs=[str(CSRC)],
                                  extra_compile_args={"cxx": ["-O3", "-std=c++20"],
                                                      "nvcc": nvcc + cuda_arch_flags()}))
    else:
        print("eurokernels: not building CUDA kernels (" +
              ("EUROKERNELS_SKIP_CUDA set" if skip_cuda else "no nvcc on PATH and no CUDA_HOME") + ")")

    class BuildOneExtensionAtATime(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            # `build_ext -j N` builds the extensions in parallel threads, but torch writes one build.ninja per build
            # directory, which _C and _cuda share: the threads overwrite each other's file, and a clean `-j 2` build
            # ran _cuda's ninja file twice and failed to link _C (its objects were never compiled). ninja already
            # compiles each extension's sources in parallel (MAX_JOBS), so only the extensions go one at a time.
            self.parallel = None

    return exts, BuildOneExtensionAtATime


exts, build_ext = extensions()
setup(
    name="eurokernels",
    version="0.1.0",
    description="Fused training kernels for Europe's open multilingual LLMs",
    packages=find_packages(include=["eurokernels", "eurokernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch==2.14.1", "numpy"],
    # hf: eurokernels.integrations.transformers (tested with 5.23.0, the version .ci/requirements.txt pins; it
    # patches transformers' attention/mask registries and per-family apply_rotary_pos_emb, public in 5.x).
    extras_require={"test": ["pytest", "pytest-benchmark"], "hf": ["transformers>=5.23,<6"]},
    ext_modules=exts,
    cmdclass={"build_ext": build_ext},
)
