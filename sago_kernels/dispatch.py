"""Which implementation runs a combine: the registry of backends and the automatic choice.

- ``"triton"``: the fused kernels (``sago_kernels.kernels``). CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` was set before ``triton`` was imported (slow; for tests and debugging)
  and the interpreter passes a one-kernel check (``kernels/interpreter_check.py``).
- ``"native"``: the C++/OpenMP library (``sago_kernels.native``), CPU tensors, when it was built.
- ``"reference"``: plain torch (``sago_kernels.reference``), any device.

``backend=None`` picks Triton for CUDA tensors when it is installed; for CPU tensors the native
library when it was built, else Triton under its interpreter, else the reference. Falling back
to the reference says why once per process.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

from . import native, reference
from .layout import GradLayout
from .methods import Method
from .sharding import Reduce
from .stats import SEGMENT_SUMS, geometry_table

BackendFn = Callable[..., "torch.Tensor | None"]


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None
        return False


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels here (see interpreter_check.py)."""
    from .kernels.interpreter_check import interpreter_problem

    return interpreter_problem()


def _interpreter_usable() -> bool:
    return _interpreter_on() and _interpreter_problem() is None


def _triton_runs_on(device: torch.device) -> bool:
    if not _triton_installed():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _interpreter_usable()


def backends() -> list[str]:
    """Backends that can run on this machine (on some device)."""
    names = ["reference"]
    if _triton_installed() and (torch.cuda.is_available() or _interpreter_usable()):
        names.append("triton")
    if native.available():
        names.append("native")
    return names


def _reference_combine(
    retain: torch.Tensor,
    forget: torch.Tensor,
    target: torch.Tensor,
    layout: GradLayout,
    method: Method,
    alpha: float,
    gamma: float,
    eps: float,
    want_stats: bool,
    reduce: Reduce | None = None,
    seg_numels: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor | None:
    with torch.no_grad():
        out, sums, conflicts = reference.combine(
            retain, forget, layout, method.reference, method.scope,
            alpha=alpha, gamma=gamma, eps=eps, compute_dtype=torch.float32, with_sums=want_stats,
            reduce=reduce, weighting=method.weighting, ema=method.ema, state=state,
            inv_scale=inv_scale, found_inf=found_inf,
        )  # fmt: skip
        reference.write_segments(target, out, layout)
        if not want_stats:
            return None
        if reduce is not None:
            reduce(sums)
            reduce(conflicts)
        if want_stats == SEGMENT_SUMS:
            return sums, conflicts
        if seg_numels is None:
            seg_numels = layout.numel_table(retain.device)
        return geometry_table(sums, conflicts, seg_numels)


def _triton_combine(*args, **kwargs) -> torch.Tensor | None:
    from .kernels import combine_triton

    return combine_triton(*args, **kwargs)


_BACKENDS: dict[str, BackendFn] = {
    "reference": _reference_combine,
    "triton": _triton_combine,
    "native": native.combine_native,
}
_warned_fallback: set[str] = set()


def _warn_once(device_type: str, message: str) -> None:
    if device_type not in _warned_fallback:
        _warned_fallback.add(device_type)
        warnings.warn(message, stacklevel=4)


def resolve_backend(name: str | None, device: torch.device) -> tuple[str, BackendFn]:
    """The backend to run on ``device``: the one named, or the automatic choice for ``None``."""
    if name is None:
        if device.type == "cpu" and native.available():
            return "native", _BACKENDS["native"]
        if _triton_runs_on(device):
            return "triton", _BACKENDS["triton"]
        if device.type == "cuda":
            _warn_once(
                "cuda",
                "sago_kernels: triton is not installed; CUDA combines run on the slow reference "
                "backend. `pip install triton` for the fused kernels.",
            )
        elif device.type == "cpu":
            _warn_once(
                "cpu",
                "sago_kernels: the native CPU backend is not available "
                f"({native.unavailable_reason()}); CPU combines run on the reference backend.",
            )
        return "reference", _BACKENDS["reference"]
    if name not in _BACKENDS:
        raise ValueError(
            f"Parameter `backend` should be one of {sorted(_BACKENDS)} or None (auto). "
            f"Found `backend = {name!r}`."
        )
    if name == "triton" and not _triton_runs_on(device):
        if not _triton_installed():
            why = "triton is not installed (`pip install triton`)"
        elif device.type == "cpu" and _interpreter_on():
            why = _interpreter_problem()
        else:
            why = (
                "Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                f"`import triton` "
                f"for CPU tensors; the buffers are on {device}"
            )
        raise RuntimeError(
            f"backend='triton' is not available: {why}. Use backend='reference' or None."
        )
    if name == "native":
        if not native.available():
            raise RuntimeError(
                f"backend='native' is not available: {native.unavailable_reason()}. "
                "Use backend='reference' or None."
            )
        if device.type != "cpu":
            raise RuntimeError(
                f"backend='native' runs on CPU tensors; the buffers are on {device}. "
                "Use backend='triton' or None for CUDA tensors."
            )
    return name, _BACKENDS[name]
