"""The package imports and combines on a machine without triton; CI really tests Triton."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import BACKENDS, HAS_CUDA


def test_imports_and_runs_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, sago_kernels as sk\n"
        "assert 'triton' not in sk.backends(), sk.backends()\n"
        "r = torch.tensor([1.0, -2.0]); f = torch.tensor([-1.0, -1.0])\n"
        "print(sk.combine_(r, f, method='sago').tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1.0, -1.0]"


def test_the_triton_backend_is_under_test():
    """A missing or broken triton must not turn the kernel tests into reference-only runs."""
    if os.environ.get("SAGO_ALLOW_NO_TRITON") == "1":
        return
    from sago_kernels import dispatch

    why = dispatch._interpreter_problem() if dispatch._interpreter_on() else None
    assert "triton" in BACKENDS, (
        "triton is not usable here (install it, and on CPU set TRITON_INTERPRET=1 before import"
        f"{'; ' + why if why else ''}); set SAGO_ALLOW_NO_TRITON=1 to run reference-only on purpose"
    )
    assert HAS_CUDA or os.environ.get("TRITON_INTERPRET") == "1"


def test_the_native_backend_is_under_test():
    """A failed CMake build at install time must not turn the native tests into skips."""
    if os.environ.get("SAGO_ALLOW_NO_NATIVE") == "1":
        return
    from sago_kernels import native

    assert "native" in BACKENDS, (
        f"the native CPU backend is not available ({native.unavailable_reason()}); "
        "install with a C++ compiler and CMake, or set SAGO_ALLOW_NO_NATIVE=1 on purpose"
    )
