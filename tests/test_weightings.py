"""Gramian weightings (``weightings.py``): TorchJD parity on every backend, their properties,
user weightings and the TorchJD adapter.

TorchJD (``torchjd[quadprog-projector,cagrad,nash-mtl]``, the test extra) is the oracle: its
aggregator on the Jacobian [γ·f; α·r] of each segment must agree with the fused combine of the
method of the same name. Tolerances are relative to |γ·f| + |α·r| and come from what limits
each comparison: float32 dots and Gramian (~1e-7; 2e-5 allowed), TorchJD's pseudo-inverse and
eigen-decompositions (IMTL-G, Aligned-MTL, ConFIG: 1e-4), its CAGrad solver's 1e-8 duality gap
(weights to ~1e-4: 5e-4 allowed), its Nash-MTL convex-concave iterations (1e-3, and only where
they reach the Nash point: aligned rows of similar norms).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchjd.aggregation as aggregation

import sago_kernels as sk
from sago_kernels import weightings


TOLERANCE = {
    "upgrad": 2e-5, "dualproj": 2e-5, "mgda": 2e-5, "pcgrad_symmetric": 2e-5,
    "imtl_g": 1e-4, "aligned_mtl": 1e-4, "config": 1e-4, "cagrad": 5e-4, "nash_mtl": 1e-3,
}  # fmt: skip


def _torchjd(name: str):
    return {
        "upgrad": aggregation.UPGrad,
        "dualproj": aggregation.DualProj,
        "mgda": aggregation.MGDA,
        "imtl_g": aggregation.IMTLG,
        "aligned_mtl": aggregation.AlignedMTL,
        "cagrad": lambda: aggregation.CAGrad(c=0.5),
        "nash_mtl": lambda: aggregation.NashMTL(n_tasks=2),
        "pcgrad_symmetric": aggregation.PCGrad,
        "config": aggregation.ConFIG,
    }[name]()


def _pairs(seed: int, method: str) -> tuple[sk.GradLayout, torch.Tensor, torch.Tensor]:
    """Segments of every regime the weightings distinguish: conflicting, aligned, orthogonal-ish,
    unequal norms, tiny (Gramian trace under TorchJD's 1e-4), one zero row; for Nash-MTL only
    the regime where TorchJD's iterations reach the Nash point (aligned, similar norms)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [int(x) for x in torch.randint(3, 200, (24,), generator=g)]
    layout = sk.GradLayout.from_sizes(sizes)
    retain, forget = layout.new_buffer(), layout.new_buffer()
    for i, (r, f) in enumerate(zip(layout.segment_views(retain), layout.segment_views(forget))):
        r.copy_(torch.randn(r.numel(), generator=g))
        noise = torch.randn(f.numel(), generator=g)
        if method == "nash_mtl":
            f.copy_((0.6 * r + 0.4 * noise) * (0.5 + torch.rand((), generator=g)))
            continue
        kind = i % 6
        if kind == 0:  # conflicting
            f.copy_(-0.8 * r + 0.4 * noise)
        elif kind == 1:  # aligned, unequal norms
            f.copy_(5.0 * (0.7 * r + 0.3 * noise))
        elif kind == 2:  # tiny: trace of the Gramian below 1e-4
            r.mul_(1e-4)
            f.copy_(1e-4 * noise)
        elif kind == 3 and method not in ("imtl_g", "aligned_mtl", "config"):
            f.zero_()  # a zero row (TorchJD's rank cut-offs make these noise for the three)
        else:
            f.copy_(noise)
    return layout, retain, forget


@pytest.mark.parametrize("method", list(weightings.BUILT_IN))
def test_every_backend_agrees_with_torchjd(backend, device, method):
    alpha, gamma = 1.0, 0.7
    layout, retain, forget = _pairs(0, method)
    retain, forget = retain.to(device), forget.to(device)
    out = sk.combine_(
        retain.clone(), forget, layout=layout, method=method, alpha=alpha, gamma=gamma,
        backend=backend,
    )  # fmt: skip
    for j, (r, f, o) in enumerate(
        zip(layout.segment_views(retain), layout.segment_views(forget), layout.segment_views(out))
    ):
        jacobian = torch.stack([gamma * f, alpha * r]).cpu()
        want = _torchjd(method)(jacobian)
        scale = jacobian.norm(dim=1).sum()
        err = ((o.cpu() - want).norm() / scale).item()
        assert err <= TOLERANCE[method], f"{backend}/{method} segment {j}: {err:.2e}"


def test_parameters_reach_the_weighting():
    layout, retain, forget = _pairs(1, "cagrad")
    method = sk.method_with("cagrad", c=0.2)
    out = sk.combine_(retain.clone(), forget, layout=layout, method=method, backend="reference")
    for r, f, o in zip(*(layout.segment_views(t) for t in (retain, forget, out))):
        jacobian = torch.stack([f, r])
        want = aggregation.CAGrad(c=0.2)(jacobian)
        assert (o - want).norm() <= TOLERANCE["cagrad"] * jacobian.norm(dim=1).sum()
    with pytest.raises(TypeError, match="cagrad does not take"):
        sk.method_with("cagrad", cc=1.0)
    with pytest.raises(ValueError, match="`c`"):
        sk.method_with("cagrad", c=-1.0)
    with pytest.raises(ValueError, match="`name`"):
        sk.method_with("pcgrad", c=1.0)


def test_global_scope_is_one_gramian_over_all_segments(backend, device):
    layout, retain, forget = _pairs(2, "upgrad")
    retain, forget = retain.to(device), forget.to(device)
    method = sk.weighting_method(weightings.upgrad(), "upgrad_global", scope="global")
    out = sk.combine_(retain.clone(), forget, layout=layout, method=method, backend=backend)
    r = torch.cat(layout.segment_views(retain)).cpu()
    f = torch.cat(layout.segment_views(forget)).cpu()
    want = aggregation.UPGrad()(torch.stack([f, r]))
    got = torch.cat(layout.segment_views(out)).cpu()
    assert (got - want).norm() <= 2e-5 * (r.norm() + f.norm())


def _random_gramians(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pairs (u, v) of dimension 5 and their Gramians, float64."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 5, generator=g, dtype=torch.float64)
    v = torch.randn(n, 5, generator=g, dtype=torch.float64) - torch.rand(n, 1, generator=g) * u
    v = v * torch.exp(torch.randn(n, 1, generator=g, dtype=torch.float64))
    rows = torch.stack([u, v], 1)
    return rows, rows @ rows.transpose(1, 2)


def _combined(name: str, rows: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    w = weightings.BUILT_IN[name][0]()(gram)
    return (w[..., None] * rows).sum(1)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize("reg_eps", [1e-4, 0.0])
def test_projections_lie_in_the_dual_cone(name, reg_eps):
    """row_i·out ≥ −reg_eps·tr(G)·w_i: the KKT conditions of the regularised projection (TorchJD
    adds reg_eps·I to G/tr(G)); without regularisation, no conflict with either row at all."""
    rows, gram = _random_gramians(2000, 3)
    w = weightings.BUILT_IN[name][0](reg_eps=reg_eps)(gram)
    out = (w[..., None] * rows).sum(1)
    dots = (rows * out[:, None]).sum(-1)
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    rounding = 1e-12 * rows.norm(dim=-1) * out.norm(dim=-1, keepdim=True)
    assert (dots >= -reg_eps * trace * w - rounding).all()
    assert (w >= 0).all()


def test_mgda_is_the_minimum_norm_point_of_the_segment_between_the_rows():
    rows, gram = _random_gramians(500, 4)
    w = weightings.mgda()(gram)
    assert ((w >= 0) & (w <= 1)).all() and torch.allclose(w.sum(-1), torch.ones(500, 1).double())
    out = (w[..., None] * rows).sum(1)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    grid = t[None, :, None] * rows[:, None, 0] + (1 - t[None, :, None]) * rows[:, None, 1]
    best = grid.norm(dim=-1).min(1).values
    assert (out.norm(dim=-1) <= best + 1e-9).all()



def _box_kkt_violation(p, q, r, s0, s1, w0, w1) -> torch.Tensor:
    """How far (w0, w1) is from solving min wᵀPw s.t. w ≥ s, P = [[p, q], [q, r]]: the largest
    relative miss of its KKT conditions (feasible, multipliers P·w ≥ 0, each zero where its bound
    is slack), which hold at the unique solution only (P positive definite)."""
    m0, m1 = p * w0 + q * w1, q * w0 + r * w1  # half the gradient: the bounds' multipliers
    size = (p.abs() + q.abs() + r.abs()) * (s0.abs() + s1.abs() + w0.abs() + w1.abs() + 1)
    misses = torch.stack([
        (s0 - w0).clamp_min(0), (s1 - w1).clamp_min(0), (-m0).clamp_min(0), (-m1).clamp_min(0),
        (m0 * (w0 - s0)).abs() / (w0.abs() + s0.abs() + 1),
        (m1 * (w1 - s1)).abs() / (w1.abs() + s1.abs() + 1),
    ])  # fmt: skip
    return (misses / size).amax(0)


def test_project_box_solves_its_quadratic_program_on_and_off_the_active_sets_edges():
    """UPGrad's and DualProj's projection (the dual problem min wᵀPw, w ≥ s) against its KKT
    conditions, written here: random P and s of either sign, and P placed exactly where two
    active sets meet (P·s = 0 in one row), where each ``>=`` of the active-set test decides, and
    s with a zero (UPGrad's)."""
    g = torch.Generator().manual_seed(11)
    n, f64 = 200_000, torch.float64
    p = torch.rand(n, generator=g, dtype=f64) * 2 + 1e-3
    r = torch.rand(n, generator=g, dtype=f64) * 2 + 1e-3
    s0 = torch.rand(n, generator=g, dtype=f64) * 2 - 0.5
    s1 = torch.rand(n, generator=g, dtype=f64) * 2 - 0.5
    zero = torch.randint(0, 4, (n,), generator=g)  # UPGrad's s has a 0: (pref₀, 0), (0, pref₁)
    s0, s1 = torch.where(zero == 1, 0.0, s0), torch.where(zero == 2, 0.0, s1)
    q = (torch.rand(n, generator=g, dtype=f64) * 2 - 1) * (p * r).sqrt()
    edge = torch.randint(0, 3, (n,), generator=g)  # 1: q·s0 + r·s1 = 0; 2: p·s0 + q·s1 = 0
    q = torch.where(edge == 1, -r * s1 / s0, torch.where(edge == 2, -p * s0 / s1, q))
    keep = p * r > q * q * (1 + 1e-9)  # positive definite
    p, q, r, s0, s1 = (x[keep] for x in (p, q, r, s0, s1))
    w0, w1 = weightings._project_box(p, q, r, s0, s1)
    worst = _box_kkt_violation(p, q, r, s0, s1, w0, w1)
    assert worst.max() <= 1e-12, worst.max()



def _imtl_g_by_pseudo_inverse(gram: np.ndarray) -> np.ndarray:
    """IMTL-G as TorchJD defines it, w = G⁺d/(1ᵀG⁺d) with d = √diag(G) (0 where |1ᵀG⁺d| < 1e-12),
    with numpy's eigen-decomposition and the README's rank cut-off: eigenvalues at most
    2·ε(float32)·λ_max count as 0."""
    lam, vec = np.linalg.eigh(gram)
    kept = lam > 2 * np.finfo(np.float32).eps * lam.max()
    pinv = (vec[:, kept] / lam[kept]) @ vec[:, kept].T
    v = pinv @ np.sqrt(np.diag(gram))
    return np.zeros(2) if abs(v.sum()) < 1e-12 else v / v.sum()


def _gram(scale_u: float, scale_v: float, cos: float) -> list[list[float]]:
    return [[scale_u**2, cos * scale_u * scale_v], [cos * scale_u * scale_v, scale_v**2]]


def test_imtl_g_is_the_pseudo_inverse_answer_at_its_rank_and_normaliser_cut_offs():
    """Exactly parallel and opposite rows at three scales (rank 1: the pseudo-inverse), eigenvalue
    ratios either side of the rank cut-off, and rows long enough that TorchJD's |1ᵀG⁺d| < 1e-12
    zeroes the weights, each against numpy's pseudo-inverse (``_imtl_g_by_pseudo_inverse``)."""
    grams = []
    for scale in (2.0**-20, 1.0, 2.0**20):  # λ_max below and above 1
        for gram in ([[1.0, 0.5], [0.5, 0.25]], [[1.0, -0.5], [-0.5, 0.25]],  # u = ±2v
                     [[1.0, -1.0], [-1.0, 1.0]]):  # u = -v: G·d = 0
            grams.append(np.array(gram) * scale)  # fmt: skip
    turn = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    for ratio in (2.5, 1.5):  # λ_min/λ_max in float32 epsilons: rank 2, then rank 1
        for scale in (1e-6, 1e3):
            lam = np.diag([scale, ratio * np.finfo(np.float32).eps * scale])
            grams.append(turn @ lam @ turn.T)
    for su, sv, cos in ((1.5e12, 1.5e12, 0.999), (1e12, 1e12, 0.0), (1e12, 3e12, 0.5),
                        (1e11, 1e11, 0.999), (1e12, 1e12, 0.4)):  # fmt: skip
        grams.append(np.array(_gram(su, sv, cos)))
    want = torch.tensor(np.stack([_imtl_g_by_pseudo_inverse(g) for g in grams]))
    got = weightings.imtl_g()(torch.tensor(np.stack(grams)))
    assert (want == 0).all(-1).sum() == 5  # u = -v thrice, and two normalisers under 1e-12
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # u = v of length s: 1ᵀG⁺d = 1/s, exactly 1e-12 at s = 1e12 (kept: TorchJD zeroes below it)
    equal = torch.tensor([[[s * s, s * s], [s * s, s * s]] for s in (1.0, 1e11, 1e12, 1e13)],
                         dtype=torch.float64)  # fmt: skip
    half, zero = [0.5, 0.5], [0.0, 0.0]
    assert weightings.imtl_g()(equal).tolist() == [half, half, half, zero]



def _aligned_mtl_by_eigh(gram: np.ndarray, pref: np.ndarray, scale_mode: str) -> np.ndarray:
    """Aligned-MTL's weights as TorchJD computes them, B·pref with B = √scale·V·Λ^(−1/2)·Vᵀ over
    the eigenvalues kept (scale: the least kept, their median, which numpy's is not for two, or
    their mean), with the README's cut-off (eigenvalues at most 2·ε(float32)·λ_max count as 0)
    and ``pref`` for G = 0."""
    lam, vec = np.linalg.eigh(gram)
    kept = lam > 2 * np.finfo(np.float32).eps * lam.max()
    if not kept.any():
        return pref
    lam, vec = lam[kept], vec[:, kept]
    scale = {"min": lam.min(), "median": lam.min(), "rmse": lam.mean()}[scale_mode]
    return np.sqrt(scale) * (vec / np.sqrt(lam)) @ vec.T @ pref


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_by_eigen_decomposition_in_every_scale_mode(scale_mode):
    """Conflicting, aligned and random Gramians, a rank-one one, G = 0 and diagonal ones exactly at
    and just above the rank cut-off (λ_min = 2·ε(float32)·λ_max: rank one), with an uneven
    preference, against ``_aligned_mtl_by_eigh``; and TorchJD's AlignedMTL where its own cut-off
    (float64's) cannot differ: the well-conditioned ones."""
    _, random = _random_gramians(6, 12)
    cut = 2 * np.finfo(np.float32).eps
    grams = [
        np.array([[1.0, -0.6], [-0.6, 2.0]]), np.array([[4.0, 1.5], [1.5, 1.0]]),
        *random.numpy(), np.array([[1.0, 0.5], [0.5, 0.25]]), np.zeros((2, 2)),
        np.diag([1.0, cut]), np.diag([3.0, 3.0 * cut]), np.diag([1.0, 2 * cut]),
    ]  # fmt: skip
    pref = np.array([0.2, 0.8])
    got = weightings.aligned_mtl(pref=(0.2, 0.8), scale_mode=scale_mode)(
        torch.tensor(np.stack(grams))
    )
    want = torch.tensor(np.stack([_aligned_mtl_by_eigh(g, pref, scale_mode) for g in grams]))
    # atol: G·pref/λ_max, the rank-one rule, is the projection up to λ_min/λ_max ≤ 2.4e-7
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    theirs = aggregation.AlignedMTLWeighting(torch.tensor(pref), scale_mode=scale_mode)
    for gram, ours in zip(grams[:8], got[:8]):
        torch.testing.assert_close(ours, theirs(torch.tensor(gram)), rtol=1e-6, atol=1e-9)


def test_config_has_equal_cosine_with_both_rows():
    rows, gram = _random_gramians(500, 5)
    out = _combined("config", rows, gram)
    cos = (rows * out[:, None]).sum(-1) / (rows.norm(dim=-1) * out.norm(dim=-1, keepdim=True))
    keep = (gram[:, 0, 1] / (gram[:, 0, 0] * gram[:, 1, 1]).sqrt()) > -0.999
    assert torch.allclose(cos[keep, 0], cos[keep, 1], atol=1e-9)
    assert (cos[keep] >= 0).all()



def _config_by_pseudo_inverse(u: np.ndarray, v: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """ConFIG's combination as TorchJD computes it: the unit rows' pseudo-inverse applied to
    ``pref`` gives the direction, normalised, times Σ_i row_i·direction; with the README's cut-off
    (eigenvalues of the unit rows' Gramian at most 4·ε(float32)·λ_max count as 0: singular
    values at most 2·√ε(float32)·σ_max). Zero rows have zero unit rows."""
    units = np.stack([x / np.linalg.norm(x) if np.linalg.norm(x) > 0 else 0 * x for x in (u, v)])
    if not units.any():
        return np.zeros_like(u)
    direction = np.linalg.pinv(units, rcond=2 * np.sqrt(np.finfo(np.float32).eps)) @ pref
    if np.linalg.norm(direction) <= 1e-12 * np.linalg.norm(pref):  # rounding of an exact 0
        return np.zeros_like(u)
    unit = direction / np.linalg.norm(direction)
    return (u @ unit + v @ unit) * unit


@pytest.mark.parametrize("pref", [(1.0, 1.0), (0.2, 0.8), (1.0, 0.0), (0.7, 0.3)])
def test_config_combination_by_the_unit_rows_pseudo_inverse(pref):
    """Random pairs, a zero row (either; the other short or long), two, parallel and opposite
    rows, nearly opposite ones, 1 ± cos either side of the cut-off, with even and uneven
    preferences, against ``_config_by_pseudo_inverse``; TorchJD's ConFIG on
    the pairs its float64 cut-off treats alike. With pref = (1, 1) the direction is û + v̂
    whatever its scale, so only uneven preferences see most of the formula."""
    rows, _ = _random_gramians(10, 13)
    u, v = rows[:, 0], rows[:, 1]
    w = u[0]
    edges = [(0 * w, v[0]), (u[1], 0 * w), (0 * w, 0.3 * v[0] / v[0].norm()),
             (0.2 * u[1] / u[1].norm(), 0 * w), (0 * w, 0 * w), (w, 3 * w), (w, -2 * w),
             (w, -w + 1e-3 * v[1]), (w, 0.5 * w + 1e-3 * v[2])]  # fmt: skip
    e1, e2 = torch.eye(5, dtype=torch.float64)[:2]
    for cos in (-1 + 1.07e-6, -1 + 5e-7, 1 - 1.07e-6, 1 - 5e-7):  # 1 ± cos either side of
        # 4·ε·λ_max (9.5e-7) and of the thresholds a slip would put at 5·ε·λ_max or 4·ε/λ_max
        edges.append((2 * e1, 0.5 * (cos * e1 + math.sqrt(1 - cos * cos) * e2)))
    u = torch.cat([u, torch.stack([a for a, _ in edges])])
    v = torch.cat([v, torch.stack([b for _, b in edges])])
    gram = torch.stack([torch.stack([(u * u).sum(-1), (u * v).sum(-1)], -1),
                        torch.stack([(u * v).sum(-1), (v * v).sum(-1)], -1)], -2)  # fmt: skip
    weights = weightings.config(pref=pref)(gram)
    got = weights[:, :1] * u + weights[:, 1:] * v
    want = torch.tensor(np.stack([
        _config_by_pseudo_inverse(a.numpy(), b.numpy(), np.array(pref)) for a, b in zip(u, v)
    ]))  # fmt: skip
    scale = (u.norm(dim=-1) + v.norm(dim=-1))[:, None]
    torch.testing.assert_close(got / scale.clamp_min(1e-300), want / scale.clamp_min(1e-300),
                               rtol=0, atol=1e-9)  # fmt: skip
    theirs = aggregation.ConFIG(pref_vector=torch.tensor(pref, dtype=torch.float64))
    for i in range(10):
        torch.testing.assert_close(got[i], theirs(torch.stack([u[i], v[i]])), rtol=0,
                                   atol=1e-9 * float(scale[i]))  # fmt: skip


@pytest.mark.parametrize("name", list(weightings.BUILT_IN))
def test_degenerate_gramians_give_finite_weights(name):
    """Zero rows, parallel and opposite rows, a Gramian broken by float32 underflow: each has one
    rule and none gives NaN (a NaN segment is for non-finite dots only)."""
    a, b, c = torch.tensor(
        [
            [0.0, 0.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0], [1.0, 2.0, 4.0], [1.0, -2.0, 4.0],
            [1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1e-40, -1e-20, 1.0], [1e30, 1e15, 1.0],
        ],
        dtype=torch.float64,
    ).unbind(-1)  # fmt: skip
    dots = torch.stack([b, c, a], -1)  # (f·r, r·r, f·f) with u = f, v = r (α = γ = 1)
    coef = weightings.coefficients(dots, weightings.BUILT_IN[name][0](), 1.0, 1.0, whole=False)
    assert torch.isfinite(coef).all(), coef


def test_a_user_weighting_runs_on_every_backend(backend, device):
    layout, retain, forget = _pairs(6, "mgda")
    retain, forget = retain.to(device), forget.to(device)

    def inverse_norms(gram: torch.Tensor) -> torch.Tensor:  # w_i ∝ 1/|row_i|
        norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
        return (1 / norms) / (1 / norms).sum(-1, keepdim=True)

    out = sk.combine_(
        retain.clone(), forget, layout=layout, method=inverse_norms, backend=backend
    )
    for r, f, o in zip(*(layout.segment_views(t) for t in (retain, forget, out))):
        nr, nf = r.norm(), f.norm()
        want = (f / max(nf, 1e-15) + r / max(nr, 1e-15)) / (1 / max(nf, 1e-15) + 1 / max(nr, 1e-15))
        assert torch.allclose(o, want, rtol=1e-5, atol=1e-6 * (nr + nf).item())


def test_a_torchjd_weighting_runs_as_it_is():
    layout, retain, forget = _pairs(7, "upgrad")
    method = sk.weighting_method(sk.torchjd_weighting(aggregation.UPGradWeighting()), "tjd")
    via_torchjd = sk.combine_(retain.clone(), forget, layout=layout, method=method)
    built_in = sk.combine_(retain.clone(), forget, layout=layout, method="upgrad")
    assert torch.allclose(via_torchjd, built_in, rtol=1e-5, atol=1e-7)


def test_a_weighting_of_the_wrong_shape_is_refused_before_the_write():
    layout, retain, forget = _pairs(8, "mgda")
    before = retain.clone()
    with pytest.raises(ValueError, match="weights of shape"):
        sk.combine_(retain, forget, layout=layout, method=lambda g: g[..., 0, :1])
    assert torch.equal(retain, before)
    with pytest.raises(ValueError, match="`method`"):
        sk.combine_(retain, forget, layout=layout, method=42)


def test_a_weighting_callable_is_refused_inside_torch_compile():
    layout, retain, forget = _pairs(9, "mgda")

    def step(r, f):
        return sk.combine_(r, f, layout=layout, method=lambda g: g[..., 0, :])

    with pytest.raises(Exception, match="not supported inside torch.compile"):
        torch.compile(step, fullgraph=True)(retain.clone(), forget)


def test_built_in_methods_list_their_formulas():
    for name in weightings.BUILT_IN:
        m = sk.METHODS[name]
        assert m.weighting is not None and m.is_projection and "w =" in m.formula
    assert math.isfinite(float(weightings.nash_mtl()(torch.eye(2, dtype=torch.float64)[None]).sum()))


def test_gradvac_follows_torchjd_over_a_run_on_every_backend(backend, device):
    """One GradVac (one φ̂ per segment) against one TorchJD GradVac per segment, step after step."""
    layout = sk.GradLayout.from_sizes([30, 100, 7, 64])
    ours = sk.GradVac(beta=0.3)
    theirs = [aggregation.GradVac(beta=0.3) for _ in layout.segments]
    g = torch.Generator().manual_seed(10)
    for step in range(6):
        retain, forget = layout.new_buffer(), layout.new_buffer()
        for r, f in zip(layout.segment_views(retain), layout.segment_views(forget)):
            r.copy_(torch.randn(r.numel(), generator=g))
            f.copy_(torch.randn(f.numel(), generator=g) - (step % 3) * 0.6 * r)
        retain, forget = retain.to(device), forget.to(device)
        out = sk.combine_(retain.clone(), forget, layout=layout, method=ours, backend=backend)
        for j, (r, f, o) in enumerate(zip(*(layout.segment_views(t) for t in (retain, forget, out)))):
            jacobian = torch.stack([f, r]).cpu()
            want = theirs[j](jacobian)
            assert (o.cpu() - want).norm() <= 2e-5 * jacobian.norm(dim=1).sum(), (step, j)



def test_gradvac_weights_follow_torchjd_at_every_scale():
    """GradVac on Gramians of rows from 1e-5 long (eps = 1e-8 then weighs on every cosine) to 30,
    three segments a step, against one TorchJD GradVacWeighting per segment, step after step."""
    ours = weightings.GradVac(beta=0.4)
    scales = [1e-5, 1e-2, 0.3, 30.0]
    theirs = [aggregation.GradVacWeighting(beta=0.4) for _ in range(3 * len(scales))]
    g = torch.Generator().manual_seed(17)
    for step in range(5):
        u = torch.randn(3 * len(scales), 6, generator=g, dtype=torch.float64)
        v = torch.randn(3 * len(scales), 6, generator=g, dtype=torch.float64) - 0.5 * step * u
        size = torch.tensor(scales, dtype=torch.float64).repeat_interleave(3)[:, None]
        rows = torch.stack([u * size, v * size], 1)
        gram = rows @ rows.transpose(1, 2)
        got = ours(gram)
        for j, gj in enumerate(gram):
            torch.testing.assert_close(got[j], theirs[j](gj), rtol=1e-9, atol=1e-12)


def test_gradvac_keeps_the_target_of_a_segment_whose_gramian_is_not_finite_only():
    gradvac = weightings.GradVac(beta=0.5)
    gram = torch.tensor([[[4.0, 1.0], [1.0, 1.0]]] * 3, dtype=torch.float64)
    gradvac(gram)  # φ̂ = ½·cos = 0.25 in each
    gram[1, 0, 0] = math.inf  # cos = 1/(inf + eps) = 0: finite, but the dots are not
    gram[2, 1, 0] = gram[2, 0, 1] = math.nan
    gradvac(gram)
    torch.testing.assert_close(gradvac.phi_hat, torch.tensor([0.375, 0.25, 0.25]).double())


def test_gradvac_state_cosines_may_pass_one_by_rounding_only():
    """A loaded φ̂ may reach ±(1 + 1e-6) (a moving average of cosines rounded past ±1), no more;
    a state saved before any step has none; a state of the wrong form is named in the error."""
    for edge in (1.0, 1 + 1e-6):
        gradvac = weightings.GradVac()
        gradvac.load_state_dict({"beta": 0.5, "eps": 1e-8,
                                 "phi_hat": torch.tensor([edge, -edge], dtype=torch.float64)})
        assert gradvac.phi_hat.tolist() == [edge, -edge]
    with pytest.raises(ValueError, match="cosines"):
        weightings.GradVac().load_state_dict(
            {"beta": 0.5, "eps": 1e-8, "phi_hat": torch.tensor([1 + 2e-6], dtype=torch.float64)}
        )
    fresh = weightings.GradVac(beta=0.2)
    fresh.load_state_dict(weightings.GradVac(beta=0.7).state_dict())  # before any step: no φ̂
    assert fresh.phi_hat is None and fresh.beta == 0.7
    with pytest.raises(ValueError, match=r"Found \['beta', 'momentum'\]\.$"):
        fresh.load_state_dict({"beta": 0.5, "momentum": 0.9})
    with pytest.raises(ValueError, match=r"Found list\.$"):
        fresh.load_state_dict([0.5, 1e-8, None])


def test_gradvac_state_is_checkpointed_reset_and_not_poisoned():
    layout = sk.GradLayout.from_sizes([50, 20])
    g = torch.Generator().manual_seed(11)
    retain, forget = layout.new_buffer(), layout.new_buffer()
    retain.copy_(torch.randn(layout.numel, generator=g))
    forget.copy_(torch.randn(layout.numel, generator=g) - retain)
    first = sk.GradVac()
    assert sk.weighting_method(first).name == "gradvac"  # its method's name, unless given one
    sk.combine_(retain.clone(), forget, layout=layout, method=first)
    saved = first.state_dict()
    second = sk.GradVac()
    second.load_state_dict(saved)
    assert torch.equal(
        sk.combine_(retain.clone(), forget, layout=layout, method=first),
        sk.combine_(retain.clone(), forget, layout=layout, method=second),
    )
    hat = first.phi_hat.clone()
    poisoned = forget.clone()
    layout.segment_views(poisoned)[0][3] = float("nan")
    out = sk.combine_(retain.clone(), poisoned, layout=layout, method=first)
    assert torch.isnan(layout.segment_views(out)[0]).all()
    assert torch.isfinite(first.phi_hat).all() and first.phi_hat[0] == hat[0]
    with pytest.raises(ValueError, match="state of 2 segments"):
        sk.combine_(retain[:50].clone(), forget[:50], method=first)
    first.reset()
    sk.combine_(retain[:50].clone(), forget[:50], method=first)
    assert first.phi_hat.shape == (1,)
    with pytest.raises(ValueError, match="`beta`"):
        sk.GradVac(beta=2.0)


@pytest.mark.parametrize(
    "name, params, error",
    [
        ("upgrad", dict(reg_eps=float("nan")), "`reg_eps`"),
        ("upgrad", dict(norm_eps=-1.0), "`norm_eps`"),
        ("upgrad", dict(pref=(float("nan"), 0.5)), r"`pref\[0\]`"),
        ("upgrad", dict(pref=(1.0,)), "two weights"),
        ("dualproj", dict(pref=(0.0, 0.0)), "some weight"),
        ("dualproj", dict(pref=(0.5, -1.0)), r"`pref\[1\]`"),
        ("aligned_mtl", dict(pref=(0.5, float("inf"))), r"`pref\[1\]`"),
        ("cagrad", dict(c=float("inf")), "`c`"),
        ("cagrad", dict(norm_eps=float("nan")), "`norm_eps`"),
        ("nash_mtl", dict(max_norm=float("nan")), "`max_norm`"),
        ("nash_mtl", dict(max_norm=-1.0), "`max_norm`"),
        ("config", dict(pref="ab"), "two weights"),
        ("upgrad", dict(reg_eps="0.1"), "`reg_eps`"),
    ],
)
def test_bad_weighting_parameters_are_refused_when_the_method_is_made(name, params, error):
    """As the constructors of GRU's and GradVac's parameters check theirs: a NaN threshold made
    every comparison false (upgrad(reg_eps=nan) wrote g_final = 0 everywhere), a NaN or negative
    cap meant "no cap", a one-element preference failed with an IndexError inside the combine."""
    with pytest.raises((ValueError, TypeError), match=error):
        sk.method_with(name, **params)


@pytest.mark.parametrize("beta, eps", [(float("nan"), 1e-8), (0.5, float("nan")), (7, 1e-8),
                                       (0.5, -1.0), (0.5, float("inf"))])  # fmt: skip
def test_gradvac_refuses_non_finite_or_out_of_range_parameters(beta, eps):
    with pytest.raises(ValueError, match="`beta`|`eps`"):
        sk.GradVac(beta=beta, eps=eps)


# --------------------------------------------------------------------------- the O(segments) step
# Exact expected values, written out (mutation testing of weightings.py, issue 24).


def test_weight_dtype_is_float64_except_on_mps():
    assert weightings.weight_dtype(torch.device("cpu")) == torch.float64
    assert weightings.weight_dtype(torch.device("meta")) == torch.float64
    assert weightings.weight_dtype(torch.device("mps")) == torch.float32  # no float64 there


def test_gramians_are_of_the_scaled_rows_with_the_off_diagonal_clamped():
    """G = [[γ²·f·f, γα·f·r], [γα·f·r, α²·r·r]], f·r clamped to ±√(uu·vv) (Cauchy–Schwarz) also
    where uu·vv < 1 (a clamp to a bound of at least 1 passed the other tests)."""
    dots = torch.tensor(
        [[0.5, 1.0, 0.0], [3.0, 1.0, 4.0], [-3.0, 1.0, 4.0], [0.25, 0.0625, 0.0625],
         [0.375, 1.0, 1.0]],
    )  # fmt: skip  (f·r, r·r, f·f), float32 as from the backends
    got = weightings.gramians(dots, alpha=2.0, gamma=0.5)
    uu = torch.tensor([0.0, 1.0, 1.0, 0.015625, 0.25])
    vv = torch.tensor([4.0, 4.0, 4.0, 0.25, 4.0])
    uv = torch.tensor([0.0, 2.0, -2.0, 0.0625, 0.375])
    want = torch.stack([torch.stack([uu, uv], -1), torch.stack([uv, vv], -1)], -2).double()
    assert got.dtype == torch.float64 and torch.equal(got, want)


def _ones(g: torch.Tensor) -> torch.Tensor:
    return torch.ones(g.shape[0], 2, dtype=g.dtype, device=g.device)


def test_coefficients_scale_the_weights_by_gamma_and_alpha_in_the_dots_dtype():
    """(a, b) = (γ·w_0, α·w_1), multiplied in float64 and rounded once to the dots' dtype: with
    float64 dots exactly (0.7, 0.1), not float32's 0.699999988; with float32 dots, float32."""
    dots = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    coef = weightings.coefficients(dots, _ones, alpha=0.1, gamma=0.7, whole=False)
    assert coef.dtype == torch.float64
    assert torch.equal(coef, torch.tensor([[0.7, 0.1], [0.7, 0.1]], dtype=torch.float64))
    coef32 = weightings.coefficients(dots.float(), _ones, alpha=0.1, gamma=0.7, whole=False)
    assert coef32.dtype == torch.float32
    assert torch.equal(coef32, torch.tensor([[0.7, 0.1], [0.7, 0.1]], dtype=torch.float32))
    # and on the dots' device: the scale (γ, α) is made there, not on the CPU
    meta = weightings.coefficients(dots.to("meta"), _ones, alpha=0.1, gamma=0.7, whole=False)
    assert meta.device.type == "meta" and meta.shape == (2, 2)


def test_a_scaler_flag_turns_every_segments_dots_into_nan():
    """``skip_if_non_finite``: a non-finite r·r or f·f in any segment, or a flag set by an
    earlier combine of the step, makes every segment's dots NaN and sets the flag to 1 (never
    more); f·r is not looked at (finite norms bound it); a clean step leaves both alone."""
    dots = torch.tensor([[-1.0, 2.0, 3.0], [0.5, 1.0, 1.0]])
    for flag_before, column, bad in [(0.0, None, False), (0.0, 1, True), (0.0, 2, True),
                                     (0.0, 0, False), (1.0, None, True)]:  # fmt: skip
        found_inf = torch.tensor([flag_before])
        given = dots.clone()
        if column is not None:
            given[1, column] = float("inf")
        got = weightings.skip_if_non_finite(given, found_inf)
        assert found_inf.dtype == torch.float32 and found_inf.shape == (1,)
        assert found_inf.item() == (1.0 if bad else 0.0), (flag_before, column)
        if bad:
            assert got.shape == dots.shape and torch.isnan(got).all(), (flag_before, column)
        else:
            assert torch.equal(got, given), (flag_before, column)
    # wider tables (GRU's [S, NUM_DOTS]): only columns 1 and 2 are norms; the others are not read
    wide = torch.tensor([[-1.0, 2.0, 3.0, float("inf"), float("nan")]])
    found_inf = torch.zeros(1)
    torch.testing.assert_close(
        weightings.skip_if_non_finite(wide, found_inf), wide, rtol=0, atol=0, equal_nan=True
    )
    assert found_inf.item() == 0.0
    # coefficients take the flag: NaN weights where the step is skipped, else as without it
    found_inf = torch.zeros(1)
    coef = weightings.coefficients(dots, _ones, 1.0, 1.0, whole=False, found_inf=found_inf)
    assert torch.equal(coef, weightings.coefficients(dots, _ones, 1.0, 1.0, whole=False))
    assert found_inf.item() == 0.0
    overflowing = dots.clone()
    overflowing[0, 2] = float("inf")
    coef = weightings.coefficients(overflowing, _ones, 1.0, 1.0, whole=False, found_inf=found_inf)
    assert torch.isnan(coef).all() and found_inf.item() == 1.0


def test_affine_segment_takes_the_whole_segments_dots_when_given():
    """A rank holding a shard of a segment passes the whole segment's dots: the weights come
    from those, not from the shard; (a, b) are exact in float64 for float64 gradients whatever
    the dtype of the given dots."""
    g = torch.Generator().manual_seed(12)
    r = torch.randn(7, generator=g, dtype=torch.float64)
    f = torch.randn(7, generator=g, dtype=torch.float64)

    def diagonal(gram: torch.Tensor) -> torch.Tensor:  # w = (u·u, v·v)
        return torch.stack([gram[:, 0, 0], gram[:, 1, 1]], -1)

    dots = (torch.tensor(0.0), torch.tensor(4.0), torch.tensor(9.0))  # float32, as reduced
    got = weightings.affine_segment(r, f, alpha=2.0, gamma=0.5, eps=0.0, weighting=diagonal,
                                    dots=dots)  # fmt: skip
    a, b = 0.5 * (0.25 * 9.0), 2.0 * (4.0 * 4.0)  # γ·γ²·f·f, α·α²·r·r
    assert got.dtype == torch.float64 and torch.equal(got, a * f + b * r)
    got = weightings.affine_segment(r, f, alpha=0.1, gamma=0.7, eps=0.0, weighting=_ones,
                                    dots=dots)  # fmt: skip
    assert torch.equal(got, 0.7 * f + 0.1 * r)
    own = weightings.affine_segment(r, f, alpha=2.0, gamma=0.5, eps=0.0, weighting=diagonal)
    rr, ff = float(r @ r), float(f @ f)
    torch.testing.assert_close(own, 0.5 * 0.25 * ff * f + 2.0 * 4.0 * rr * r, rtol=1e-12, atol=0)


def test_torchjd_weighting_adapter_names_and_shapes():
    adapted = sk.torchjd_weighting(aggregation.UPGradWeighting())
    assert adapted.__name__ == "torchjd_UPGradWeighting"
    empty = adapted(torch.zeros(0, 2, 2, dtype=torch.float64))
    assert empty.shape == (0, 2) and empty.dtype == torch.float64
    # weights returned in another dtype are cast to the Gramians' (float64 here)
    in_float32 = sk.torchjd_weighting(lambda g: torch.tensor([0.5, 0.25], dtype=torch.float32))
    got = in_float32(torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    assert got.dtype == torch.float64 and got.tolist() == [[0.5, 0.25]] * 3
    with pytest.raises(TypeError, match="`weighting` should be a TorchJD Weighting"):
        sk.torchjd_weighting(3)


def test_weighting_parameters_at_their_bounds_are_accepted_and_messages_say_the_range():
    assert sk.GradVac(beta=1.0).beta == 1.0 and sk.GradVac(beta=0, eps=0).eps == 0.0
    assert isinstance(sk.GradVac(beta=1).beta, float)
    for name, params in [("cagrad", dict(c=0.0)), ("upgrad", dict(pref=(0.0, 1.0), reg_eps=0)),
                         ("nash_mtl", dict(max_norm=0))]:  # fmt: skip
        sk.method_with(name, **params)
    with pytest.raises(ValueError, match=r"`c` should be >= 0 and finite\. Found `c = -1"):
        sk.method_with("cagrad", c=-1)
    with pytest.raises(ValueError, match=r"`beta` should be in \[0, 1\] and finite"):
        sk.GradVac(beta=1.5)
    with pytest.raises(TypeError, match="`c`"):
        sk.method_with("cagrad", c=True)  # a bool is not a number here


def test_upgrad_normalises_a_gramian_whose_trace_is_exactly_norm_eps():
    """TorchJD normalises G by its trace unless the trace is below ``norm_eps``: at the bound
    itself it does (a conflicting pair then gets PCGrad-like weights, not the plain mean)."""
    g = torch.tensor([[5e-5, -4e-5], [-4e-5, 5e-5]], dtype=torch.float64)
    assert g.trace().item() == 1e-4  # the default norm_eps, exactly
    want = aggregation.UPGradWeighting()(g)
    got = sk.METHODS["upgrad"].weighting(g[None])[0]
    torch.testing.assert_close(got, want)
    assert got[0] > 0.85  # not the mean (0.5, 0.5) of a too-small Gramian


@pytest.mark.parametrize("name, theirs", [("upgrad", aggregation.UPGradWeighting),
                                          ("dualproj", aggregation.DualProjWeighting)])  # fmt: skip
def test_an_uneven_preference_reaches_each_row_as_torchjd_gives_it(name, theirs):
    g = torch.tensor([[1.0, -0.6], [-0.6, 2.0]], dtype=torch.float64)  # a conflicting pair
    pref = torch.tensor([0.2, 0.8], dtype=torch.float64)
    got = sk.method_with(name, pref=(0.2, 0.8)).weighting(g[None])[0]
    torch.testing.assert_close(got, theirs(pref_vector=pref)(g))
    for param in ("norm_eps", "reg_eps"):
        with pytest.raises(ValueError, match=rf"^Parameter `{param}` should be >= 0 and finite"):
            sk.method_with(name, **{param: -1.0})
