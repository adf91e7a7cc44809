"""The float64 truth and the error bounds a correct float32 backend must stay within.

Bounds, and why:
- Inputs are exact in float32 (bf16/fp16 widen exactly), so a backend's only errors are float32
  rounding (unit roundoff u = 2**-24 per operation) and the final rounding to the buffer dtype
  (u_d = 2**-8 bf16, 2**-11 fp16, 2**-24 fp32).
- Element-wise methods: g = γ·f + α·r (or one of its terms) in float32 is within
  2u·(|γ·f| + |α·r|) of the exact value, then rounds once: ± u_d·|g|.
- Projection methods: a dot product of n terms summed in float32 in *any* order is within
  n·u·Σ|x_i·y_i| of the exact dot (Higham, Accuracy and Stability, Sec. 3.1), plus
  n·2**-149 for products that underflow. This bound does not depend on the summation order, so it
  holds for the kernels' chunked order and the reference's alike. Errors of d, n = r·r and
  m = f·f then propagate into the coefficient c and the weights (a, b) with g = a·f + b·r;
  where |d| is within its error of 0, the PCGrad branch (d < 0) may go either way and both
  outcomes are accepted.
- Gramian weightings (``weightings.py``): the weights are smooth or piecewise-smooth functions of
  the dots with no formula-specific bound here, so their error is estimated on the corners of
  the dots' error box above (27 points, each dot at its truth or either end of its bound), taken
  twice over, plus the float32 rounding of the weights. Near a switch between two cases (an
  active constraint, a clamp) the corners see both sides, so both outcomes are accepted.
- Below 2**-126 float32 has no relative precision: each operation can lose up to 2**-150
  absolutely, scaled by the weights that follow it. On a GPU a float32 result may also flush to
  zero there; both are added as absolute floors.
"""

from __future__ import annotations

import math

import torch

from sago_kernels import reference, weightings
from sago_kernels.layout import GradLayout
from sago_kernels.methods import Method
from sago_kernels.stats import geometry_table

U32 = 2.0**-24
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SMALLEST_SUBNORMAL = {torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
F32_SMALLEST_NORMAL = 2.0**-126


def truth(retain, forget, layout: GradLayout, method: Method, alpha, gamma, eps):
    """g_final, per-segment sums and conflict counts in float64 (the reference, run wide)."""
    return reference.combine(
        retain, forget, layout, method.reference, method.scope,
        alpha=alpha, gamma=gamma, eps=eps, compute_dtype=torch.float64,
        weighting=method.weighting,
    )  # fmt: skip


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor as a same-width integer view (for exact comparisons)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


def segment_mask(layout: GradLayout, device=None) -> torch.Tensor:
    mask = torch.zeros(layout.numel, dtype=torch.bool, device=device)
    for s in layout.segments:
        mask[s.start : s.end] = True
    return mask


def _groups(layout: GradLayout, method: Method) -> list[list]:
    if method.scope == "global":
        return [list(layout.segments)]
    return [[s] for s in layout.segments]


def _pcgrad_coefficient(d, dd, nn, k, floor, eps):
    """PCGrad's c = d/(n+eps) if d < 0, from the exact dots d and n = ``nn``, and its error bound
    given |d − d_backend| <= ``dd`` and n's order-free summation bound ``k``·n + ``floor``; where
    |d| is within its error of 0 the branch may go either way, and both outcomes are covered."""
    eps32 = abs(float(torch.tensor(eps, dtype=torch.float32)) - eps)
    dn = k * nn + floor + eps32
    lower = nn + eps - dn
    c = d / (nn + eps) if d < 0 else torch.zeros((), dtype=torch.float64)
    if lower <= 0:
        return c, torch.tensor(math.inf, dtype=torch.float64)
    dc = (dd + c.abs() * dn) / lower + 4 * U32 * c.abs()
    if d.abs() <= dd:
        dc = dc + c.abs() + dd / lower
    return c, dc


def output_bound(
    retain, forget, layout: GradLayout, method: Method, alpha, gamma, eps
) -> torch.Tensor:
    """Per-element bound on |backend output − float64 truth| (float64, buffer-length)."""
    r, f = retain.double(), forget.double()
    bound = torch.zeros_like(r)
    # Each float32 operation whose result is below 2**-126 can lose up to 2**-150 absolutely
    # (no relative bound there); the weights scale those losses. A handful of operations each.
    underflow = (2 * abs(gamma) + 2 * abs(alpha) + 4) * 2.0**-149
    if not method.is_projection:
        bound = 2.5 * U32 * (abs(gamma) * f.abs() + abs(alpha) * r.abs()) + underflow
    elif method.weighting is not None:
        for group in _groups(layout, method):
            idx = torch.cat([torch.arange(s.start, s.end) for s in group]).to(r.device)
            rg, fg = r[idx], f[idx]
            k = max(len(idx), 1) * U32 * 1.01
            floor = max(len(idx), 1) * 2.0**-149
            pairs = [(fg, rg), (rg, rg), (fg, fg)]
            dots = torch.stack([(x * y).sum() for x, y in pairs])
            errs = torch.stack([k * (x * y).abs().sum() + floor for x, y in pairs])
            signs = torch.cartesian_prod(*[torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64)] * 3)
            corners = dots + signs.to(dots.device) * errs  # row 0: the truth
            coef = weightings.coefficients(corners, method.weighting, alpha, gamma, whole=False)
            a, b = coef[0]
            if not torch.isfinite(coef).all():
                bound[idx] = math.inf
                continue
            da, db = (2 * (coef - coef[0]).abs().amax(0) + 4 * U32 * coef[0].abs()).unbind()
            bound[idx] = (
                da * fg.abs()
                + db * rg.abs()
                + 2.5 * U32 * (a.abs() * fg.abs() + b.abs() * rg.abs())
                + underflow * (1 + a.abs() + b.abs())
            )
    else:
        for group in _groups(layout, method):
            idx = torch.cat([torch.arange(s.start, s.end) for s in group]).to(r.device)
            rg, fg = r[idx], f[idx]
            n_terms = max(len(idx), 1)
            k = n_terms * U32 * 1.01
            floor = n_terms * 2.0**-149
            d, rr, ff = (fg * rg).sum(), (rg * rg).sum(), (fg * fg).sum()
            dd = k * (fg * rg).abs().sum() + floor
            eps32 = abs(float(torch.tensor(eps, dtype=torch.float32)) - eps)
            if method.code == 0:  # PCGrad: c = d/(n+eps) if d < 0
                c, dc = _pcgrad_coefficient(d, dd, rr, k, floor, eps)
                a, b = gamma, alpha - gamma * c
                da, db = 0.0, abs(gamma) * dc + 2 * U32 * (abs(alpha) + abs(gamma) * c.abs())
            else:  # BLUR: c = d/(m+eps), a = γ − α·c
                dm = k * ff + floor + eps32
                lower = ff + eps - dm
                c = d / (ff + eps)
                dc = (dd + c.abs() * dm) / lower + 4 * U32 * c.abs() if lower > 0 else math.inf
                a, b = gamma - alpha * c, alpha
                da, db = abs(alpha) * dc + 2 * U32 * (abs(gamma) + abs(alpha) * abs(c)), 0.0
            a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
            group_bound = (
                da * fg.abs()
                + db * rg.abs()
                + 2.5 * U32 * (a.abs() * fg.abs() + b.abs() * rg.abs())
                + underflow * (1 + a.abs() + b.abs())
            )
            bound[idx] = torch.nan_to_num(group_bound, nan=math.inf)
    return bound


def gru_truth(retain, forget, state, layout: GradLayout, method: Method, alpha, gamma, eps):
    """``(g_final in float64, its per-element bound, the state every backend must leave)`` for a
    GRU method (``gru.py``).

    m' = β·r + (1 − β)·m is element-wise float32 arithmetic, the same operations on every
    backend, so its bits are known exactly: computed here with torch, the state a backend leaves
    must equal it (rounded to the buffer dtype) in every finite group and the old state in every
    NaN one. Given m', the output is PCGrad's with m' in place of r plus the term κ·α·r, and the
    bound is PCGrad's argument: the dots' order-free summation bound propagated into c, the
    float32 rounding of the three-term sum, and the underflow floor.
    """
    ema = method.ema
    m_new = ema.beta * retain.float() + ema.keep * state.float()  # as the backends, in float32
    r, f, m = retain.double(), forget.double(), m_new.double()
    ref = torch.full_like(r, math.nan)
    bound = torch.zeros_like(r)
    new_state = state.clone()
    b = float(torch.tensor(ema.retain_coef * alpha, dtype=torch.float32))
    for group in _groups(layout, method):
        if not group:
            continue
        idx = torch.cat([torch.arange(s.start, s.end) for s in group]).to(r.device)
        rg, fg, mg = r[idx], f[idx], m[idx]
        n_terms = max(len(idx), 1)
        k = n_terms * U32 * 1.01
        floor = n_terms * 2.0**-149
        d, mm, ff = (fg * mg).sum(), (mg * mg).sum(), (fg * fg).sum()
        if not all(math.isfinite(x) for x in (d.item(), mm.item(), ff.item())):
            continue  # NaN output, state kept
        dd = k * (fg * mg).abs().sum() + floor
        c, dc = _pcgrad_coefficient(d, dd, mm, k, floor, eps)  # PCGrad's, with m' for r
        cm = -gamma * c
        ref[idx] = gamma * fg + b * rg + cm * mg
        underflow = (2 * abs(gamma) + 2 * abs(b) + 4) * 2.0**-149
        group_bound = (
            (abs(gamma) * dc + 2 * U32 * cm.abs()) * mg.abs()
            + 3.5 * U32 * (abs(gamma) * fg.abs() + abs(b) * rg.abs() + cm.abs() * mg.abs())
            + underflow * (1 + abs(gamma) + abs(b) + cm.abs())
        )
        bound[idx] = torch.nan_to_num(group_bound, nan=math.inf)
        new_state[idx] = m_new[idx].to(state.dtype)
    return ref, bound, new_state


def assert_output_matches(out, ref64, bound, layout, dtype, *, context="") -> None:
    """Every segment element of ``out`` within ``bound`` (+ final rounding) of ``ref64``.

    NaN must match NaN; ±Inf must match; a finite truth beyond the dtype's range may round to
    the infinity of its sign.
    """
    mask = segment_mask(layout, out.device)
    o = out.double()[mask].cpu()
    t = ref64[mask].cpu()
    b = bound[mask].cpu()
    u_d = UNIT_ROUNDOFF[dtype]
    floor = SMALLEST_SUBNORMAL[dtype] + (F32_SMALLEST_NORMAL if out.is_cuda else 0.0)
    tol = b * (1 + u_d) + u_d * t.abs() + floor
    max_d = torch.finfo(dtype).max
    nan_mismatch = torch.isnan(o) != torch.isnan(t)
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


def expected_geometry(retain, forget, out, layout: GradLayout):
    """Float64 sums over the inputs and the backend's own stored output, with error bounds.

    A backend sums g_final before rounding; the stored value differs from it by
    delta_i <= u_d·|o_i| + (the dtype's smallest subnormal), which enters the o-columns' bounds.
    Returns ``(sums, err, counts, numels)``, ``err`` being the per-entry bound for a float32
    backend (order-free summation bound + rounding of the stored output).
    """
    dtype = retain.dtype
    r, f, o = retain.double(), forget.double(), out.double()
    delta = UNIT_ROUNDOFF[dtype] * (1 + UNIT_ROUNDOFF[dtype]) * o.abs() + SMALLEST_SUBNORMAL[dtype]
    if out.is_cuda:
        delta = delta + F32_SMALLEST_NORMAL
    rows, errs, counts = [], [], []
    for s in layout.segments:
        sl = slice(s.start, s.end)
        rs, fs, os_, ds = r[sl], f[sl], o[sl], delta[sl]
        pairs = [(fs, rs), (rs, rs), (fs, fs), (os_, os_), (os_, rs), (os_, fs)]
        rows.append(torch.stack([x @ y for x, y in pairs]))
        k = max(s.numel, 1) * U32 * 1.01
        summed = torch.stack([x.abs() @ y.abs() for x, y in pairs])
        rounding = torch.stack(
            [
                torch.zeros((), dtype=torch.float64, device=r.device),
                torch.zeros((), dtype=torch.float64, device=r.device),
                torch.zeros((), dtype=torch.float64, device=r.device),
                (2 * os_.abs() * ds + ds * ds).sum(),
                (ds * rs.abs()).sum(),
                (ds * fs.abs()).sum(),
            ]
        )
        errs.append(
            k * (summed + rounding)
            + rounding
            + max(s.numel, 1) * 2.0**-149
            + 2 * F32_SMALLEST_NORMAL
        )
        counts.append(reference.conflict_mask(fs, rs).sum())
    numels = torch.tensor(layout.numels, device=r.device)
    return torch.stack(rows), torch.stack(errs), torch.stack(counts), numels


def assert_stats_match(stats_table, retain, forget, out, layout: GradLayout, *, context=""):
    """Check a backend's geometry table against float64 sums, with propagated bounds."""
    sums, err, counts, numels = expected_geometry(retain, forget, out, layout)
    abs_total = err.sum(0)
    tot_err = (
        abs_total * (1 + layout.num_segments * U32) + layout.num_segments * U32 * sums.abs().sum(0)
    )[None]
    all_sums = torch.cat([sums, sums.sum(0, keepdim=True)])
    all_err = torch.cat([err, tot_err])
    got = stats_table.double().cpu()
    want = geometry_table(all_sums[:-1].cpu(), counts.cpu(), numels.cpu()).double()
    # sums: compare directly; derived fields: propagate the sum errors through sqrt and division
    fr, rr, ff, oo, o_r, o_f = all_sums.cpu().unbind(-1)
    e_fr, e_rr, e_ff, e_oo, e_or, e_of = all_err.cpu().unbind(-1)

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
    frac = (
        counts.double().cpu()
        / torch.tensor([max(x, 1) for x in layout.numels], dtype=torch.float64)
    ).float()
    assert torch.equal(got[:-1, 7].float().cpu(), frac), f"{context}: conflict fractions differ"
