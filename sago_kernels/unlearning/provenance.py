"""Where a result came from: the commit, the command, the machine, the versions, the numerics.

CPU runs are bitwise repeatable on one machine, but two x86 machines give other bits for the same
command (issue 27: an AMD EPYC and an Intel Xeon disagreed in every model-utility cell), because
the CPU's code paths differ in two libraries:

- **MKL** (torch's CPU matrix products, ``BLAS_INFO=mkl``) picks kernels by CPU; its conditional
  numerical reproducibility ``MKL_CBWR=COMPATIBLE`` is the mode Intel documents to give the same
  results on Intel and Intel-compatible (AMD) processors. ``MKL_CBWR=AVX2`` is not: on a non-Intel
  CPU MKL ignores it and takes its automatic branch (Intel's oneMKL developer guide, "Getting
  Started with Conditional Numerical Reproducibility").
- **ATen's own vectorised kernels** (softmax, layer norm, GELU, reductions) are compiled per
  instruction set and chosen at run time, AVX-512 where the CPU has it; ``ATEN_CPU_CAPABILITY=avx2``
  caps them at AVX2, which every x86-64 CPU of the last decade has.

:func:`PORTABLE_ENV` is both (and ``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN, which the benchmark's
models do not call but a user's might). Measured on this project's AMD EPYC (AVX-512): each of
``MKL_CBWR=COMPATIBLE`` and ``ATEN_CPU_CAPABILITY=avx2`` alone changes the results, while
``MKL_CBWR=AVX2`` does not (MKL ignores it on AMD); with the portable environment, capping MKL's
instructions too (``MKL_ENABLE_INSTRUCTIONS=AVX2``, as on a CPU without AVX-512) leaves every bit
of a tiny run unchanged. Whether an Intel Xeon then gives the same bits as the EPYC has not been
checked here (one machine kind): run the same command on both and compare the JSON.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

PORTABLE_ENV = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""The environment of the ``portable`` CPU numerics (the module docstring says why)."""
PACKAGES = ("torch", "transformers", "numpy", "scipy", "scikit-learn", "rouge-score", "faker",
            "tqdm", "matplotlib", "triton")  # fmt: skip


def x86() -> bool:
    """Whether this is an x86-64 machine, where the portable environment applies (elsewhere
    its variables mean nothing, and the JSON says the numerics are native)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def is_portable(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PORTABLE_ENV.items())


def numerics() -> dict:
    """The numerics this process runs with: the portable environment's variables as set, and
    what torch reports (its CPU capability, threads, BLAS)."""
    import torch

    out = {"portable": is_portable(), **{k: os.environ.get(k) for k in PORTABLE_ENV},
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads()}  # fmt: skip
    return out


def commit() -> dict:
    """The git commit of the package's checkout and whether it had changes (None outside git)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if head is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head, "dirty": bool(status)}


def machine() -> dict:
    """The CPU model (from /proc/cpuinfo where there is one), its cores, the OS and Python."""
    model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine(),
            "system": platform.system(), "python": platform.python_version()}  # fmt: skip


def versions() -> dict:
    """The versions of the packages the results depend on (None where one is not installed;
    the synthetic corpus depends on ``faker``'s)."""
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["sago_kernels"] = metadata.version("sago_kernels")
    except metadata.PackageNotFoundError:
        out["sago_kernels"] = None
    return out


def record(argv: list[str]) -> dict:
    """Everything above, and the command that made the result."""
    command = "python -m sago_kernels.unlearning.benchmark " + " ".join(argv)
    return {**commit(), "command": command.strip(), "machine": machine(),
            "versions": versions(), "numerics": numerics(),
            "executable": sys.executable}  # fmt: skip
