"""``combine_grads_``: the combine for users who hold lists of gradients, not flat buffers."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ._validation import check_dense, check_grad_lists, check_scalar, mark_written
from .combine import BackendName, MethodName, combine_
from .layout import GradLayout
from .methods import get_method
from .stats import CombineStats


def _flat_span(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]] | None:
    """If the tensors are contiguous, ascending, non-overlapping views of one storage, a 1-D view
    over the span they cover and each tensor's offset in it; else ``None``."""
    first = tensors[0]
    storage = first.untyped_storage()
    offsets, previous_end = [], None
    for t in tensors:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() != storage.data_ptr():
            return None
        if t.is_neg() or t.is_conj():  # a storage view would drop the bit: gather (resolves it)
            return None
        start = t.storage_offset()
        if previous_end is not None and start < previous_end:
            return None
        offsets.append(start)
        previous_end = start + t.numel()
    lo = offsets[0]
    flat = first.new_empty(0).set_(storage, lo, (previous_end - lo,), (1,))
    return flat, tuple(o - lo for o in offsets)


@functools.lru_cache(maxsize=32)
def _view_layout(offsets: tuple[int, ...], numels: tuple[int, ...], numel: int) -> GradLayout:
    return GradLayout(offsets, numels, numel)


def combine_grads_(
    retain_grads: Sequence[torch.Tensor],
    forget_grads: Sequence[torch.Tensor],
    *,
    method: MethodName = "sago",
    alpha: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-10,
    stats: bool = False,
    backend: BackendName | None = None,
    process_group: object | None = None,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], CombineStats]:
    """Combine per-tensor gradients in place into ``retain_grads``; each tensor is one segment.

    ``process_group``: the tensors are this rank's shards of the parameters (e.g.
    ``p.grad.to_local()`` under FSDP2's ``fully_shard``); see :func:`combine_`.

    Cost: when each list holds contiguous, ascending, non-overlapping views of one flat buffer
    (as ``GradLayout.views`` makes them) and both lists have the same offsets, this is exactly
    :func:`combine_` on the underlying buffers: no copy, one fused call. Otherwise both lists are
    gathered into two new flat buffers (2·N extra elements and one copy each way), combined there,
    and g_final is copied back into ``retain_grads``: correct, but use flat buffers when speed or
    memory matters.

    Memory is judged element by element (strides included): a retain tensor may share no element
    with another retain tensor or any forget tensor, nor with itself (an ``expand``ed tensor);
    views that interleave without sharing an element (``x[0::2]`` and ``x[1::2]``) are fine.
    Negative-bit forget views are gathered, which resolves them; negative-bit retain views are
    refused (``.resolve_neg()`` would write into a copy). The retain tensors' version counters
    are bumped, as any in-place op does. Errors are raised before anything is written.

    Example:
        >>> import torch, sago_kernels as sk
        >>> r = [torch.tensor([1.0, -2.0]), torch.tensor([3.0])]
        >>> f = [torch.tensor([-1.0, -1.0]), torch.tensor([0.5])]
        >>> [g.tolist() for g in sk.combine_grads_(r, f, method="sago", backend="reference")]
        [[1.0, -1.0], [0.5]]
    """
    retain_grads, forget_grads = list(retain_grads), list(forget_grads)
    if get_method(method).needs_state:
        raise ValueError(
            f"combine_grads_ keeps no state across calls, and method {method!r} needs one (the "
            "moving average of g_r): use sk.combine_ on flat buffers with `state=`, or "
            "sk.GradientSynthesizer, which holds it."
        )
    check_scalar("alpha", alpha)
    check_scalar("gamma", gamma)
    check_scalar("eps", eps, non_negative=True)
    if not retain_grads or len(retain_grads) != len(forget_grads):
        raise ValueError(
            "Parameters `retain_grads` and `forget_grads` should be non-empty lists of equal "
            "length. "
            f"Found lengths {len(retain_grads)} and {len(forget_grads)}."
        )
    for i, (r, f) in enumerate(zip(retain_grads, forget_grads)):
        if not isinstance(r, torch.Tensor) or not isinstance(f, torch.Tensor):
            raise TypeError(
                f"Gradient {i} should be a pair of tensors. "
                f"Found {type(r).__name__}, {type(f).__name__}."
            )
        check_dense(f"retain_grads[{i}]", r)
        check_dense(f"forget_grads[{i}]", f)
        if r.shape != f.shape:
            raise ValueError(
                f"Gradient {i} should have one shape in both lists. "
                f"Found {tuple(r.shape)} and {tuple(f.shape)}."
            )
        for t in (r, f):
            if t.dtype != retain_grads[0].dtype or t.device != retain_grads[0].device:
                raise TypeError(
                    f"All gradients should share one dtype and device. Found gradient {i} with "
                    f"{t.dtype} on {t.device}, gradient 0 with {retain_grads[0].dtype} on "
                    f"{retain_grads[0].device}."
                )
    check_grad_lists(retain_grads, forget_grads)
    kwargs = dict(
        method=method, alpha=alpha, gamma=gamma, eps=eps, stats=stats, backend=backend,
        process_group=process_group,
    )  # fmt: skip
    numels = tuple(t.numel() for t in retain_grads)

    spans = _flat_span(retain_grads), _flat_span(forget_grads)
    if spans[0] is not None and spans[1] is not None and spans[0][1] == spans[1][1]:
        (r_flat, offsets), (f_flat, _) = spans
        if r_flat.numel() == f_flat.numel():
            layout = _view_layout(offsets, numels, r_flat.numel())
            result = combine_(r_flat, f_flat, layout=layout, **kwargs)
            mark_written(retain_grads)  # the flat view has a version counter of its own
            return (retain_grads, result[1]) if stats else retain_grads

    # Padded starts (the default alignment), not a plain concatenation: unaligned starts would
    # select the kernels' scalar-load variant (no 16-byte vectors, ~2x the registers on sm_90).
    layout = GradLayout.from_sizes(numels)
    first = retain_grads[0]
    # uninitialised: padding is never read, so zero-filling would be one more pass over 2·N
    r_flat = torch.empty(layout.numel, dtype=first.dtype, device=first.device)
    f_flat = torch.empty(layout.numel, dtype=first.dtype, device=first.device)
    r_views, f_views = layout.segment_views(r_flat), layout.segment_views(f_flat)
    torch._foreach_copy_(r_views, [t.reshape(-1) for t in retain_grads])
    torch._foreach_copy_(f_views, [t.reshape(-1) for t in forget_grads])
    result = combine_(r_flat, f_flat, layout=layout, **kwargs)
    torch._foreach_copy_(retain_grads, [v.view(t.shape) for t, v in zip(retain_grads, r_views)])
    mark_written(retain_grads)
    return (retain_grads, result[1]) if stats else retain_grads
