"""Argument checks for the combine, in one place, all before anything is written.

Errors follow one pattern: what the parameter should be, what was found, and how to fix it.
"""

from __future__ import annotations

import functools
import math

import torch

from .layout import GradLayout

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

FLOAT32_MAX = torch.finfo(torch.float32).max
"""Largest |alpha|, |gamma|, eps: every backend computes in float32, where a larger Python float
becomes ±inf and turns finite gradients into ±inf or NaN."""


def check_scalar(name: str, value: object, *, non_negative: bool = False) -> float:
    """A Python real (int or float, not bool, not a tensor), finite in float32, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = (
            " Pass a Python float (a tensor would force a host sync)."
            if isinstance(value, torch.Tensor)
            else ""
        )
        raise TypeError(
            f"Parameter `{name}` should be a finite Python float. Found `type({name}) = "
            f"{type(value).__name__}`.{hint}"
        )
    try:
        value = float(value)
    except OverflowError:  # an int past float64's range
        value = math.inf if value > 0 else -math.inf
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ValueError(
            f"Parameter `{name}` should be finite in float32, the precision every backend "
            f"computes in (|{name}| <= {FLOAT32_MAX:.8g}). Found `{name} = {value}`."
        )
    if non_negative and value < 0:
        raise ValueError(f"Parameter `{name}` should be >= 0. Found `{name} = {value}`.")
    return value


def _check_buffer(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Parameter `{name}` should be a torch.Tensor. Found `{type(t).__name__}`.")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"Parameter `{name}` should have dtype float32, bfloat16 or float16. "
            f"Found `{name}.dtype = {t.dtype}`."
        )
    if t.dim() != 1:
        raise ValueError(
            f"Parameter `{name}` should be a flat 1-D buffer (see `GradLayout.new_buffer`). "
            f"Found `{name}.shape = {tuple(t.shape)}`."
        )
    if not t.is_contiguous():
        raise ValueError(
            f"Parameter `{name}` should be contiguous. Found `{name}.stride() = {t.stride()}`. "
            "An implicit copy would lose the in-place write; pass a contiguous buffer."
        )
    return t


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors on one device share any byte of memory."""
    (a0, a1), (b0, b1) = _byte_span(a), _byte_span(b)
    return a0 < b1 and b0 < a1


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel()


@functools.lru_cache(maxsize=64)
def single_segment_layout(numel: int) -> GradLayout:
    """The layout used when none is given: the whole buffer is one segment (cached)."""
    return GradLayout.single(numel)


def check_combine_args(
    retain: object,
    forget: object,
    out: object,
    layout: object,
) -> GradLayout:
    """Check the buffers and layout of a combine; return the layout to use."""
    retain = _check_buffer("retain", retain)
    forget = _check_buffer("forget", forget)
    buffers = [("retain", retain), ("forget", forget)]
    if out is not None:
        buffers.append(("out", _check_buffer("out", out)))
    for name, t in buffers[1:]:
        if t.dtype != retain.dtype:
            raise TypeError(
                f"Parameter `{name}` should have the dtype of `retain` ({retain.dtype}). "
                f"Found `{name}.dtype = {t.dtype}`."
            )
        if t.device != retain.device:
            raise ValueError(
                f"Parameter `{name}` should be on the device of `retain` ({retain.device}). "
                f"Found `{name}.device = {t.device}`."
            )
        if t.numel() != retain.numel():
            raise ValueError(
                f"Parameter `{name}` should have as many elements as `retain` ({retain.numel()}). "
                f"Found `{name}.numel() = {t.numel()}`."
            )
    if overlaps(retain, forget):
        raise ValueError(
            "Parameters `retain` and `forget` should not share memory. Found overlapping buffers; "
            "give each task its own buffer (e.g. two `layout.new_buffer()` calls)."
        )
    if out is not None:
        for name, t in buffers[:2]:
            if overlaps(out, t) and not _same_memory(out, t):
                raise ValueError(
                    f"Parameter `out` should be `{name}` itself or not overlap it. Found a partial "
                    "overlap; pass a separate buffer."
                )

    if layout is None:
        return single_segment_layout(retain.numel())
    if not isinstance(layout, GradLayout):
        raise TypeError(
            f"Parameter `layout` should be a GradLayout. Found `{type(layout).__name__}`."
        )
    if layout.numel != retain.numel():
        raise ValueError(
            f"Parameter `layout` does not fit the buffers: it describes {layout.numel} elements. "
            f"Found `retain.numel() = {retain.numel()}`. "
            "Make the buffers with `layout.new_buffer()`."
        )
    return layout
