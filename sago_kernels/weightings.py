"""Methods defined by a weighting of each segment's 2×2 Gramian: any two-task aggregator, fused.

For two tasks, every Gramian-based aggregator of multi-task learning (UPGrad, MGDA, IMTL-G, ...)
returns w_0·u + w_1·v for the rows u = γ·f and v = α·r, with weights that depend only on the
Gramian G = [[u·u, u·v], [u·v, v·v]]. Such a method therefore costs exactly what PCGrad costs: one
pass summing the segments' dots (f·r, r·r, f·f), an O(segments) step that turns each segment's
G into weights, and one pass writing a·f + b·r with a = γ·w_0, b = α·w_1. The passes are the
backends' own; this module is the O(segments) step, written once in torch so that every backend
and device runs the same weights, batched over all segments, with no host synchronisation.

A weighting is a function ``[S, 2, 2] -> [S, 2]`` on device tensors (float64 where the device has
it). Row 0 is the forget row γ·f, row 1 the retain row α·r, as in the Jacobian ``[γ·f; α·r]``
that TorchJD's aggregators take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .dots import segment_dots

Weighting = Callable[[torch.Tensor], torch.Tensor]
"""``gramians [S, 2, 2] -> weights [S, 2]``: batched, on the gramians' device, no host sync."""


def weight_dtype(device: torch.device) -> torch.dtype:
    """float64 for the O(segments) step where the device has it (closed forms subtract nearly
    equal Gramian entries for nearly parallel rows), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def gramians(dots: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """``[S, 3]`` dots (f·r, r·r, f·f) -> ``[S, 2, 2]`` Gramians of the rows (γ·f, α·r).

    The off-diagonal entry is clamped to ±√(u·u · v·v) (Cauchy–Schwarz): float32 dots can break
    it by rounding, and by underflow (f·f = 0 while f·r is not), which would hand a weighting a
    Gramian no pair of vectors has."""
    d = dots.to(weight_dtype(dots.device))
    fr, rr, ff = d.unbind(-1)
    uu, vv = gamma * gamma * ff, alpha * alpha * rr
    bound = torch.sqrt((uu * vv).clamp_min(0))
    uv = torch.maximum(torch.minimum(gamma * alpha * fr, bound), -bound)
    return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2)


def coefficients(
    dots: torch.Tensor,
    weighting: Weighting,
    alpha: float,
    gamma: float,
    whole: bool,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[S, 2]`` (a, b) with g_final = a·f + b·r in each segment, in the dots' dtype.

    ``dots``: ``[S, 3]`` per-segment (f·r, r·r, f·f): float32 from the backends (float64 in the
    tests' oracle). ``whole``: one set of weights from the dots of all segments together (a
    global method), broadcast to every segment. A segment whose three dots or whose weights are
    not all finite gets NaN weights: the write pass then makes it NaN in full, as for the other
    projection methods (README, Contract). ``weighting`` is called once, on all segments.

    ``found_inf`` (a loss scaler's flag, one element): set to 1 when a segment's r·r or f·f is
    not finite; once it is set (by this call or an earlier one of the step), every segment's
    dots are taken as NaN, so the step's weights are NaN and a stateful weighting (GradVac)
    keeps its state: the scaler skips the step, which must leave no trace.
    """
    s = dots.shape[0]
    d = dots
    if found_inf is not None:
        d = skip_if_non_finite(d, found_inf)
    if whole:
        d = d.sum(0, keepdim=True)
    weights = weighting(gramians(d, alpha, gamma))
    if weights.shape != (d.shape[0], 2):
        raise ValueError(
            f"A weighting should map gramians of shape {tuple(d.shape[:1]) + (2, 2)} to weights "
            f"of shape {(d.shape[0], 2)}. Found weights of shape {tuple(weights.shape)}."
        )
    scale = torch.tensor([gamma, alpha], dtype=weights.dtype, device=weights.device)
    coef = (weights * scale).to(d.dtype)
    ok = torch.isfinite(d).all(-1, keepdim=True) & torch.isfinite(coef).all(-1, keepdim=True)
    coef = torch.where(ok, coef, torch.full_like(coef, float("nan")))
    return coef.expand(s, 2).contiguous() if whole else coef


def skip_if_non_finite(dots: torch.Tensor, found_inf: torch.Tensor) -> torch.Tensor:
    """``dots`` (``[S, k]``, columns 1 and 2 the segments' r·r and f·f), or all NaN when a norm
    is not finite here or ``found_inf`` was set before; ``found_inf`` updated in place (no host
    sync). What a stateful method's O(segments) step does with a loss scaler's flag."""
    bad = (~torch.isfinite(dots[:, 1:3])).any() | (found_inf.reshape(()) != 0)
    torch.maximum(found_inf, bad.to(found_inf.dtype).reshape(found_inf.shape), out=found_inf)
    return torch.where(bad, torch.full_like(dots, float("nan")), dots)


def affine_segment(
    r: torch.Tensor,
    f: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    eps: float,
    weighting: Weighting,
    dots: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """A weighting method on one segment (its :attr:`Method.reference`): its dots in a fixed
    order, the weights, then a·f + b·r, in the compute dtype. The reference backend itself calls
    the weighting once for all segments (``reference.combine(..., weighting=)``), as the kernels
    do, which only matters to a weighting with state."""
    d = torch.stack(dots if dots is not None else segment_dots(r, f)).to(r.dtype)
    a, b = coefficients(d[None], weighting, alpha, gamma, whole=False)[0].unbind()
    return a * f + b * r


def torchjd_weighting(weighting: Callable[[torch.Tensor], torch.Tensor]) -> Weighting:
    """A TorchJD ``Weighting`` (e.g. ``torchjd.aggregation.UPGradWeighting()``), as it is, applied
    to each segment's 2×2 Gramian: any of TorchJD's weightings through the fused passes.

    It calls ``weighting`` once per segment (a Python loop), and synchronises with the host
    whenever the TorchJD weighting does (its quadratic-programming solvers run on the CPU), so it
    suits a handful of segments (``granularity="global"`` or ``"module"``) or checking; the
    built-in methods compute the same weights batched on the device. A stateful weighting sees
    the segments one after the other, as if each were a step.

    Example:
        >>> import sago_kernels as sk
        >>> from torchjd.aggregation import UPGradWeighting  # doctest: +SKIP
        >>> upgrad = sk.weighting_method(sk.torchjd_weighting(UPGradWeighting()))  # doctest: +SKIP
    """
    if not callable(weighting):
        raise TypeError(
            "Parameter `weighting` should be a TorchJD Weighting (a callable from a Gramian to "
            f"weights). Found `{type(weighting).__name__}`."
        )

    def per_segment(gramians: torch.Tensor) -> torch.Tensor:
        if gramians.shape[0] == 0:
            return gramians.new_zeros((0, 2))
        return torch.stack([weighting(g).to(gramians) for g in gramians])

    per_segment.__name__ = f"torchjd_{type(weighting).__name__}"
    return per_segment


# --------------------------------------------------------------------------- built-in weightings
#
# Closed forms for two rows u = γ·f (row 0) and v = α·r (row 1), with G = [[a, b], [b, c]],
# a = u·u, b = u·v, c = v·v, written to give, for two tasks, what TorchJD's aggregators of the
# same name give (weights in float64, batched, branch-free: no host sync). Where TorchJD's answer
# depends on its solver's rounding or on its pseudo-inverse's cut-off, the closed form gives the
# exact-arithmetic value instead; the README lists those places. Every function returns finite
# weights for a finite G (degenerate cases have one stated rule each).

_EPS32 = torch.finfo(torch.float32).eps
"""Rank decisions use float32's epsilon: the dots come from float32 sums."""


def _check_real(name: str, value: object, *, high: float | None = None) -> float:
    """A weighting's parameter: a finite Python real >= 0 (and <= ``high``), as a float. Checked
    when the weighting is made, as the constructors of ``EMAParams`` and ``GradVac`` check theirs:
    a NaN threshold would silently turn every comparison false (``upgrad(reg_eps=nan)`` wrote
    g_final = 0 everywhere), a negative cap would silently mean "no cap"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Parameter `{name}` should be a finite Python float >= 0. Found "
            f"`type({name}) = {type(value).__name__}`."
        )
    bound = f"in [0, {high:g}]" if high is not None else ">= 0"
    if not (math.isfinite(value) and value >= 0 and (high is None or value <= high)):
        raise ValueError(
            f"Parameter `{name}` should be {bound} and finite. Found `{name} = {value}`."
        )
    return float(value)


def _check_pref(pref: object) -> tuple[float, float]:
    """A preference over the two rows (forget, retain): two finite weights >= 0, not both 0 (the
    combination would be 0 everywhere)."""
    if isinstance(pref, (str, bytes)) or not hasattr(pref, "__len__") or len(pref) != 2:
        raise ValueError(
            "Parameter `pref` should be two weights (forget row, retain row), e.g. (0.5, 0.5). "
            f"Found `pref = {pref!r}`."
        )
    w = tuple(_check_real(f"pref[{i}]", v) for i, v in enumerate(pref))
    if w[0] + w[1] == 0:
        raise ValueError(
            "Parameter `pref` should give some weight to a row: (0, 0) would make g_final 0 "
            f"everywhere. Found `pref = {pref!r}`."
        )
    return w


def _entries(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return g[..., 0, 0], g[..., 0, 1], g[..., 1, 1]


def _pair(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    return torch.stack([w0, w1], dim=-1)


def _safe(den: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``den`` where ``ok``, else 1: a division whose result ``torch.where`` then discards."""
    return torch.where(ok, den, torch.ones_like(den))


def _eigenvalues(a, b, c):
    """(λ_max, λ_min) of [[a, b], [b, c]]; λ_min as det/λ_max (no cancellation)."""
    lmax = 0.5 * (a + c + torch.sqrt((a - c) ** 2 + 4 * b * b))
    lmin = torch.where(lmax > 0, (a * c - b * b) / _safe(lmax, lmax > 0), torch.zeros_like(a))
    return lmax, lmin.clamp_min(0)


def _regularised(g, norm_eps, reg_eps):
    """TorchJD's dual-cone projector's G/tr(G) + reg_eps·I (and reg_eps·I when tr < norm_eps)."""
    a, b, c = _entries(g)
    tr = a + c
    big = tr >= norm_eps
    zero = torch.zeros_like(tr)
    t = _safe(tr, big)
    return (
        torch.where(big, a / t, zero) + reg_eps,
        torch.where(big, b / t, zero),
        torch.where(big, c / t, zero) + reg_eps,
    )


def _project_box(p, q, r, s0, s1):
    """argmin_w wᵀPw subject to w ≥ s, P = [[p, q], [q, r]] positive definite: the dual form of
    projecting sᵀJ onto the dual cone of the rows (TorchJD's projector); the solution is one of
    four active sets, tried in order."""
    free = (p * s0 + q * s1 >= 0) & (q * s0 + r * s1 >= 0)  # s itself
    w1_first = -q * s0 / r  # w0 = s0 bound, w1 free
    first = (w1_first >= s1) & (s0 >= 0)
    w0_second = -q * s1 / p  # w1 = s1 bound, w0 free
    second = (w0_second >= s0) & (s1 >= 0)
    zero = torch.zeros_like(p)
    w0 = torch.where(free | first, s0, torch.where(second, w0_second, zero))
    w1 = torch.where(free, s1, torch.where(first, w1_first, torch.where(second, s1, zero)))
    return w0, w1


def upgrad(
    pref: tuple[float, float] = (0.5, 0.5), norm_eps: float = 1e-4, reg_eps: float = 1e-4
) -> Weighting:
    """UPGrad: each row projected onto the dual cone {x : u·x ≥ 0, v·x ≥ 0}, combined with
    ``pref``. For two rows, w = ½(1 + b⁻/(a + ε·tr), 1 + b⁻/(c + ε·tr)) with b⁻ = max(−b, 0) and
    ε = reg_eps (PCGrad's weights halved, regularised); the mean when tr(G) < norm_eps."""
    pref = _check_pref(pref)
    norm_eps, reg_eps = _check_real("norm_eps", norm_eps), _check_real("reg_eps", reg_eps)

    def weights(g: torch.Tensor) -> torch.Tensor:
        p, q, r = _regularised(g, norm_eps, reg_eps)
        zero = torch.zeros_like(p)
        a0, a1 = _project_box(p, q, r, torch.full_like(p, pref[0]), zero)
        b0, b1 = _project_box(p, q, r, zero, torch.full_like(p, pref[1]))
        return _pair(a0 + b0, a1 + b1)

    return weights


def dualproj(
    pref: tuple[float, float] = (0.5, 0.5), norm_eps: float = 1e-4, reg_eps: float = 1e-4
) -> Weighting:
    """DualProj: the ``pref``-weighted combination projected onto the dual cone of the rows
    (one projection, where UPGrad projects each row)."""
    pref = _check_pref(pref)
    norm_eps, reg_eps = _check_real("norm_eps", norm_eps), _check_real("reg_eps", reg_eps)

    def weights(g: torch.Tensor) -> torch.Tensor:
        p, q, r = _regularised(g, norm_eps, reg_eps)
        s0, s1 = torch.full_like(p, pref[0]), torch.full_like(p, pref[1])
        return _pair(*_project_box(p, q, r, s0, s1))

    return weights


def mgda() -> Weighting:
    """MGDA: the minimum-norm point of the segment [u, v]: w = (t, 1 − t),
    t = clamp((c − b)/(a + c − 2b), 0, 1); (1, 0) when u = v."""

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        den = a + c - 2 * b  # |u − v|²
        t = torch.where(den > 0, ((c - b) / _safe(den, den > 0)).clamp(0, 1), torch.ones_like(a))
        return _pair(t, 1 - t)

    return weights


def imtl_g() -> Weighting:
    """IMTL-G: the combination whose projections on û and v̂ are equal: w = (|v|, |u|)/(|u| + |v|)
    for independent rows; for (numerically) parallel rows w = G·d/(1ᵀG·d) with d = (|u|, |v|),
    TorchJD's pseudo-inverse answer; 0 for zero rows and where that answer's normaliser
    |1ᵀG⁺d| is below 1e-12."""

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        nu, nv = a.clamp_min(0).sqrt(), c.clamp_min(0).sqrt()
        lmax, lmin = _eigenvalues(a, b, c)
        rank2 = lmin > 2 * _EPS32 * lmax
        rank1 = ~rank2 & (lmax > 0)
        total2 = (nu + nv) / _safe(nu * nv + b, rank2)  # 1ᵀG⁻¹d
        w2 = _pair(nv, nu) / _safe(nu + nv, rank2)[..., None]
        gd0, gd1 = a * nu + b * nv, b * nu + c * nv
        total1 = (gd0 + gd1) / _safe(lmax * lmax, rank1)  # 1ᵀG⁺d, G⁺ = G/λ_max²
        w1 = _pair(gd0, gd1) / _safe(gd0 + gd1, rank1 & (gd0 + gd1 != 0))[..., None]
        total = torch.where(rank2, total2, torch.where(rank1, total1, torch.zeros_like(a)))
        w = torch.where(rank2[..., None], w2, w1)
        return torch.where((total.abs() < 1e-12)[..., None], torch.zeros_like(w), w)

    return weights


def aligned_mtl(pref: tuple[float, float] = (0.5, 0.5), scale_mode: str = "min") -> Weighting:
    """Aligned-MTL: the rows made orthonormal (G^(−1/2)·J), combined with ``pref`` and scaled by
    √λ_min (``"min"``, also ``"median"``: the lower of two) or √(mean λ) (``"rmse"``); for
    (numerically) rank-one G, w = G·pref/λ_max; ``pref`` for G = 0."""
    pref = _check_pref(pref)
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(
            "Parameter `scale_mode` should be 'min', 'median' or 'rmse'. "
            f"Found `scale_mode = {scale_mode!r}`."
        )

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        p0, p1 = torch.full_like(a, pref[0]), torch.full_like(a, pref[1])
        lmax, lmin = _eigenvalues(a, b, c)
        tol = 2 * _EPS32 * lmax
        rank2 = (lmax > tol) & (lmin > tol)
        rank1 = (lmax > tol) & ~rank2
        l1, l2 = _safe(lmax, rank2), _safe(lmin, rank2)
        s = torch.sqrt(l1 * l2)  # √det; G^(−1/2) = adj(G + sI)/(s·(√λ1 + √λ2))
        roots = torch.sqrt(l1) + torch.sqrt(l2)
        if scale_mode == "rmse":
            factor = torch.sqrt(0.5 * (l1 + l2)) / (s * roots)
        else:
            factor = 1 / (torch.sqrt(l1) * roots)
        w2 = _pair(factor * ((c + s) * p0 - b * p1), factor * ((a + s) * p1 - b * p0))
        lm = _safe(lmax, rank1)
        w1 = _pair((a * p0 + b * p1) / lm, (b * p0 + c * p1) / lm)
        return torch.where(rank2[..., None], w2, torch.where(rank1[..., None], w1, _pair(p0, p1)))

    return weights


def cagrad(c: float = 0.5, norm_eps: float = 1e-4) -> Weighting:
    """CAGrad(c): the mean g₀ = (u + v)/2 moved towards the worst row within a ball of radius
    c·|g₀|: w = ½ + c·|g₀|·(t, 1 − t)/|g_w|, where (t, 1 − t) minimises g₀·g_w + c·|g₀|·|g_w|
    over the simplex (g_w = t·u + (1 − t)·v; solved in closed form on G/tr(G); t = ½ where every
    t does: u = v, or |u| = |v| with c·|g₀| = 0); 0 when tr(G) < norm_eps or |g_w| < norm_eps."""
    c, norm_eps = _check_real("c", c), _check_real("norm_eps", norm_eps)

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, cc = _entries(g)
        tr = a + cc
        big = tr >= norm_eps
        zero, one = torch.zeros_like(a), torch.ones_like(a)
        t_ = _safe(tr, big)
        a, b, cc = (torch.where(big, x / t_, zero) for x in (a, b, cc))
        q2 = a - 2 * b + cc  # |u − v|²
        q1 = b - cc
        det = (a * cc - b * b).clamp_min(0)
        phi = c * torch.sqrt(((a + 2 * b + cc) / 4).clamp_min(0))  # c·|g₀|
        slope = (a - cc) / 2  # g₀·(u − v)
        disc = phi * phi * q2 - slope * slope
        inner = (disc > 0) & (q2 > 0)
        s = -slope * torch.sqrt(det / _safe(disc, inner))
        t_inner = ((s - q1) / _safe(q2, inner)).clamp(0, 1)
        t_edge = torch.where(slope > 0, zero, torch.where(slope < 0, one, 0.5 * one))
        t = torch.where(inner, t_inner, t_edge)
        gw = torch.sqrt((t * t * a + 2 * t * (1 - t) * b + (1 - t) * (1 - t) * cc).clamp_min(0))
        ok = big & (gw >= norm_eps)
        k = phi / _safe(gw, ok)
        return _pair(torch.where(ok, 0.5 + k * t, zero), torch.where(ok, 0.5 + k * (1 - t), zero))

    return weights


def nash_mtl(max_norm: float = 1.0) -> Weighting:
    """Nash-MTL: the Nash bargaining solution Gw = 1/w, for two rows w = (1/|u|, 1/|v|)/√(1 + cos)
    (the combination (û + v̂)/√(1 + cos)), then scaled down to norm ``max_norm`` when longer
    (0: no limit). Where it does not exist (a zero row, opposite rows) w = (1, 1), TorchJD's
    starting point, scaled likewise."""
    max_norm = _check_real("max_norm", max_norm)

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        nu, nv = a.clamp_min(0).sqrt(), c.clamp_min(0).sqrt()
        exists = (nu > 0) & (nv > 0) & (nu * nv + b > 0)
        k = torch.sqrt(nu * nv / _safe(nu * nv + b, exists))  # 1/√(1 + cos)
        one = torch.ones_like(a)
        w0 = torch.where(exists, k / _safe(nu, exists), one)
        w1 = torch.where(exists, k / _safe(nv, exists), one)
        if max_norm > 0:
            norm = torch.sqrt((w0 * w0 * a + 2 * w0 * w1 * b + w1 * w1 * c).clamp_min(0))
            scale = torch.where(norm > max_norm, max_norm / _safe(norm, norm > 0), one)
            w0, w1 = w0 * scale, w1 * scale
        return _pair(w0, w1)

    return weights


def pcgrad_symmetric() -> Weighting:
    """TorchJD's PCGrad: each row projected off the other where they conflict, then summed:
    w = (1 + b⁻/a, 1 + b⁻/c), b⁻ = max(−b, 0) (w = (1, 1) when b ≥ 0)."""

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        neg = b < 0
        one = torch.ones_like(a)
        w0 = torch.where(neg, 1 - b / _safe(a, neg), one)
        return _pair(w0, torch.where(neg, 1 - b / _safe(c, neg), one))

    return weights


def config(pref: tuple[float, float] = (1.0, 1.0)) -> Weighting:
    """ConFIG: the direction with equal cosine to û and v̂ (for ``pref`` = (1, 1); in general
    the one whose cosines are proportional to ``pref``), with length Σ_i row_i·direction. For the
    default, w = ((|u| + |v|)/2)·(1/|u|, 1/|v|): ((|u| + |v|)/2)·(û + v̂). A zero row gives the
    other row; for opposite rows (1 + cos ≤ 4·eps) the (1, 1) direction is dropped (0 for the
    default ``pref``)."""
    pref = _check_pref(pref)

    def weights(g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        nu, nv = a.clamp_min(0).sqrt(), c.clamp_min(0).sqrt()
        zero = torch.zeros_like(a)
        both = (nu > 0) & (nv > 0)
        cos = torch.where(both, b / _safe(nu * nv, both), zero).clamp(-1, 1)
        plus, minus = 1 + cos, 1 - cos  # eigenvalues of the unit rows' Gramian
        top = torch.maximum(plus, minus)
        keep_plus, keep_minus = plus > 4 * _EPS32 * top, minus > 4 * _EPS32 * top
        cp = torch.where(keep_plus, (pref[0] + pref[1]) / (2 * _safe(plus, keep_plus)), zero)
        cm = torch.where(keep_minus, (pref[0] - pref[1]) / (2 * _safe(minus, keep_minus)), zero)
        # the direction is g0·u + g1·v; a single non-zero row is its own direction
        alone0 = torch.where(nu > 0, pref[0] / _safe(nu, nu > 0), zero)
        alone1 = torch.where(nv > 0, pref[1] / _safe(nv, nv > 0), zero)
        g0 = torch.where(both, (cp + cm) / _safe(nu, both), alone0)
        g1 = torch.where(both, (cp - cm) / _safe(nv, both), alone1)
        length = (a + b) * g0 + (b + c) * g1  # Σ_i row_i·direction, times |direction|
        norm2 = g0 * g0 * a + 2 * g0 * g1 * b + g1 * g1 * c
        f = torch.where(norm2 > 0, length / _safe(norm2, norm2 > 0), zero)
        return _pair(f * g0, f * g1)

    return weights


BUILT_IN: dict[str, tuple[Callable[..., Weighting], str]] = {
    "upgrad": (upgrad, "½(1 + b⁻/(a + ε·tr), 1 + b⁻/(c + ε·tr)); each row onto the dual cone"),
    "dualproj": (dualproj, "the mean projected onto the dual cone of the rows"),
    "mgda": (mgda, "(t, 1 − t), t = clamp((c − b)/(a + c − 2b), 0, 1): min-norm point"),
    "imtl_g": (imtl_g, "(|v|, |u|)/(|u| + |v|): equal projections on û and v̂"),
    "aligned_mtl": (aligned_mtl, "√λ_min·G^(−1/2)·(½, ½): the rows made orthonormal"),
    "cagrad": (cagrad, "½ + c·|g₀|·(t, 1 − t)/|g_w| (c = 0.5): conflict-averse"),
    "nash_mtl": (nash_mtl, "(1/|u|, 1/|v|)/√(1 + cos), capped at norm 1: Nash bargaining"),
    "pcgrad_symmetric": (pcgrad_symmetric, "(1 + b⁻/a, 1 + b⁻/c): both rows projected"),
    "config": (config, "((|u| + |v|)/2)·(1/|u|, 1/|v|): equal cosine to both rows"),
}
"""name -> (factory of the weighting, formula over G = [[a, b], [b, c]] of (u, v) = (γ·f, α·r))."""


class GradVac:
    """Gradient Vaccine as a stateful weighting: per segment, an exponential moving average φ̂ of
    cos(u, v) is the target; where this step's cosine φ falls below it, each row is moved
    towards the other until their cosine is φ̂ (Wang et al., 2021; TorchJD's ``GradVac`` for two
    tasks):

        N = φ̂·√(1 − φ²) − φ·√(1 − φ̂²),
        w = (1 + √c·N/(√a·√(1 − φ̂²) + eps), 1 + √a·N/(√c·√(1 − φ̂²) + eps))  where φ < φ̂,
        w = (1, 1) elsewhere;  then φ̂ ← (1 − beta)·φ̂ + beta·φ.

    Pass one instance as ``method=`` (or to a ``GradientSynthesizer``) and keep it for the run:
    it holds φ̂, one float64 per segment on the gradients' device (zero at the start, so the
    first step is symmetric PCGrad up to eps). Sharded combines reduce the dots before the
    weighting, so every rank holds the same φ̂. A segment whose dots are not finite keeps its φ̂
    (TorchJD's would stay NaN for the rest of the run). Checkpoint with :meth:`state_dict`.
    """

    def __init__(self, beta: float = 0.5, eps: float = 1e-8) -> None:
        self.beta, self.eps = self._checked_params(beta, eps)
        self.phi_hat: torch.Tensor | None = None
        self.__name__ = "gradvac"

    @staticmethod
    def _checked_params(beta: object, eps: object) -> tuple[float, float]:
        return _check_real("beta", beta, high=1.0), _check_real("eps", eps)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        a, b, c = _entries(g)
        if self.phi_hat is None:
            self.phi_hat = torch.zeros_like(a)
        elif self.phi_hat.shape != a.shape:
            raise ValueError(
                f"This GradVac holds the state of {self.phi_hat.shape[0]} segments; the combine "
                f"has {a.shape[0]}. Use one GradVac per layout, or call `reset()`."
            )
        hat = self.phi_hat.to(device=a.device, dtype=a.dtype)
        na, nc = a.clamp_min(0).sqrt(), c.clamp_min(0).sqrt()
        phi = b / (na * nc + self.eps)
        below = phi < hat
        s_phi, s_hat = (1 - phi * phi).clamp_min(0).sqrt(), (1 - hat * hat).clamp_min(0).sqrt()
        n = hat * s_phi - phi * s_hat
        zero = torch.zeros_like(a)
        w0 = 1 + torch.where(below, nc * n / (na * s_hat + self.eps), zero)
        w1 = 1 + torch.where(below, na * n / (nc * s_hat + self.eps), zero)
        finite = torch.isfinite(g).all(-1).all(-1) & torch.isfinite(phi)
        self.phi_hat = torch.where(finite, (1 - self.beta) * hat + self.beta * phi, hat)
        return _pair(w0, w1)

    def reset(self) -> None:
        """Forget φ̂ (the next combine starts from zero, for any number of segments)."""
        self.phi_hat = None

    def state_dict(self) -> dict[str, object]:
        return {"beta": self.beta, "eps": self.eps, "phi_hat": self.phi_hat}

    def load_state_dict(self, state: dict[str, object], segments: int | None = None) -> None:
        """Restore :meth:`state_dict`'s output, checked as the constructor checks ``beta`` and
        ``eps`` and φ̂ as a run leaves it (a 1-D float tensor of cosines: finite, in [−1, 1]),
        with ``segments`` entries when given (the synthesizer passes its layout's), before
        anything is written."""
        if not isinstance(state, Mapping) or set(state) != {"beta", "eps", "phi_hat"}:
            found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                "A GradVac state should be what `GradVac.state_dict()` returns (keys 'beta', "
                f"'eps', 'phi_hat'). Found {found}."
            )
        beta, eps = self._checked_params(state["beta"], state["eps"])
        phi_hat = state["phi_hat"]
        if phi_hat is not None:
            if not isinstance(phi_hat, torch.Tensor) or phi_hat.dim() != 1:
                raise ValueError(
                    "A GradVac state's `phi_hat` should be None or a 1-D tensor (one target "
                    f"cosine per segment). Found {getattr(phi_hat, 'shape', type(phi_hat))}."
                )
            if not phi_hat.is_floating_point():
                raise TypeError(
                    f"A GradVac state's `phi_hat` should be a float tensor. Found {phi_hat.dtype}."
                )
            # cosines; a run's moving average of them may pass ±1 by rounding, never by more
            if not bool((torch.isfinite(phi_hat) & (phi_hat.abs() <= 1 + 1e-6)).all()):
                raise ValueError(
                    "A GradVac state's `phi_hat` should hold cosines: finite and in [−1, 1]. "
                    f"Found {phi_hat.tolist()[:8]}{' ...' if phi_hat.numel() > 8 else ''}."
                )
            if segments is not None and phi_hat.numel() != segments:
                raise ValueError(
                    f"A GradVac state's `phi_hat` should have one entry per segment ({segments} "
                    f"here). Found {phi_hat.numel()}: it was saved on another layout or scope."
                )
        self.beta, self.eps = beta, eps
        self.phi_hat = None if phi_hat is None else phi_hat.detach().clone()

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, eps={self.eps})"
