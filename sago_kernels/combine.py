"""``combine_``: the one call that turns (g_r, g_f) flat buffers into g_final, in place."""

from __future__ import annotations

from typing import Literal, overload

import torch

from . import ops
from ._checked import checked_combine as _checked_combine
from ._validation import check_requires_grad
from .layout import GradLayout
from .methods import Method, get_method
from .stats import CombineStats
from .weightings import Weighting

MethodName = Literal["sum", "sago", "sago_prefer_retain", "pcgrad", "pcgrad_global", "blur"]
MethodArg = MethodName | str | Method | Weighting
"""A registered name (``sk.methods()``), a :class:`Method`, or a Gramian weighting callable."""
BackendName = Literal["triton", "native", "reference"]


@overload
def combine_(
    retain: torch.Tensor,
    forget: torch.Tensor,
    *,
    layout: GradLayout | None = ...,
    method: MethodArg = ...,
    alpha: float = ...,
    gamma: float = ...,
    eps: float = ...,
    out: torch.Tensor | None = ...,
    stats: Literal[False] = ...,
    backend: BackendName | None = ...,
    process_group: object | None = ...,
    state: torch.Tensor | None = ...,
    inv_scale: torch.Tensor | None = ...,
    found_inf: torch.Tensor | None = ...,
) -> torch.Tensor: ...


@overload
def combine_(
    retain: torch.Tensor,
    forget: torch.Tensor,
    *,
    layout: GradLayout | None = ...,
    method: MethodArg = ...,
    alpha: float = ...,
    gamma: float = ...,
    eps: float = ...,
    out: torch.Tensor | None = ...,
    stats: Literal[True],
    backend: BackendName | None = ...,
    process_group: object | None = ...,
    state: torch.Tensor | None = ...,
    inv_scale: torch.Tensor | None = ...,
    found_inf: torch.Tensor | None = ...,
) -> tuple[torch.Tensor, CombineStats]: ...


def combine_(
    retain: torch.Tensor,
    forget: torch.Tensor,
    *,
    layout: GradLayout | None = None,
    method: MethodArg = "sago",
    alpha: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-10,
    out: torch.Tensor | None = None,
    stats: bool = False,
    backend: BackendName | None = None,
    process_group: object | None = None,
    state: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, CombineStats]:
    """Combine the retain and forget gradients into g_final, written in place into ``retain``.

    Args:
        retain: flat 1-D buffer of g_r (float32, bfloat16 or float16; CUDA or CPU). Receives
            g_final unless ``out`` is given.
        forget: flat buffer of g_f, same dtype, device and length; never written.
        layout: the segments of the buffers (see :class:`GradLayout`). ``None``: the whole buffer
            is one segment. Elements outside every segment are neither read nor written.
        method: ``"sum"``, ``"sago"``, ``"sago_prefer_retain"``, ``"pcgrad"`` (per segment),
            ``"pcgrad_global"``, ``"blur"``, a Gramian weighting (``"upgrad"``, ``"mgda"``,
            ...; see ``sk.METHODS`` and the README), a :class:`Method` (``sk.method_with``,
            ``sk.weighting_method``), or a callable from ``[S, 2, 2]`` Gramians to ``[S, 2]``
            weights (``sk.GradVac()`` is one with state).
        alpha: retain weight α; gamma: forget weight γ (Python floats, finite in float32:
            every backend computes in float32, so |α|, |γ| <= 3.4028235e38).
        eps: added to the denominators of projection coefficients (>= 0, finite in float32).
        out: write g_final here instead (same dtype, device, length; may be ``forget``).
        stats: also return a :class:`CombineStats` of device tensors (gradient geometry), computed
            in the same passes.
        backend: ``"triton"``, ``"native"`` (C++ on CPU), ``"reference"`` or ``None`` (auto:
            Triton for CUDA tensors, native for CPU tensors; see ``sago_kernels.dispatch``).
        process_group: sharded gradients (FSDP2 or any split over ranks): the buffers hold this
            rank's slice of every segment, and projection methods and statistics use the whole
            segments through one all-reduce of per-segment dots over this group (see
            ``sago_kernels.sharding``). Every rank of the group must call it.
        state: the state buffer of a method that keeps one (``"gru"``, ``"gru_global"``: the
            moving average of g_r), and only of such a method: a flat buffer like ``retain``
            (same dtype, device, length; zeros before the first step), sharing no segment
            element with the other buffers. Updated in place, segment by segment; keep it for
            the run (``GradientSynthesizer`` holds one and checkpoints it).
        inv_scale: mixed precision with a loss scaler: the gradients in the buffers are scaled
            (``scaler.scale(loss).backward()``) and every element of g_r and g_f is multiplied
            by ``inv_scale`` as it is read, before anything else, in the combine's own passes
            (no separate unscale pass): g_final, the statistics and any state are of the
            unscaled gradients. A one-element float32 tensor on the buffers' device, as
            ``GradScaler`` keeps it (``GradientSynthesizer.combine_(grad_scaler=...)`` passes
            it for you). With a power-of-two scale the result is bitwise the combine of the
            unscaled gradients. Not for float16 buffers (``GradScaler`` refuses them too).
        found_inf: a one-element float32 tensor set to 1 (never back to 0) when the step holds a
            non-finite value: in g_r or g_f (an overflow of the scaled backward) or in g_final,
            judged on their squared norms (an element past ~1e19 counts too); what
            ``GradScaler.step`` reads to skip the step. A stateful method (GRU, GradVac) then
            keeps its state. Computed from the statistics' sums, which the passes form anyway
            (the native CPU backend and ``stats=False`` element-wise kernels form them only for
            it).

    Returns:
        The written tensor, and the statistics when ``stats=True``.

    Nothing synchronises with the host (after a layout's first use on a device), so the call can
    sit inside a CUDA-graph-captured or asynchronous training step. Bad input raises ``TypeError``
    or ``ValueError`` before anything is written. Inside ``torch.compile`` the call becomes one
    custom op (``sago_kernels.ops``): no graph break, and new alpha/gamma values recompile at
    most once (dynamo's switch of a changed float to dynamic).

    The write is an in-place op on every backend: the written buffer's version counter is bumped
    (autograd refuses a backward that saved it before), and what torch refuses for an in-place op
    is refused up front: in grad mode no buffer may require grad (the combine has no derivative),
    and inference tensors are written only inside ``torch.inference_mode()``. Negative views
    (``x.is_neg()``) are refused: the kernels read raw memory, which holds the other sign.
    Memory is judged on the elements the layout covers: ``retain`` and ``forget`` may interleave
    outside the segments but share no segment element; ``out`` may be either buffer itself.

    Example:
        >>> import torch, sago_kernels as sk
        >>> r = torch.tensor([1.0, -2.0, 3.0]); f = torch.tensor([-1.0, -1.0, 0.5])
        >>> sk.combine_(r, f, method="sago", backend="reference")
        tensor([ 1.0000, -1.0000,  0.5000])
    """
    if torch.compiler.is_compiling():  # one opaque custom op in the graph (see ops.py)
        if process_group is not None:
            raise NotImplementedError(
                "combine_(..., process_group=...) is not supported inside torch.compile; call "
                "it outside the compiled region."
            )
        if state is not None or get_method(method).needs_state:
            raise NotImplementedError(
                "combine_(..., state=...) (GRU) is not supported inside torch.compile; call it "
                "outside the compiled region."
            )
        if inv_scale is not None or found_inf is not None:
            raise NotImplementedError(
                "combine_(..., inv_scale=, found_inf=) is not supported inside torch.compile; "
                "call it outside the compiled region."
            )
        if not isinstance(method, str):
            raise NotImplementedError(
                "combine_(..., method=<a Method or weighting callable>) is not supported inside "
                "torch.compile (an op argument cannot be a function); use a registered method "
                "name there, or call it outside the compiled region."
            )
        check_requires_grad(retain, forget, out)  # the rest: in the op's body, at run time
        target, table = ops.combine_compiled(
            retain, forget, layout, out, method, alpha, gamma, eps, stats, backend
        )
        return (target, CombineStats.from_table(method, table)) if stats else target
    if not isinstance(stats, bool):
        raise TypeError(f"Parameter `stats` should be a bool. Found `{type(stats).__name__}`.")
    target, table = _checked_combine(
        retain, forget, layout, method, alpha, gamma, eps, out, stats, backend, process_group,
        state, inv_scale, found_inf,
    )  # fmt: skip
    if stats:
        return target, CombineStats.from_table(get_method(method).name, table)
    return target

