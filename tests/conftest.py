"""Test set-up: Triton's interpreter on CPU-only machines, hypothesis profiles, devices.

``TRITON_INTERPRET=1`` must be set before ``triton`` is imported, so it is set here, at collection,
whenever no CUDA device is present. On a GPU machine the same tests run the compiled kernels.

Hypothesis profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default: derandomised, so a CI run is
reproducible), ``fuzz`` (random, 10x the examples: for local and GPU runs).
"""

from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Triton 3.9 warns when this is unset; the kernels pass enable_fp_fusion explicitly anyway.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import sago_kernels as sk  # noqa: E402

# function_scoped_fixture: `device` is function-scoped (it follows `backend`) and immutable,
# so sharing it across the examples of one test is safe.
_COMMON = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=120, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BACKENDS = sk.backends()
CPU_ONLY_BACKENDS = ("native",)


@pytest.fixture
def device(request) -> torch.device:
    """Where a test's buffers live: the accelerator if any, the CPU for CPU-only backends."""
    if "backend" in request.fixturenames:
        if request.getfixturevalue("backend") in CPU_ONLY_BACKENDS:
            return torch.device("cpu")
    return DEVICE


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


def pytest_report_header(config) -> list[str]:
    import sago_kernels.dispatch as b

    mode = "compiled (CUDA)" if HAS_CUDA else "interpreter" if b._interpreter_on() else "absent"
    lines = [f"sago_kernels: device={DEVICE}, backends={BACKENDS}, triton={mode}"]
    if not HAS_CUDA and b._triton_installed() and b._interpreter_on():
        why = b._interpreter_problem()
        lines += [f"sago_kernels: the Triton backend is off: {why}"] if why else []
    return lines


def pytest_configure(config) -> None:
    # The interpreter evaluates masked-off lanes too (0/0, inf - inf): numpy's warnings are noise.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:numpy")


def pytest_runtest_logreport(report) -> None:
    """With ``SAGO_FAILURE_LOG=FILE``, append each failure to FILE as it happens: on a lent GPU a
    run cut off by its time limit still leaves the tracebacks (pytest prints them only at the
    end). Written by the controlling process only (under xdist the workers' reports reach it)."""
    path = os.environ.get("SAGO_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"\n=== FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n")
