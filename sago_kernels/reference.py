"""The reference combine: plain torch, one function per method, to be read next to the paper.

``r`` is the retain gradient g_r, ``f`` the forget gradient g_f, ``alpha`` the retain weight (α)
and ``gamma`` the forget weight (γ), as in the README's Contract and Section 3 of the paper
(arXiv:2604.14808). Every function takes 1-D tensors already in the compute dtype and returns
g_final in that dtype. This module defines the truth that the other backends are fuzzed against,
and it is the CPU backend wherever the native library is not built.

Nothing here synchronises with the host: every data-dependent choice is a ``torch.where``. Dot
products are summed in a fixed order (``dots.fixed_order_dots``), so the results are the same
bits for any ``torch.get_num_threads()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dots import Dots, fixed_order_dots, segment_dots
from .gru import EMAParams
from .gru import coefficients as gru_coefficients
from .layout import GradLayout
from .weightings import coefficients as weighting_coefficients

__all__ = [
    "Dots", "blur", "combine", "conflict_mask", "fixed_order_dots", "gru", "pcgrad",
    "poison_non_finite", "sago", "sago_prefer_retain", "segment_dots", "sum_", "write_segments",
]  # fmt: skip

# --------------------------------------------------------------------------- element helpers


def _magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """The bits of ``x`` without its sign, as a signed integer tensor of the same width."""
    int_dtype = {torch.float64: torch.int64, torch.float32: torch.int32}[x.dtype]
    bits = x.view(int_dtype)
    return bits & torch.iinfo(int_dtype).max


def conflict_mask(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """conflict_i ⇔ f_i and r_i are both non-zero and of opposite sign (README, Contract).

    Decided on sign bits and magnitude bits, never on the product f_i·r_i (which underflows to 0
    for tiny values) nor on float comparisons (which a flush-denormals mode would change).
    ±0 is never in conflict. NaN elements are decided arbitrarily here and overridden by
    :func:`poison_non_finite`.
    """
    nonzero = (_magnitude_bits(f) != 0) & (_magnitude_bits(r) != 0)
    return nonzero & (torch.signbit(f) != torch.signbit(r))


def poison_non_finite(out: torch.Tensor, f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Element-wise methods: an element whose f_i or r_i is NaN or ±Inf becomes NaN."""
    finite = torch.isfinite(f) & torch.isfinite(r)
    return torch.where(finite, out, torch.full_like(out, float("nan")))


# --------------------------------------------------------------------------- the methods


def sum_(
    r: torch.Tensor, f: torch.Tensor, *, alpha: float, gamma: float, eps: float
) -> torch.Tensor:
    """GradDiff, the naive sum: g = γ·g_f + α·g_r."""
    return gamma * f + alpha * r


def sago(
    r: torch.Tensor, f: torch.Tensor, *, alpha: float, gamma: float, eps: float
) -> torch.Tensor:
    """SAGO (paper Sec. 3.4): where the signs conflict keep α·g_r, elsewhere take γ·g_f.

    The gated parts γ·g̃_f and α·g̃_r have disjoint support, so g·g_r ≥ 0 element by element.
    """
    out = torch.where(conflict_mask(f, r), alpha * r, gamma * f)
    return poison_non_finite(out, f, r)


def sago_prefer_retain(
    r: torch.Tensor, f: torch.Tensor, *, alpha: float, gamma: float, eps: float
) -> torch.Tensor:
    """SAGO variant: keep α·g_r where the signs conflict, γ·g_f + α·g_r elsewhere."""
    out = torch.where(conflict_mask(f, r), alpha * r, gamma * f + alpha * r)
    return poison_non_finite(out, f, r)


def pcgrad(
    r: torch.Tensor,
    f: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    eps: float,
    dots: Dots | None = None,
) -> torch.Tensor:
    """PCGrad on one segment (paper Sec. 3.3): project g_f off g_r when they conflict.

    d = g_f·g_r, n = g_r·g_r; c = d/(n+eps) if d < 0 else 0; g = γ·(g_f − c·g_r) + α·g_r.
    A segment whose dots (all three, see :func:`segment_dots`) or effective weight on g_r
    (α − γ·c) are non-finite is returned as NaN in full, so that an overflow check sees it.
    ``dots``: the whole segment's, when ``r`` and ``f`` are one rank's shard of it.
    """
    d, n, m = dots if dots is not None else segment_dots(r, f)
    c = torch.where(d < 0, d / (n + eps), torch.zeros_like(d))
    out = gamma * (f - c * r) + alpha * r
    return _nan_unless_finite(out, d, n, m, alpha - gamma * c)


def blur(
    r: torch.Tensor,
    f: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    eps: float,
    dots: Dots | None = None,
) -> torch.Tensor:
    """BLUR-style projection (global): always remove g_r's component along g_f.

    d = g_r·g_f, m = g_f·g_f, c = d/(m+eps); g = γ·g_f + α·(g_r − c·g_f).
    Non-finite dots (all three, see :func:`segment_dots`) or effective weight on g_f (γ − α·c)
    make the whole output NaN. ``dots`` as for :func:`pcgrad`.
    """
    d, n, m = dots if dots is not None else segment_dots(r, f)
    c = d / (m + eps)
    out = gamma * f + alpha * (r - c * f)
    return _nan_unless_finite(out, d, n, m, gamma - alpha * c)


def gru(
    r: torch.Tensor,
    f: torch.Tensor,
    m: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    eps: float,
    beta: float,
    retain_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU on one segment (arXiv 2503.09117; ``gru.py``): ``(g_final, new state)``.

    m' = β·r + (1 − β)·m, the moving average of g_r; d = f·m', n = m'·m';
    c = d/(n+eps) if d < 0 else 0; g = γ·(f − c·m') + κ·α·r (κ = ``retain_coef``). Where the
    dots (f·m', m'·m', f·f) or the weights are not finite, g is NaN and the state stays ``m``.
    """
    m_new = beta * r + (1.0 - beta) * m
    d, n, ff = fixed_order_dots([f, m_new], [(0, 1), (1, 1), (0, 0)]).unbind()
    c = torch.where(d < 0, d / (n + eps), torch.zeros_like(d))
    out = gamma * (f - c * m_new) + (retain_coef * alpha) * r
    ok = torch.stack([torch.isfinite(x) for x in (d, n, ff, gamma * c)]).all()
    return torch.where(ok, out, torch.full_like(out, float("nan"))), torch.where(ok, m_new, m)


def _nan_unless_finite(out: torch.Tensor, *scalars: torch.Tensor) -> torch.Tensor:
    ok = torch.stack([torch.isfinite(s) for s in scalars]).all()
    return torch.where(ok, out, torch.full_like(out, float("nan")))


MethodFn = Callable[..., torch.Tensor]

# --------------------------------------------------------------------------- over a layout

STAT_COLUMNS = ("dot_fr", "dot_rr", "dot_ff", "dot_oo", "dot_or", "dot_of")
"""Per-segment sums every backend produces for the statistics (see ``stats.py``)."""
_STAT_PAIRS = ((0, 1), (1, 1), (0, 0), (2, 2), (2, 1), (2, 0))  # of (f, r, o), STAT_COLUMNS order


def combine(
    retain: torch.Tensor,
    forget: torch.Tensor,
    layout: GradLayout,
    method_fn: MethodFn,
    scope: str,
    *,
    alpha: float,
    gamma: float,
    eps: float,
    compute_dtype: torch.dtype = torch.float32,
    with_sums: bool = True,
    reduce: Callable[[torch.Tensor], None] | None = None,
    weighting: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ema: EMAParams | None = None,
    state: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Apply ``method_fn`` over the segments of a layout.

    ``scope`` says what one call of ``method_fn`` sees: ``"element"`` or ``"segment"`` — each
    segment on its own; ``"global"`` — all segments concatenated into one vector.

    ``reduce`` (sharded gradients; see ``sharding.py``): the buffers hold this rank's shard of
    every segment; ``reduce`` sums a tensor over the ranks in place. Projection methods then use
    the whole segments' dots (this rank's dots, reduced), and the returned sums and conflict
    counts are this rank's own (the caller reduces them).

    ``ema`` and ``state`` (GRU methods, ``gru.py``): the moving average's parameters and its
    buffer (the gradients' dtype and length), updated in place: m' rounded once into the
    segments whose g_final is finite.

    ``inv_scale`` (a loss scaler's 1/scale, one element): r and f are multiplied by it as they
    are read, before anything else. ``found_inf``: passed to the O(segments) step of a stateful
    method (a weighting, GRU), which then keeps its state when the step has a non-finite value
    (the caller sets it from the returned sums for every method).

    Returns ``(out, sums, conflicts)``: ``out`` is g_final in ``compute_dtype`` over the whole
    buffer (elements outside every segment are 0 and must not be copied back), ``sums`` is
    ``[num_segments, 6]`` with :data:`STAT_COLUMNS` (o = g_final before rounding) and
    ``conflicts`` the per-segment count of conflicting elements (int64); both ``None`` when
    ``with_sums`` is false (no pass over the buffers for statistics nobody asked for).
    """
    r_all = retain.to(compute_dtype)
    f_all = forget.to(compute_dtype)
    if inv_scale is not None:
        scale = inv_scale.reshape(()).to(compute_dtype)
        r_all, f_all = r_all * scale, f_all * scale
    out = torch.zeros_like(r_all)
    segments = layout.segments
    kwargs = dict(alpha=alpha, gamma=gamma, eps=eps)

    if weighting is not None:  # a Gramian weighting: every segment's dots, one weighting call
        _weighted(r_all, f_all, out, layout, weighting, scope, alpha, gamma, reduce, found_inf)
        return _with_sums(r_all, f_all, out, layout, with_sums)
    if ema is not None:
        _gru(r_all, f_all, state, out, layout, ema, scope, alpha, gamma, eps, reduce, found_inf)
        return _with_sums(r_all, f_all, out, layout, with_sums)

    seg_dots = None
    if reduce is not None and scope != "element":
        seg_dots = _dots_table(r_all, f_all, layout, reduce)
    if scope == "global":
        r = torch.cat([r_all[s.start : s.end] for s in segments])
        f = torch.cat([f_all[s.start : s.end] for s in segments])
        if seg_dots is not None:
            kwargs["dots"] = tuple(seg_dots.sum(0).unbind())
        o = method_fn(r, f, **kwargs)
        cursor = 0
        for s in segments:
            out[s.start : s.end] = o[cursor : cursor + s.numel]
            cursor += s.numel
    else:
        for j, s in enumerate(segments):
            if seg_dots is not None:
                kwargs["dots"] = tuple(seg_dots[j].unbind())
            out[s.start : s.end] = method_fn(
                r_all[s.start : s.end], f_all[s.start : s.end], **kwargs
            )

    return _with_sums(r_all, f_all, out, layout, with_sums)


def _weighted(r_all, f_all, out, layout, weighting, scope, alpha, gamma, reduce, found_inf):
    """a_j·f + b_j·r per segment, the (a_j, b_j) from one call of ``weighting`` on all the
    segments' Gramians (as the kernels do: a stateful weighting sees one batch per combine)."""
    dots = _dots_table(r_all, f_all, layout, reduce)
    coef = weighting_coefficients(
        dots, weighting, alpha, gamma, whole=scope == "global", found_inf=found_inf
    )
    for j, s in enumerate(layout.segments):
        a, b = coef[j].unbind()
        out[s.start : s.end] = a * f_all[s.start : s.end] + b * r_all[s.start : s.end]


def _gru(r_all, f_all, state, out, layout, ema, scope, alpha, gamma, eps, reduce, found_inf):
    """GRU over a layout, with the O(segments) step the kernels use (``gru.coefficients``):
    every segment's dots of (f, r, m'), then a·f + b·r + c·m', and m' into ``state``."""
    if state is None:
        raise ValueError("A GRU combine needs its state buffer (`state=`).")
    m_all = state.to(r_all.dtype, copy=True)
    rows = []
    for s in layout.segments:
        r, f = r_all[s.start : s.end], f_all[s.start : s.end]
        m_all[s.start : s.end] = ema.beta * r + ema.keep * m_all[s.start : s.end]
        rows.append(fixed_order_dots([f, r, m_all[s.start : s.end]], _GRU_PAIRS))
    dots = torch.stack(rows) if rows else r_all.new_zeros((0, len(_GRU_PAIRS)))
    if reduce is not None:
        reduce(dots)
    coef = gru_coefficients(
        dots, alpha, gamma, eps, ema.retain_coef, whole=scope == "global", found_inf=found_inf
    )
    for j, s in enumerate(layout.segments):
        a, b, c = coef[j].to(r_all.dtype).unbind()
        r, f, m = r_all[s.start : s.end], f_all[s.start : s.end], m_all[s.start : s.end]
        out[s.start : s.end] = a * f + b * r + c * m
        written = torch.where(torch.isnan(c), state[s.start : s.end], m.to(state.dtype))
        state[s.start : s.end] = written


_GRU_PAIRS = ((0, 1), (1, 1), (0, 0), (0, 2), (2, 2))  # of (f, r, m'): gru.NUM_DOTS's order


def _dots_table(r_all, f_all, layout, reduce) -> torch.Tensor:
    """``[S, 3]``: every segment's :func:`segment_dots`, summed over the ranks with ``reduce``."""
    rows = [segment_dots(r_all[s.start : s.end], f_all[s.start : s.end]) for s in layout.segments]
    dots = torch.stack([torch.stack(row) for row in rows]) if rows else r_all.new_zeros((0, 3))
    if reduce is not None:
        reduce(dots)
    return dots


def _with_sums(r_all, f_all, out, layout, with_sums):
    """``(out, sums, conflicts)`` as :func:`combine` returns them."""
    if not with_sums:
        return out, None, None
    rows, conflicts = [], []
    for s in layout.segments:
        r, f, o = r_all[s.start : s.end], f_all[s.start : s.end], out[s.start : s.end]
        rows.append(fixed_order_dots([f, r, o], _STAT_PAIRS))
        conflicts.append(conflict_mask(f, r).sum())
    return out, torch.stack(rows), torch.stack(conflicts)


def write_segments(target: torch.Tensor, values: torch.Tensor, layout: GradLayout) -> None:
    """Round ``values`` once into ``target``, segment by segment (padding is never written)."""
    for s in layout.segments:
        target[s.start : s.end].copy_(values[s.start : s.end])
