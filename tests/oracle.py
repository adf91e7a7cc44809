"""The float64 truth, written again from the README's formulas, and the error bounds a correct
float32 backend must stay within.

Independence: nothing here calls a function of ``sago_kernels``. The formulas are those of the
README's "The methods" and "Contract" sections, typed again in float64; what comes from the
package describes the input only: the layout's plain ``starts``/``numels`` lists, and a
method's name, scope, β and κ (GRU) or weighting callable (Gramian methods). A wrong formula in
``reference.py``, ``gru.py``, ``weightings.py`` (its Gramian and scaling) or ``stats.py`` is
therefore on one side of each comparison only. The built-in weightings' closed forms are the one
long formula not retyped here: they are judged against TorchJD in ``tests/test_weightings.py``;
here a weighting is called, as the user's callable it is, on a Gramian this module builds.

Bounds, and why:
- Inputs are exact in float32 (bf16/fp16 widen exactly), so a backend's only errors are float32
  rounding (unit roundoff u = 2**-24 per operation) and the final rounding to the buffer dtype
  (u_d = 2**-8 bf16, 2**-11 fp16, 2**-24 fp32).
- Element-wise methods: g = γ·f + α·r (or one of its terms) in float32 is within
  2u·(|γ·f| + |α·r|) of the exact value, then rounds once: ± u_d·|g|.
- Projection methods: a dot product of n terms summed in float32 in *any* order is within
  n·u·Σ|x_i·y_i| of the exact dot (Higham, Accuracy and Stability, Sec. 3.1), plus 2**-149 for
  each non-zero product (one that underflows loses at most that; a zero product is exact). This
  bound does not depend on the summation order, so it holds for the kernels' chunked order and
  the reference's alike. Errors of d, n = r·r and m = f·f then propagate into the coefficient c
  and the weights (a, b) with g = a·f + b·r; where |d| is within its error of 0, the PCGrad
  branch (d < 0) may go either way and both outcomes are accepted; where d is certainly >= 0,
  c = 0 exactly whatever n (an all-zero retain segment with eps = 0 included).
- Where float32 may turn the weights non-finite (n + eps within its error of 0, a weight near
  float32's range) the contract makes the segment NaN (README, Non-finite values): the group's
  bound is then infinite and NaN is accepted there, and only there.
- Gramian weightings: the weights are smooth or piecewise-smooth functions of the dots with no
  formula-specific bound here, so their error is estimated on the corners of the dots' error box
  above (27 points, each dot at its truth or either end of its bound), taken twice over, plus
  the float32 rounding of the weights. Near a switch between two cases (an active constraint, a
  clamp) the corners see both sides, so both outcomes are accepted.
- Below 2**-126 float32 has no relative precision: each operation can lose up to 2**-150
  absolutely, scaled by the weights that follow it. On a GPU a float32 result may also flush to
  zero there; both are added as absolute floors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

U32 = 2.0**-24
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SMALLEST_SUBNORMAL = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
F32_SMALLEST_NORMAL = 2.0**-126
F32_MAX = float(torch.finfo(torch.float32).max)
INF = math.inf

ELEMENT_METHODS = ("sum", "sago", "sago_prefer_retain")
PROJECTIONS = {"pcgrad": "pcgrad", "pcgrad_global": "pcgrad", "blur": "blur"}


# --------------------------------------------------------------------------- the input


def spans(layout) -> list[tuple[int, int]]:
    """``(start, end)`` of each segment, from the layout's plain size lists."""
    return [(s, s + n) for s, n in zip(layout.starts, layout.numels)]


def segment_mask(layout, device=None) -> torch.Tensor:
    mask = torch.zeros(layout.numel, dtype=torch.bool, device=device)
    for start, end in spans(layout):
        mask[start:end] = True
    return mask


def _groups(layout, method) -> list[torch.Tensor]:
    """Element indices of each group a projection decides at once: a segment, or all of them."""
    ranges = [torch.arange(start, end) for start, end in spans(layout)]
    if method.scope == "global":
        return [torch.cat(ranges)] if ranges else []
    return ranges


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor as a same-width integer view (for exact comparisons)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def conflicts(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """f_i and r_i both non-zero with different sign bits (README, Semantics). float64 views of
    float32-exact values keep every non-zero (subnormals included) non-zero."""
    f, r = f.double(), r.double()
    return (f != 0) & (r != 0) & (torch.signbit(f) != torch.signbit(r))


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a backend rounds a Python scalar."""
    return float(torch.tensor(x, dtype=torch.float32))


# --------------------------------------------------------------------------- dots and bounds


@dataclass
class _Dot:
    """An exact dot of float32 values, and the bound on any float32 summation of it."""

    value: torch.Tensor
    err: torch.Tensor


def _dot(x: torch.Tensor, y: torch.Tensor) -> _Dot:
    products = x * y  # exact: float32 × float32 fits float64's 53 bits
    n_terms = max(products.numel(), 1)
    err = n_terms * U32 * 1.01 * products.abs().sum() + (products != 0).sum() * 2.0**-149
    return _Dot(products.sum(), err)


def _projection_coefficient(d: _Dot, nn: _Dot, eps: float):
    """PCGrad's and GRU's c = d/(n + eps) if d < 0 else 0 from the exact dots, and its error
    bound given the backend's d and n are within their summation bounds of the truth and eps is
    rounded to float32. ``(c, dc)``; ``dc`` is infinite where float32 may divide by (nearly)
    zero, and covers both branches where d's sign is within its error."""
    zero = torch.zeros((), dtype=torch.float64)
    if d.value - d.err >= 0:  # d >= 0 in every summation order: c = 0 exactly
        return zero, zero
    eps_err = abs(_f32(eps) - eps)
    dn = nn.err + eps_err
    lower = nn.value + eps - dn
    c = d.value / (nn.value + eps) if d.value < 0 else zero
    if lower <= 0:
        return c, torch.tensor(INF, dtype=torch.float64)
    dc = (d.err + c.abs() * dn) / lower + 4 * U32 * c.abs()
    if d.value.abs() <= d.err:  # the branch may go either way: c or 0
        dc = dc + c.abs() + d.err / lower
    return c, dc


def _affine_bound(f, r, a, b, da, db) -> torch.Tensor:
    """Bound on |fl32(a'·f + b'·r) − (a·f + b·r)| with |a' − a| <= da, |b' − b| <= db."""
    underflow = (2 * abs(float(a)) + 2 * abs(float(b)) + 4) * 2.0**-149
    return (
        da * f.abs()
        + db * r.abs()
        + 2.5 * U32 * (abs(float(a)) * f.abs() + abs(float(b)) * r.abs())
        + underflow * (1 + abs(float(a)) + abs(float(b)))
    )


def _may_overflow(*weights_and_errors: tuple[float, float]) -> bool:
    """Whether a float32 weight within its error of these values could leave float32's range."""
    return any(abs(float(w)) + float(e) >= F32_MAX for w, e in weights_and_errors)


# --------------------------------------------------------------------------- the methods


@dataclass
class Truth:
    """g_final in float64 over the buffer (0 outside the segments), the per-element bound on a
    float32 backend's error, and where a NaN output is acceptable (the bound is infinite: float32
    may have turned the weights non-finite)."""

    out: torch.Tensor
    bound: torch.Tensor
    nan_ok: torch.Tensor


def truth(retain, forget, layout, method, alpha, gamma, eps) -> Truth:
    """The README's g_final for a stateless method, in float64, with its bound."""
    if method.ema is not None:
        raise ValueError("GRU keeps a state: use gru_truth")
    r, f = retain.double().cpu(), forget.double().cpu()
    out = torch.zeros_like(r)
    bound = torch.zeros_like(r)
    nan_ok = torch.zeros(r.shape, dtype=torch.bool)
    if method.name in ELEMENT_METHODS:
        _element(method.name, r, f, alpha, gamma, out, bound, segment_mask(layout))
    elif method.weighting is not None:
        for idx in _groups(layout, method):
            _weighted(r, f, idx, method.weighting, alpha, gamma, out, bound, nan_ok)
    elif method.name in PROJECTIONS:
        for idx in _groups(layout, method):
            _projection(PROJECTIONS[method.name], r, f, idx, alpha, gamma, eps, out, bound, nan_ok)
    else:
        raise ValueError(f"the oracle does not know {method!r}")
    device = retain.device
    return Truth(out.to(device), bound.to(device), nan_ok.to(device))


def _element(name, r, f, alpha, gamma, out, bound, mask) -> None:
    conflict = conflicts(f, r)
    if name == "sum":  # IEEE arithmetic: ±Inf may stay ±Inf, 0·Inf is NaN
        g = gamma * f + alpha * r
    else:
        keep_both = gamma * f + alpha * r if name == "sago_prefer_retain" else gamma * f
        g = torch.where(conflict, alpha * r, keep_both)
        g = torch.where(torch.isfinite(f) & torch.isfinite(r), g, math.nan)
    out[mask] = g[mask]
    err = 2.5 * U32 * (abs(gamma) * f.abs() + abs(alpha) * r.abs())
    bound[mask] = (err + (2 * abs(gamma) + 2 * abs(alpha) + 4) * 2.0**-149)[mask]


def _projection(kind, r, f, idx, alpha, gamma, eps, out, bound, nan_ok) -> None:
    """PCGrad: c = d/(n+eps) if d < 0 else 0; g = γ·(f − c·r) + α·r = γ·f + (α − γ·c)·r.
    BLUR: c = d/(m+eps); g = γ·f + α·(r − c·f) = (γ − α·c)·f + α·r. NaN in full where a dot
    (f·r, r·r, f·f) or the effective weight is not finite."""
    rg, fg = r[idx], f[idx]
    d, n, m = _dot(fg, rg), _dot(rg, rg), _dot(fg, fg)
    if not all(torch.isfinite(x.value) for x in (d, n, m)):
        out[idx] = math.nan
        return
    if kind == "pcgrad":
        c, dc = _projection_coefficient(d, n, eps)
        a, b = torch.tensor(float(gamma), dtype=torch.float64), alpha - gamma * c
        da = torch.zeros((), dtype=torch.float64)
        db = abs(gamma) * dc + 2 * U32 * (abs(alpha) + abs(gamma) * c.abs())
    else:
        eps_err = abs(_f32(eps) - eps)
        dm = m.err + eps_err
        lower = m.value + eps - dm
        c = d.value / (m.value + eps)
        if lower > 0:
            dc = (d.err + c.abs() * dm) / lower + 4 * U32 * c.abs()
        else:
            dc = torch.tensor(INF, dtype=torch.float64)
        a, b = gamma - alpha * c, torch.tensor(float(alpha), dtype=torch.float64)
        da = abs(alpha) * dc + 2 * U32 * (abs(gamma) + abs(alpha) * c.abs())
        db = torch.zeros((), dtype=torch.float64)
    if not (torch.isfinite(a) and torch.isfinite(b)):
        out[idx] = math.nan
        return
    out[idx] = a * fg + b * rg
    if not (torch.isfinite(da) and torch.isfinite(db)) or _may_overflow((a, da), (b, db)):
        bound[idx], nan_ok[idx] = INF, True
        return
    bound[idx] = _affine_bound(fg, rg, a, b, da, db)


def gramian(fr, rr, ff, alpha, gamma) -> torch.Tensor:
    """The 2×2 Gramian of the rows (γ·f, α·r) from the dots, its off-diagonal clamped to
    ±√(a·c) (README, Gramian weightings), float64, batched over the leading dimensions."""
    uu, vv = gamma * gamma * ff, alpha * alpha * rr
    lim = (uu * vv).clamp_min(0).sqrt()
    uv = torch.maximum(torch.minimum(gamma * alpha * fr, lim), -lim)
    return torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2)


def _weighted(r, f, idx, weighting, alpha, gamma, out, bound, nan_ok) -> None:
    """g = γ·w₀·f + α·w₁·r with w = weighting(G(γ·f, α·r)); NaN where the dots or the weights
    are not finite."""
    rg, fg = r[idx], f[idx]
    dots = [_dot(fg, rg), _dot(rg, rg), _dot(fg, fg)]
    value = torch.stack([x.value for x in dots])
    if not torch.isfinite(value).all():
        out[idx] = math.nan
        return
    err = torch.stack([x.err for x in dots])
    signs = torch.cartesian_prod(*[torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64)] * 3)
    corners = value + signs * err  # row 0: the truth
    w = weighting(gramian(*corners.unbind(-1), alpha, gamma))
    coef = w * torch.tensor([gamma, alpha], dtype=torch.float64)
    a, b = coef[0]
    if not torch.isfinite(coef[0]).all():
        out[idx] = math.nan
        return
    out[idx] = a * fg + b * rg
    if not torch.isfinite(coef).all():
        bound[idx], nan_ok[idx] = INF, True
        return
    da, db = (2 * (coef - coef[0]).abs().amax(0) + 4 * U32 * coef[0].abs()).unbind()
    if _may_overflow((a, da), (b, db)):
        bound[idx], nan_ok[idx] = INF, True
        return
    bound[idx] = _affine_bound(fg, rg, a, b, da, db)


@dataclass
class GruTruth(Truth):
    """GRU's truth: also the state every backend must leave (``state``), and where the old state
    is acceptable instead (``state_either``: the groups whose NaN is acceptable)."""

    state: torch.Tensor
    state_either: torch.Tensor


def gru_truth(retain, forget, state, layout, method, alpha, gamma, eps) -> GruTruth:
    """GRU (README, The methods and Semantics): m' = β·r + (1 − β)·m element-wise in float32
    (β and 1 − β rounded to float32, no fused multiply-add: the same bits on every backend, so
    the state a backend leaves must equal it, rounded to the buffer dtype, in every finite group
    and the old state in every NaN one); per group d = f·m', n = m'·m', c = d/(n+eps) if d < 0
    else 0; g = γ·f + fl32(κ·α)·r − γ·c·m'. NaN, state kept, where f·m', m'·m', f·f or a
    coefficient is not finite. The bound is PCGrad's argument with m' for r, plus the rounding
    of the three-term sum."""
    beta, kappa = float(method.ema.beta), float(method.ema.retain_coef)
    beta32 = torch.tensor(beta, dtype=torch.float32)
    keep32 = torch.tensor(1.0 - beta, dtype=torch.float32)
    m_new32 = beta32 * retain.float().cpu() + keep32 * state.float().cpu()
    r, f, m = retain.double().cpu(), forget.double().cpu(), m_new32.double()
    out = torch.zeros_like(r)
    bound = torch.zeros_like(r)
    nan_ok = torch.zeros(r.shape, dtype=torch.bool)
    new_state = state.cpu().clone()
    b = _f32(kappa * alpha)
    for idx in _groups(layout, method):
        rg, fg, mg = r[idx], f[idx], m[idx]
        d, mm, ff = _dot(fg, mg), _dot(mg, mg), _dot(fg, fg)
        if not all(torch.isfinite(x.value) for x in (d, mm, ff)):
            out[idx] = math.nan
            continue  # state kept
        c, dc = _projection_coefficient(d, mm, eps)
        cm = -gamma * c
        out[idx] = gamma * fg + b * rg + cm * mg
        new_state[idx] = m_new32[idx].to(state.dtype)
        dcm = abs(gamma) * dc + 2 * U32 * cm.abs()
        if not torch.isfinite(dcm) or _may_overflow((cm, dcm)):
            bound[idx], nan_ok[idx] = INF, True
            continue
        underflow = (2 * abs(gamma) + 2 * abs(b) + 4) * 2.0**-149
        bound[idx] = (
            dcm * mg.abs()
            + 3.5 * U32 * (abs(gamma) * fg.abs() + abs(b) * rg.abs() + cm.abs() * mg.abs())
            + underflow * (1 + abs(gamma) + abs(b) + cm.abs())
        )
    device = retain.device
    return GruTruth(
        out.to(device), bound.to(device), nan_ok.to(device), new_state.to(device), nan_ok.to(device)
    )


def assert_state_matches(got: torch.Tensor, want: GruTruth, old: torch.Tensor, context="") -> None:
    """The state a GRU combine left: exactly m' (or, where NaN was acceptable, m' or the old
    state), and untouched outside the segments."""
    same = bits(got) == bits(want.state)
    kept = bits(got) == bits(old)
    bad = ~(same | (want.state_either & kept))
    assert not bad.any(), f"{context}: state differs at {torch.nonzero(bad).flatten()[:8].tolist()}"


# --------------------------------------------------------------------------- comparisons


def assert_output_matches(out, want: Truth, layout, dtype, *, context="") -> None:
    """Every segment element of ``out`` within ``want.bound`` (+ final rounding) of ``want.out``.

    NaN must match NaN, except where ``want.nan_ok``; ±Inf must match; a finite truth beyond the
    dtype's range may round to the infinity of its sign.
    """
    mask = segment_mask(layout, out.device)
    o = out.double()[mask].cpu()
    t = want.out[mask].cpu()
    b = want.bound[mask].cpu()
    nan_ok = want.nan_ok[mask].cpu()
    u_d = UNIT_ROUNDOFF[dtype]
    floor = SMALLEST_SUBNORMAL[dtype] + (F32_SMALLEST_NORMAL if out.is_cuda else 0.0)
    tol = b * (1 + u_d) + u_d * t.abs() + floor
    max_d = torch.finfo(dtype).max
    nan_mismatch = (torch.isnan(o) != torch.isnan(t)) & ~nan_ok
    both_num = ~torch.isnan(o) & ~torch.isnan(t)
    inf_ok = torch.isinf(o) & (torch.sign(o) == torch.sign(t)) & ((t.abs() + tol) >= max_d)
    err = (o - t).abs()
    bad_value = both_num & ~inf_ok & ~(err <= tol) & ~(torch.isinf(o) & torch.isinf(t) & (o == t))
    bad = nan_mismatch | bad_value
    if bad.any():
        where = torch.nonzero(bad).flatten()[:8].tolist()
        lines = [f"{context}: {int(bad.sum())} of {bad.numel()} segment elements outside the bound"]
        for i in where:
            lines.append(
                f"  [{i}] got {o[i].item()!r} truth {t[i].item()!r} tol {tol[i].item():.3g}"
            )
        raise AssertionError("\n".join(lines))


# --------------------------------------------------------------------------- statistics


def _cos(dot, x, y):
    """dot/(|x|·|y|); 0 where a vector is zero (README, Gradient geometry)."""
    den = x.sqrt() * y.sqrt()
    return torch.where(den == 0, torch.zeros_like(dot), dot / den)


def expected_geometry(retain, forget, out, layout):
    """Float64 sums over the inputs and the backend's own stored output, with error bounds.

    A backend sums g_final before rounding; the stored value differs from it by
    delta_i <= u_d·|o_i| + (the dtype's smallest subnormal), which enters the o-columns' bounds.
    Returns ``(sums, err, counts, numels)``, ``err`` being the per-entry bound for a float32
    backend (order-free summation bound + rounding of the stored output).
    """
    dtype = retain.dtype
    r, f, o = retain.double().cpu(), forget.double().cpu(), out.double().cpu()
    delta = UNIT_ROUNDOFF[dtype] * (1 + UNIT_ROUNDOFF[dtype]) * o.abs() + SMALLEST_SUBNORMAL[dtype]
    if out.is_cuda:
        delta = delta + F32_SMALLEST_NORMAL
    rows, errs, counts = [], [], []
    zero = torch.zeros((), dtype=torch.float64)
    for start, end in spans(layout):
        sl = slice(start, end)
        rs, fs, os_, ds = r[sl], f[sl], o[sl], delta[sl]
        pairs = [(fs, rs), (rs, rs), (fs, fs), (os_, os_), (os_, rs), (os_, fs)]
        rows.append(torch.stack([(x * y).sum() for x, y in pairs]))
        k = max(end - start, 1) * U32 * 1.01
        summed = torch.stack([(x * y).abs().sum() for x, y in pairs])
        rounding = torch.stack(
            [
                zero,
                zero,
                zero,
                (2 * os_.abs() * ds + ds * ds).sum(),
                (ds * rs.abs()).sum(),
                (ds * fs.abs()).sum(),
            ]
        )
        errs.append(
            k * (summed + rounding) + rounding + max(end - start, 1) * 2.0**-149
            + 2 * F32_SMALLEST_NORMAL
        )  # fmt: skip
        counts.append(conflicts(fs, rs).sum())
    numels = torch.tensor(list(layout.numels), dtype=torch.int64)
    if not rows:
        empty = torch.zeros((0, 6), dtype=torch.float64)
        return empty, empty, torch.zeros(0, dtype=torch.int64), numels
    return torch.stack(rows), torch.stack(errs), torch.stack(counts), numels


def geometry64(sums: torch.Tensor, counts: torch.Tensor, numels: torch.Tensor) -> torch.Tensor:
    """The geometry table (README, Gradient geometry) in float64 from ``[S + 1, 6]`` sums (the
    last row the total): dot_fr, the three norms, the three cosines, the conflict fraction."""
    fr, rr, ff, oo, o_r, o_f = sums.unbind(-1)
    counts = torch.cat([counts, counts.sum(0, keepdim=True)]).double()
    sizes = torch.cat([numels, numels.sum(0, keepdim=True)]).double()
    fraction = torch.where(sizes > 0, counts / sizes.clamp_min(1), torch.zeros_like(counts))
    cols = [fr, rr.sqrt(), ff.sqrt(), oo.clamp_min(0).sqrt()]
    cols += [_cos(fr, rr, ff), _cos(o_r, oo.clamp_min(0), rr), _cos(o_f, oo.clamp_min(0), ff)]
    return torch.stack([*cols, fraction], -1)


def assert_stats_match(stats_table, retain, forget, out, layout, *, context=""):
    """Check a backend's geometry table against float64 sums, with propagated bounds."""
    sums, err, counts, numels = expected_geometry(retain, forget, out, layout)
    abs_total = err.sum(0)
    tot_err = (
        abs_total * (1 + layout.num_segments * U32) + layout.num_segments * U32 * sums.abs().sum(0)
    )[None]
    all_sums = torch.cat([sums, sums.sum(0, keepdim=True)])
    all_err = torch.cat([err, tot_err])
    got = stats_table.double().cpu()
    want = geometry64(all_sums, counts, numels)
    # sums: compare directly; derived fields: propagate the sum errors through sqrt and division
    fr, rr, ff, oo, o_r, o_f = all_sums.unbind(-1)
    e_fr, e_rr, e_ff, e_oo, e_or, e_of = all_err.unbind(-1)

    def norm_err(x, e):
        # |sqrt(x) - sqrt(x')| <= e / (sqrt(x) + sqrt(x - e)), and <= sqrt(e) always
        x = x.clamp_min(0)
        lin = e / (x.sqrt() + (x - e).clamp_min(0).sqrt()).clamp_min(1e-300)
        return torch.minimum(lin, e.sqrt()) + 2 * U32 * x.sqrt()

    def cos_err(dot, e_dot, x, e_x, y, e_y):
        nx, ny = x.clamp_min(0).sqrt(), y.clamp_min(0).sqrt()
        lo_x, lo_y = (x - e_x).clamp_min(0).sqrt(), (y - e_y).clamp_min(0).sqrt()
        den = lo_x * lo_y
        spread = 2 * dot.abs() * (nx * ny - den) / (nx * ny).clamp_min(1e-300)
        bound = torch.where(den > 0, (e_dot + spread) / den, math.inf)
        return bound + 8 * U32

    tol = torch.stack(
        [
            e_fr + 1e-30,
            norm_err(rr, e_rr),
            norm_err(ff, e_ff),
            norm_err(oo, e_oo),
            cos_err(fr, e_fr, rr, e_rr, ff, e_ff),
            cos_err(o_r, e_or, oo, e_oo, rr, e_rr),
            cos_err(o_f, e_of, oo, e_oo, ff, e_ff),
            torch.full_like(fr, 1e-7),
        ],
        dim=-1,
    )
    err_got = (got - want).abs()
    finite_want = torch.isfinite(want)
    bad = finite_want & ~(err_got <= tol)
    bad |= ~finite_want & ~(torch.isnan(got) & torch.isnan(want) | (got == want))
    if bad.any():
        lines = [f"{context}: geometry outside the bound"]
        for i, j in torch.nonzero(bad)[:8].tolist():
            lines.append(
                f"  row {i} col {j}: got {got[i, j].item()!r} want {want[i, j].item()!r} "
                f"tol {tol[i, j].item():.3g}"
            )
        raise AssertionError("\n".join(lines))
    # conflict counts are integers: exact
    frac = (counts.double() / numels.clamp_min(1).double()).float()
    assert torch.equal(got[:-1, 7].float(), frac), f"{context}: conflict fractions differ"
