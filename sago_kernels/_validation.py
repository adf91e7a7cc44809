"""Argument checks for the combine, in one place, all before anything is written.

Errors follow one pattern: what the parameter should be, what was found, and how to fix it.
"""

from __future__ import annotations

import functools
import math

import torch

from . import _overlap
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


def check_view_bits(name: str, t: torch.Tensor, *, written: bool) -> None:
    """Refuse negative and conjugate views: the backends read and write raw memory, which holds
    −x (or conj(x)) for such a view; only torch's own ops apply the bit."""
    for bit, kind, stored, resolve in (
        ("is_neg", "negative", f"−{name}", "resolve_neg"),
        ("is_conj", "conjugate", f"conj({name})", "resolve_conj"),
    ):
        if getattr(t, bit)():
            fix = (
                f"combine into a plain buffer (e.g. `buf = {name}.{resolve}()`), then copy it "
                f"back with `{name}.copy_(buf)`"
                if written
                else f"pass `{name}.{resolve}()` (a copy of N elements, made where you can see it)"
            )
            raise ValueError(
                f"Parameter `{name}` should not be a {kind} view: its memory holds {stored}, and "
                f"the kernels read memory as it is. Found `{name}.{bit}() = True`; {fix}."
            )


def check_autograd_state(
    name: str, t: torch.Tensor, *, written: bool, grad_enabled: bool | None = None
) -> None:
    """Refuse, before anything is written, what an in-place torch op would refuse here.

    The combine has no derivative: in grad mode no input or output may require grad (torch would
    record an in-place op on it; the combine cannot). Inference tensors cannot be written outside
    ``torch.inference_mode()``. What is allowed (under ``torch.no_grad()``, writing a tensor that
    requires grad, as an optimizer does) is counted: the written tensor's version counter is
    bumped (:func:`mark_written`), so autograd refuses a backward that saved it before.
    ``grad_enabled``: the grad mode to judge by (``None``: the current one; the custom ops run
    below autograd, where the caller's mode is not visible, and pass ``True``).
    """
    grad_enabled = torch.is_grad_enabled() if grad_enabled is None else grad_enabled
    if t.requires_grad and grad_enabled:
        raise ValueError(
            f"Parameter `{name}` should not require grad: the combine has no derivative, so "
            f"autograd could not follow it. Found `{name}.requires_grad = True`; pass gradient "
            f"buffers (e.g. `{name}.detach()`) or call `combine_` under `torch.no_grad()`."
        )
    if written and t.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            f"Parameter `{name}` is written in place, and an inference tensor can only be "
            f"written inside `torch.inference_mode()`. Found `{name}.is_inference() = True`; "
            "call the combine inside `torch.inference_mode()` or pass a normal tensor."
        )


def mark_written(tensors: torch.Tensor | list[torch.Tensor]) -> None:
    """Bump the version counter of tensors written through raw pointers, as a torch in-place op
    would: autograd then refuses a backward that saved one of them before the write."""
    torch.autograd.graph.increment_version(tensors)


def check_dense(name: str, t: torch.Tensor) -> None:
    """Refuse sparse (COO, CSR, ...) tensors first: the kernels read strided memory, and torch's
    own errors on a sparse tensor ("Cannot access data pointer", "is_contiguous") say nothing of
    what to do."""
    if t.layout != torch.strided:
        raise TypeError(
            f"Parameter `{name}` should be a dense (strided) tensor. Found `{name}.layout = "
            f"{t.layout}`; pass `{name}.to_dense()` (an nn.Embedding(sparse=True) gives sparse "
            "gradients: build it with sparse=False)."
        )


def _check_buffer(name: str, t: object, *, written: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Parameter `{name}` should be a torch.Tensor. Found `{type(t).__name__}`.")
    check_dense(name, t)
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
    check_view_bits(name, t, written=written)
    check_autograd_state(name, t, written=written)
    return t


def check_requires_grad(
    retain: object, forget: object, out: object, *, grad_enabled: bool | None = None
) -> None:
    """The ``requires_grad`` part of :func:`check_autograd_state` alone, for the paths that do
    not run the eager checks first-hand: ``torch.compile`` traces it (its graph guards on grad
    mode and ``requires_grad``; it cannot trace ``is_inference`` or ``is_neg``), and the custom
    ops, whose body runs below autograd, call it with ``grad_enabled=True``."""
    grad_enabled = torch.is_grad_enabled() if grad_enabled is None else grad_enabled
    for name, t in (("retain", retain), ("forget", forget), ("out", out)):
        if isinstance(t, torch.Tensor) and t.requires_grad and grad_enabled:
            check_autograd_state(name, t, written=False, grad_enabled=True)


def _layout_shares(a: torch.Tensor, b: torch.Tensor, layout: GradLayout, *, same_ok: bool) -> bool:
    """Whether an element of ``a`` that the layout covers shares memory with such an element of
    ``b`` (contiguous 1-D buffers of one dtype). Elements outside every segment are never read
    nor written, so buffers may interleave there. ``same_ok``: element i of ``a`` being element i
    of ``b`` is allowed (``out`` may be ``retain`` or ``forget``). O(1) unless the byte spans
    overlap, then O(segments)."""
    e = a.element_size()
    (a0, b0), n = (a.data_ptr(), b.data_ptr()), a.numel()
    if a0 + n * e <= b0 or b0 + n * e <= a0:
        return False
    intervals = [(s.start, s.end) for s in layout.segments]
    shifts = _overlap.index_shifts(a0, b0, e)
    return any(_overlap.intervals_meet(intervals, c) for c in shifts if not (same_ok and c == 0))


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
    retain = _check_buffer("retain", retain, written=out is None)
    forget = _check_buffer("forget", forget, written=False)
    buffers = [("retain", retain), ("forget", forget)]
    if out is not None:
        buffers.append(("out", _check_buffer("out", out, written=True)))
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

    if layout is None:
        layout = single_segment_layout(retain.numel())
    elif not isinstance(layout, GradLayout):
        raise TypeError(
            f"Parameter `layout` should be a GradLayout. Found `{type(layout).__name__}`."
        )
    elif layout.numel != retain.numel():
        raise ValueError(
            f"Parameter `layout` does not fit the buffers: it describes {layout.numel} elements. "
            f"Found `retain.numel() = {retain.numel()}`. "
            "Make the buffers with `layout.new_buffer()`."
        )

    if _layout_shares(retain, forget, layout, same_ok=False):
        raise ValueError(
            "Parameters `retain` and `forget` should not share memory. Found overlapping buffers "
            "(an element inside the layout's segments is in both); give each task its own "
            "buffer (e.g. two `layout.new_buffer()` calls)."
        )
    if out is not None:
        for name, t in buffers[:2]:
            if _layout_shares(out, t, layout, same_ok=True):
                raise ValueError(
                    f"Parameter `out` should be `{name}` itself or not overlap it. Found a partial "
                    "overlap; pass a separate buffer."
                )
    return layout


def check_grad_lists(retain_grads: list[torch.Tensor], forget_grads: list[torch.Tensor]) -> None:
    """The checks of ``combine_grads_`` on its tensors (one dtype and device, checked already):
    view bits (retain only) and autograd state as :func:`check_combine_args`, and memory decided
    on elements.

    Refused: a retain tensor whose own elements share memory (written twice), a retain tensor
    sharing an element with another retain tensor (written twice) or with a forget tensor
    (forget must not change). Forget tensors may share memory with each other (read only), and
    views that interleave without sharing an element (``x[0::2]`` and ``x[1::2]``) are fine.
    Spans are sorted once; only tensors whose spans overlap are compared element-wise
    (``_overlap.py``), so views of separate buffers or ascending views of one cost O(K log K).
    """
    grad_on = torch.is_grad_enabled()
    check_inference = not torch.is_inference_mode_enabled()
    complex_ = retain_grads[0].dtype.is_complex  # only complex tensors carry the conjugate bit
    e = retain_grads[0].element_size()
    spans = []
    for role, tensors in (("retain_grads", retain_grads), ("forget_grads", forget_grads)):
        written = role == "retain_grads"
        for i, t in enumerate(tensors):
            # one cheap test per tensor (K, the number of parameters, can be in the thousands);
            # the named checks only when something is off
            if (t.requires_grad and grad_on) or (
                written
                and (
                    t.is_neg()
                    or (complex_ and t.is_conj())
                    or (check_inference and t.is_inference())
                )
            ):
                name = f"{role}[{i}]"
                if written:  # forget views with a bit are gathered, which resolves it (grads.py)
                    check_view_bits(name, t, written=True)
                check_autograd_state(name, t, written=written)
            n = t.numel()
            if not n:
                continue
            if t.is_contiguous():
                last = n - 1
            else:
                if written and _overlap.has_internal_overlap(t):
                    name = f"{role}[{i}]"
                    raise ValueError(
                        f"Parameter `{name}` should not have elements that share memory: it is "
                        f"written in place. Found `{name}.stride() = {t.stride()}` for shape "
                        f"{tuple(t.shape)} (e.g. an `expand`ed tensor); pass a tensor with its "
                        "own memory per element."
                    )
                last = sum((size - 1) * step for size, step in _overlap.index_dims(t))
            start = t.data_ptr()
            spans.append((start, start + (last + 1) * e, (role, i), written, t))
    spans.sort(key=lambda span: span[0])
    open_spans: list[tuple[int, int, tuple[str, int], bool, torch.Tensor]] = []
    for span in spans:
        start, _, where, written, t = span
        if open_spans:
            open_spans = [other for other in open_spans if other[1] > start]
        for _, _, other_where, other_written, other in open_spans:
            if not (written or other_written) or not _overlap.tensors_share_memory(other, t):
                continue
            name, other_name = "{}[{}]".format(*where), "{}[{}]".format(*other_where)
            if written and other_written:
                raise ValueError(
                    "Parameter `retain_grads` should not hold two tensors that share memory: "
                    f"both would be written. Found `{other_name}` and `{name}` sharing elements."
                )
            raise ValueError(
                "Parameters `retain_grads` and `forget_grads` should not share memory: writing "
                f"g_final would change g_f. Found `{other_name}` and `{name}` sharing elements; "
                "give each task its own gradient tensors."
            )
        open_spans.append(span)


def check_scaler_tensors(
    inv_scale: object, found_inf: object, retain: torch.Tensor
) -> None:
    """A gradient scaler's tensors, as ``GradScaler.unscale_`` passes them to torch's own
    unscale: one float32 element each, on the buffers' device (a tensor, not a float, so reading
    the scale never synchronises with the host). ``found_inf`` is written."""
    for name, t in (("inv_scale", inv_scale), ("found_inf", found_inf)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"Parameter `{name}` should be a one-element float32 tensor on the buffers' "
                f"device (as GradScaler keeps it). Found `{type(t).__name__}`."
            )
        check_dense(name, t)
        if t.dtype != torch.float32 or t.numel() != 1 or t.device != retain.device:
            raise ValueError(
                f"Parameter `{name}` should be a one-element float32 tensor on {retain.device} "
                f"(the buffers' device). Found shape {tuple(t.shape)}, {t.dtype} on {t.device}."
            )
        check_autograd_state(name, t, written=name == "found_inf")
    if retain.dtype == torch.float16 and inv_scale is not None:
        raise ValueError(
            "Parameter `inv_scale` unscales float16 gradients, which GradScaler refuses "
            "(\"Attempting to unscale FP16 gradients\"): unscaled, small gradients underflow in "
            "float16. Keep the parameters (so the gradients) in float32 and let autocast run "
            "the forward in float16, or train in bfloat16 without a scaler."
        )


def check_state(
    state: object,
    method: object,
    retain: torch.Tensor,
    forget: torch.Tensor,
    out: torch.Tensor | None,
    layout: GradLayout,
) -> None:
    """A state buffer exactly when the method keeps one (GRU), like ``retain`` and apart from
    every other buffer."""
    name = getattr(method, "name", method)
    if not getattr(method, "needs_state", False):
        if state is not None:
            raise ValueError(
                f"Parameter `state` is for methods that keep one (gru, gru_global); method "
                f"{name!r} does not. Drop `state=`."
            )
        return
    if state is None:
        raise ValueError(
            f"Method {name!r} keeps a moving average of the retain gradient: pass "
            "`state=layout.new_buffer(...)` (zeros, the gradients' dtype), and the same buffer "
            "at every step (or use `GradientSynthesizer`, which holds it)."
        )
    state = _check_buffer("state", state, written=True)
    if state.dtype != retain.dtype or state.device != retain.device:
        raise TypeError(
            f"Parameter `state` should have the dtype and device of `retain` ({retain.dtype}, "
            f"{retain.device}). Found `{state.dtype}` on `{state.device}`."
        )
    if state.numel() != retain.numel():
        raise ValueError(
            f"Parameter `state` should have as many elements as `retain` ({retain.numel()}). "
            f"Found `state.numel() = {state.numel()}`."
        )
    others = [("retain", retain), ("forget", forget)] + ([("out", out)] if out is not None else [])
    for other_name, t in others:
        if _layout_shares(state, t, layout, same_ok=False):
            raise ValueError(
                f"Parameters `state` and `{other_name}` should not share memory. Found "
                "overlapping buffers; give the state its own buffer (`layout.new_buffer()`)."
            )
