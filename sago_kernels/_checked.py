"""The checked combine: every argument check, then the backend, then the in-place bookkeeping.

One floor below the public call: ``combine.combine_`` (eager) and the custom ops' bodies
(``ops.py``, inside ``torch.compile``) both stand on :func:`checked_combine`, and so does the
one-buffer synthesizer's checked path. Nothing here imports the public call, so every import
points down.
"""

from __future__ import annotations

import torch

from . import sharding
from ._validation import (
    check_combine_args,
    check_scalar,
    check_scaler_tensors,
    check_state,
    mark_written,
)
from .dispatch import resolve_backend
from .layout import GradLayout
from .methods import get_method
from .stats import SEGMENT_SUMS


def checked_combine(
    retain: torch.Tensor,
    forget: torch.Tensor,
    layout: GradLayout | None,
    method: object,
    alpha: float,
    gamma: float,
    eps: float,
    out: torch.Tensor | None,
    want_stats: bool | str,
    backend: str | None,
    process_group: object | None,
    state: torch.Tensor | None,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, object]:
    """:func:`sago_kernels.combine_` past its argument forms: check everything, run the backend.
    Returns the written tensor and what the backend returned for ``want_stats`` (the table;
    with ``stats.SEGMENT_SUMS``, the raw per-segment sums, as the one-buffer synthesizer takes).

    ``found_inf``: set to 1 where a segment's ‖r‖², ‖f‖² or ‖g_final‖² (of the unscaled
    gradients, in float32) is not finite, from the statistics' sums, which the passes form
    anyway (the backends are asked for them when the caller is not)."""
    m = get_method(method)
    alpha = check_scalar("alpha", alpha)
    gamma = check_scalar("gamma", gamma)
    eps = check_scalar("eps", eps, non_negative=True)
    layout = check_combine_args(retain, forget, out, layout)
    check_state(state, m, retain, forget, out, layout)
    check_scaler_tensors(inv_scale, found_inf, retain)
    _, run = resolve_backend(backend, retain.device)
    target = retain if out is None else out
    extra: dict[str, object] = {}
    if process_group is not None:
        group = sharding.check_group(process_group)
        extra = dict(
            reduce=sharding.reducer(group),
            seg_numels=sharding.global_numels(layout, retain.device, group),
        )
    if state is not None:
        extra["state"] = state
    if inv_scale is not None:
        extra["inv_scale"] = inv_scale
    if found_inf is not None:
        extra["found_inf"] = found_inf
    ask = want_stats or (SEGMENT_SUMS if found_inf is not None else False)
    result = run(retain, forget, target, layout, m, alpha, gamma, eps, ask, **extra)
    # native and Triton write through raw pointers: torch did not see it
    mark_written(target if state is None else [target, state])
    if found_inf is not None:
        record_non_finite(found_inf, result, ask)
        if not want_stats:
            result = None
    return target, result


def record_non_finite(found_inf: torch.Tensor, result: object, kind: bool | str) -> None:
    """found_inf ← 1 where the step's gradients or g_final hold a non-finite value, judged on
    the squared norms of r, f and g_final (columns 1-3 of the raw sums, the norms' columns of a
    table's total row): a non-finite element makes them non-finite, whatever the method, and so
    does a projection whose weights overflow (its segment is written as NaN). In place, on the
    device: no host sync."""
    if kind == SEGMENT_SUMS:
        norms = result[0][:, 1:4].to(torch.float32)
    else:
        norms = result[-1, 1:4]
    bad = (~torch.isfinite(norms)).any().to(found_inf.dtype)
    torch.maximum(found_inf, bad.reshape(found_inf.shape), out=found_inf)
