"""The combine as ``torch.library`` custom ops, so ``torch.compile`` keeps it in the graph.

Inside a compiled region :func:`sago_kernels.combine_` calls these ops instead of running its
Python body: the compiler sees one opaque op with its mutation declared (``retain`` or ``out``
is written; ``mutates_args``), never traces the kernels' launch code, and so neither breaks the
graph nor falls back to the reference. At run time the op's body is the eager combine with
all its checks (``_checked.checked_combine``, which ``combine_`` stands on too). ``alpha``,
``gamma`` and ``eps`` travel as one small CPU tensor (a ``float`` argument would make the
compiler guard on its value): after dynamo's one recompile that makes a changed Python float
dynamic, new values need no recompile.

A layout cannot be an op argument; the ops take its :attr:`GradLayout.key` (a registry of live
layouts, weak references) or ``WHOLE_BUFFER`` for ``layout=None``.

Not inside compiled regions: ``out=forget`` (an op cannot both read and write one argument
through two names) and ``process_group`` (not an op argument type); both raise there.

The in-place contract (``combine_``'s docstring) holds through the ops, with two differences
that come from where they run. The body runs below autograd, where the caller's grad mode is not
visible, so it refuses tensors that require grad whatever the mode (``combine_`` itself refuses
them in grad mode while the compiler traces it). And the compiler hands the body aliases of its
inputs: an inference tensor passed to a compiled function outside inference mode is written
before torch raises, as it is for torch's own in-place ops there; dynamo cannot trace
``is_inference()`` to refuse it earlier. Negative views are resolved (or refused) by torch's
own machinery before the body runs.
"""

from __future__ import annotations

import torch

from ._checked import checked_combine
from ._validation import check_requires_grad
from .layout import GradLayout

WHOLE_BUFFER = -1
"""The layout key of ``layout=None``: the whole buffer is one segment."""


def _layout(key: int, numel: int) -> GradLayout:
    return GradLayout.single(numel) if key == WHOLE_BUFFER else GradLayout.from_key(key)


def _eager(retain, forget, out, key, method, weights, stats, backend):
    # Below autograd the caller's grad mode is not visible: refuse tensors that require grad
    # whatever the mode (combine_ refused them in grad mode before tracing the op).
    check_requires_grad(retain, forget, out, grad_enabled=True)
    alpha, gamma, eps = weights.tolist()  # a CPU tensor: no device synchronisation
    layout = None if key == WHOLE_BUFFER else GradLayout.from_key(key)
    _, table = checked_combine(
        retain, forget, layout, method, alpha, gamma, eps, out, stats, backend or None, None,
        None,
    )  # fmt: skip
    return table if stats else retain.new_empty(0, dtype=torch.float32)


def _table_like(retain: torch.Tensor, key: int, stats: bool) -> torch.Tensor:
    rows = _layout(key, retain.numel()).num_segments + 1 if stats else 0
    shape = (rows, 8) if stats else (0,)
    return retain.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("sago_kernels::combine_", mutates_args=("retain",))
def combine_inplace(
    retain: torch.Tensor,
    forget: torch.Tensor,
    layout_key: int,
    method: str,
    weights: torch.Tensor,
    stats: bool,
    backend: str,
) -> torch.Tensor:
    """g_final into ``retain``; returns the geometry table (empty unless ``stats``).
    ``weights``: float64 CPU tensor (alpha, gamma, eps)."""
    return _eager(retain, forget, None, layout_key, method, weights, stats, backend)


@combine_inplace.register_fake
def _(retain, forget, layout_key, method, weights, stats, backend):
    return _table_like(retain, layout_key, stats)


@torch.library.custom_op("sago_kernels::combine_out", mutates_args=("out",))
def combine_out(
    retain: torch.Tensor,
    forget: torch.Tensor,
    out: torch.Tensor,
    layout_key: int,
    method: str,
    weights: torch.Tensor,
    stats: bool,
    backend: str,
) -> torch.Tensor:
    """g_final into ``out`` (not ``retain`` nor ``forget``); returns the geometry table."""
    return _eager(retain, forget, out, layout_key, method, weights, stats, backend)


@combine_out.register_fake
def _(retain, forget, out, layout_key, method, weights, stats, backend):
    return _table_like(retain, layout_key, stats)


def combine_compiled(
    retain: torch.Tensor,
    forget: torch.Tensor,
    layout: GradLayout | None,
    out: torch.Tensor | None,
    method: str,
    alpha: float,
    gamma: float,
    eps: float,
    stats: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op call ``combine_`` makes inside a compiled region: (written tensor, table)."""
    key = WHOLE_BUFFER if layout is None else layout.key
    # arithmetic, not torch.tensor([...]): the compiler keeps float inputs symbolic through it
    unit = torch.eye(3, dtype=torch.float64)
    weights = unit[0] * alpha + unit[1] * gamma + unit[2] * eps
    if out is None or out is retain:
        return retain, combine_inplace(retain, forget, key, method, weights, stats, backend or "")
    if out is forget:
        raise NotImplementedError(
            "combine_(..., out=forget) is not supported inside torch.compile; pass out=None "
            "(write into retain) or a separate buffer."
        )
    return out, combine_out(retain, forget, out, key, method, weights, stats, backend or "")
