"""The contract's properties (README, Contract), checked directly on every backend, and
hand-computed examples."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_ONLY_BACKENDS
from hypothesis import given
from hypothesis import strategies as st
from oracle import conflicts
from strategies import CONFIGS, DTYPES, SEEDS, configured, fill_pair, layouts, state_for

import sago_kernels as sk

NONNEG = st.sampled_from([0.0, 0.25, 1.0, 3.0])


def _combine(backend, *args, config=None, **kwargs):
    with configured(backend, config):
        return sk.combine_(*args, backend=backend, **kwargs)


# --------------------------------------------------------------------------- hand-computed

R = [1.0, -2.0, 3.0, 0.0]
F = [-1.0, 1.0, 0.5, 2.0]  # f·r = -1.5 < 0, r·r = 14, f·f = 6.25
HAND = {
    "sum": [0.0, -1.0, 3.5, 2.0],
    # conflicts at 0 (f<0<r) and 1 (r<0<f); r_3 = 0 never conflicts
    "sago": [1.0, -2.0, 0.5, 2.0],
    "sago_prefer_retain": [1.0, -2.0, 3.5, 2.0],
    # c = -1.5/14: f − c·r + r
    "pcgrad": [-1 + 1.5 / 14 + 1, 1 - 3 / 14 - 2, 0.5 + 4.5 / 14 + 3, 2.0],
    "pcgrad_global": [-1 + 1.5 / 14 + 1, 1 - 3 / 14 - 2, 0.5 + 4.5 / 14 + 3, 2.0],
    # c = -1.5/6.25 = -0.24: f + r + 0.24·f
    "blur": [-0.24, -0.76, 3.62, 2.48],
}


@pytest.mark.parametrize("method", list(HAND))
def test_hand_computed_example(backend, device, method):
    r = torch.tensor(R, device=device)
    out = _combine(backend, r, torch.tensor(F, device=device), method=method, eps=0.0)
    torch.testing.assert_close(out.cpu(), torch.tensor(HAND[method]), rtol=1e-6, atol=1e-6)


def test_pcgrad_is_per_segment_and_global_variants_differ(backend, device):
    # segment 0 conflicts (f·r < 0), segment 1 agrees: module-wise PCGrad projects only segment 0
    layout = sk.GradLayout.from_sizes([2, 2], alignment=1)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0], device=device)
    f = torch.tensor([-1.0, 1.0, 3.0, 3.0], device=device)
    seg = _combine(backend, r.clone(), f, layout=layout, method="pcgrad", eps=0.0)
    glob = _combine(backend, r.clone(), f, layout=layout, method="pcgrad_global", eps=0.0)
    torch.testing.assert_close(seg.cpu(), torch.tensor([1.0, 1.0, 4.0, 4.0]))  # c0 = -1: f + r + r
    torch.testing.assert_close(glob.cpu(), torch.tensor([0.0, 1.0, 4.0, 4.0]))  # f·r = 5 > 0: sum
    f2 = torch.tensor([-3.0, 1.0, 1.0, 1.0], device=device)  # global f·r = -1, c = -1/3
    glob = _combine(backend, r.clone(), f2, layout=layout, method="pcgrad_global", eps=0.0)
    torch.testing.assert_close(
        glob.cpu(), torch.tensor([-3 + 1 / 3 + 1, 1.0, 1 + 1 / 3 + 1, 1 + 1 / 3 + 1])
    )


# --------------------------------------------------------------------------- SAGO


@given(
    layout=layouts(),
    dtype=st.sampled_from(DTYPES),
    seed=SEEDS,
    alpha=NONNEG,
    gamma=NONNEG,
    config=st.sampled_from(CONFIGS),
)
def test_sago_sign_alignment_and_disjoint_support(
    backend, device, layout, dtype, seed, alpha, gamma, config
):
    """g·r ≥ 0 element-wise; g = round(α·r) exactly where conflicting, round(γ·f) elsewhere."""
    r, f = fill_pair(layout, dtype, seed, False, device)
    out = _combine(
        backend,
        r.clone(),
        f,
        layout=layout,
        method="sago",
        alpha=alpha,
        gamma=gamma,
        out=torch.zeros_like(r),
        config=config,
    )
    for s in layout.segments:
        rs, fs, os_ = r[s.start : s.end].float(), f[s.start : s.end].float(), out[s.start : s.end]
        assert ((os_.double() * rs.double()) >= 0).all(), "SAGO output opposes the retain gradient"
        conflict = conflicts(fs, rs)
        expect = torch.where(conflict, alpha * rs, gamma * fs).to(dtype)
        assert torch.equal(os_, expect), "gate decision or rounding differs from the contract"


def test_sago_decides_on_signs_not_products(backend, device):
    # products of these underflow to 0 in float32 (and even float64 for the last pair)
    r = torch.tensor([1e-30, -1e-30, 1e-45, 0.0, -0.0, 5e-324 * 0], device=device)
    f = torch.tensor([-1e-30, -1e-30, -1e-45, -1.0, 1.0, 1.0], device=device)
    out = _combine(backend, r.clone(), f, method="sago")
    expect = torch.tensor([1e-30, -1e-30, 1e-45, -1.0, 1.0, 1.0])
    assert torch.equal(out.cpu().view(torch.int32), expect.view(torch.int32))


# --------------------------------------------------------------------------- PCGrad


@given(
    layout=layouts(max_segments=4), seed=SEEDS, alpha=NONNEG, gamma=st.sampled_from([0.5, 1.0, 2.0])
)
def test_pcgrad_projected_forget_part_is_orthogonal(backend, device, layout, seed, alpha, gamma):
    """Where f·r < 0: with α = 0, g = γ·(f − c·r) is orthogonal to r relative to ‖g_f‖‖g_r‖
    (the part computed from g_f); with α ≥ 0, cos(g, r) ≥ 0 per segment. Up to float32
    summation error, n·u, and the eps term."""
    r, f = fill_pair(layout, torch.float32, seed, False, device)
    projected = _combine(
        backend, r.clone(), f, layout=layout, method="pcgrad", alpha=0.0, gamma=gamma
    )
    out = _combine(backend, r.clone(), f, layout=layout, method="pcgrad", alpha=alpha, gamma=gamma)
    for s in layout.segments:
        rs, fs, ps, os_ = (t[s.start : s.end].double() for t in (r, f, projected, out))
        d, nr, nf = fs @ rs, rs.norm(), fs.norm()
        if not (d < 0) or nr == 0 or nf == 0:
            continue
        tol = 4 * max(s.numel, 1) * 2**-24
        # what eps leaves of the component along r: γ·(d − c·n) = γ·d·eps/(n + eps)
        slack = gamma * abs(d) * 1e-10 / (nr * nr + 1e-10)
        # float32 products and results below 2**-126 lose absolute precision, 2**-149 per step;
        # so may the coefficient c = d/(n + eps) itself (e.g. f = 1e-40, r = -2e12: c = f/r is
        # below every float32 and becomes 0), which g = γ·(f − c·r) carries as γ·2**-149·|r|
        # per element, so γ·2**-149·r·r in g·r
        underflow = 4 * 2.0**-149 * (1 + gamma) * (rs.abs().sum() + s.numel)
        underflow = underflow + gamma * 2.0**-149 * (rs @ rs)
        err = 2 * tol * gamma * (nf * nr + ps.abs() @ rs.abs()) + 2 * slack + underflow
        assert abs(ps @ rs) <= err
        assert (os_ @ rs) >= -err - tol * alpha * nr * nr


# --------------------------------------------------------------------------- sum


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_is_exactly_one_rounding(backend, device, dtype):
    """γ·f + α·r in float32, rounded once; includes ties, subnormals, overflow, ±0, NaN, ±Inf."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(300, generator=g)
    tie = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-11, 1 + 3 * 2**-11])
    special = torch.tensor(
        [
            0.0,
            -0.0,
            1e-40,
            -1e-39,
            6e-8,
            3e38,
            65504.0,
            7e4,
            float("nan"),
            float("inf"),
            -float("inf"),
        ]
    )
    f32 = torch.cat([base, tie, special])
    r32 = torch.cat([torch.randn(300, generator=g), torch.zeros(5), special.flip(0)])
    r, f = r32.to(dtype).to(device), f32.to(dtype).to(device)
    alpha, gamma = 1.0, 1.0
    out = _combine(backend, r.clone(), f, method="sum", alpha=alpha, gamma=gamma)
    expect = (gamma * f.float() + alpha * r.float()).to(dtype)
    got_bits, want_bits = (
        out.view(torch.int16 if dtype != torch.float32 else torch.int32),
        expect.view(out.view(torch.int16 if dtype != torch.float32 else torch.int32).dtype),
    )
    nan = torch.isnan(expect)
    assert torch.equal(torch.isnan(out), nan)
    assert torch.equal(got_bits[~nan], want_bits[~nan])


# --------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_non_finite_input_never_disappears(backend, device, method, bad):
    layout = sk.GradLayout.from_sizes([5, 7, 3], alignment=16)
    g = torch.Generator().manual_seed(0)
    r = layout.new_buffer(device=device)
    f = layout.new_buffer(device=device)
    for v in layout.segment_views(r) + layout.segment_views(f):
        v.copy_(torch.randn(v.numel(), generator=g))
    bad_index = layout.segments[1].start + 2
    f[bad_index] = bad
    out, stats = _combine(
        backend, r.clone(), f, layout=layout, method=method, stats=True, **state_for(method, r)
    )
    segs = layout.segment_views(out)
    scope = sk.METHODS[method].scope
    assert not torch.isfinite(out[bad_index])
    if method.startswith("sago"):
        assert torch.isnan(out[bad_index])
    if scope == "segment":
        assert torch.isnan(segs[1]).all(), "the segment with a non-finite dot is NaN in full"
        assert torch.isfinite(segs[0]).all() and torch.isfinite(segs[2]).all(), (
            "other segments unaffected"
        )
    if scope == "global":
        assert all(torch.isnan(s).all() for s in segs)
    if scope == "element":
        finite = torch.ones_like(out, dtype=torch.bool)
        finite[bad_index] = False
        for s in layout.segments:
            assert torch.isfinite(out[s.start : s.end][finite[s.start : s.end]]).all()
    assert not torch.isfinite(stats.per_segment.dot_fr[1])
    assert torch.isfinite(stats.per_segment.dot_fr[0])


def test_projection_overflowing_weight_is_nan_segment(backend, device):
    # r·r underflows to 0 in float32 while f·r < 0; with eps = 0 the weight is infinite
    layout = sk.GradLayout.from_sizes([2, 2], alignment=1)
    r = torch.tensor([1e-30, 0.0, 1.0, 2.0], device=device)
    f = torch.tensor([-1e20, 0.0, 1.0, 1.0], device=device)
    out = _combine(backend, r.clone(), f, layout=layout, method="pcgrad", eps=0.0)
    assert torch.isnan(out[:2]).all()
    torch.testing.assert_close(out[2:].cpu(), torch.tensor([2.0, 3.0]))


# Finite inputs whose float32 dots overflow in some summation orders and not in others: f·f is
# inf in float32 however it is summed, f·r is inf, NaN or 0 depending on the order.
BIG = 2e38
OVERFLOWING = [[BIG, BIG, -BIG, -BIG], [BIG, -BIG, BIG, -BIG], [-BIG, BIG, BIG, -BIG]]


@pytest.mark.parametrize("big_in", ["forget", "retain"])
@pytest.mark.parametrize("values", OVERFLOWING, ids=["paired", "alternating", "nested"])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_dots_overflowing_float32_are_decided_alike_by_every_backend(
    device, method, values, big_in
):
    """One rule on every backend (reference.segment_dots): a segment whose float32 r·r or f·f is
    not finite is NaN for projection methods, and statistics built on a dot whose vectors' norms
    overflow are NaN. Before, each backend's summation order (or, natively, double width)
    decided, and they disagreed."""
    layout = sk.GradLayout.from_sizes([4, 3], alignment=1)
    ordinary = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 1.0, 2.0])]
    big, ones = torch.tensor(values), torch.ones(4)
    r = torch.cat([big if big_in == "retain" else ones, ordinary[0]]).to(device)
    f = torch.cat([big if big_in == "forget" else ones, ordinary[1]]).to(device)
    results = {}
    for name in sk.backends():
        if device.type != "cpu" and name in CPU_ONLY_BACKENDS:
            continue
        out, stats = sk.combine_(r.clone(), f, layout=layout, method=method, stats=True,
                                 backend=name, **state_for(method, r))  # fmt: skip
        results[name] = out.cpu(), stats.table.cpu()
    m = sk.METHODS[method]
    out, table = results["reference"]
    if m.is_projection:
        assert torch.isnan(out[:4]).all(), "the overflowing segment is NaN"
        assert torch.isnan(out[4:]).all() == (m.scope == "global")
    else:
        assert torch.isfinite(out).all()
    assert torch.isnan(table[[0, 2], 0]).all(), "dot_fr of an overflowing norm is NaN"
    assert torch.isnan(table[[0, 2], 4]).all(), "and so is cos_fr"
    assert torch.isfinite(table[1, :3]).all()
    for name, (got, got_table) in results.items():
        assert torch.equal(torch.isnan(got), torch.isnan(out)), name
        torch.testing.assert_close(got, out, equal_nan=True, msg=name)
        for kind in (torch.isnan, torch.isinf):
            assert torch.equal(kind(got_table), kind(table)), f"{name}: {got_table} vs {table}"
        torch.testing.assert_close(got_table, table, equal_nan=True, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_run_to_run_bitwise_determinism(backend, device, method):
    layout = sk.GradLayout.from_sizes([130, 0, 1, 77, 300], alignment=16)
    r, f = fill_pair(layout, torch.bfloat16, 11, False, device)
    results = []
    for _ in range(2):
        out, stats = _combine(
            backend, r.clone(), f, layout=layout, method=method, stats=True, config=CONFIGS[0],
            **state_for(method, r),
        )
        results.append((out.view(torch.int16).clone(), stats.table.view(torch.int32).clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


# --------------------------------------------------------------------------- statistics


def test_stats_cosine_of_zero_vector_is_zero(backend, device):
    layout = sk.GradLayout.from_sizes([4, 4, 0], alignment=1)
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0], device=device)
    f = torch.zeros(8, device=device)
    f[:4] = torch.tensor([1.0, -1.0, 1.0, -1.0], device=device)
    _, stats = _combine(backend, r.clone(), f, layout=layout, method="sago", stats=True)
    seg = stats.per_segment
    assert seg.cos_fr[1] == 0 and seg.cos_out_r[1] == 0 and seg.cos_out_f[1] == 0
    assert seg.norm_r[2] == 0 and seg.cos_fr[2] == 0 and seg.conflict_fraction[2] == 0
    # segment 0: conflicts at 1 and 3 of 4
    assert seg.conflict_fraction[0] == 0.5
    assert stats.total.conflict_fraction == 2 / 8
    torch.testing.assert_close(seg.dot_fr[0].cpu(), torch.tensor(-2.0))
    torch.testing.assert_close(stats.total.norm_r.cpu(), torch.tensor(30.0).sqrt())
    d = stats.to_dict()
    assert set(d) == set(sk.FIELDS) and isinstance(d["cos_fr"], float)
    assert "total" in stats.format()


def test_stats_stay_on_device_and_match_across_backends(device):
    layout = sk.GradLayout.from_sizes([50, 3, 200], alignment=16)
    r, f = fill_pair(layout, torch.float32, 5, False, device)
    tables = {}
    for name in sk.backends():
        if device.type != "cpu" and name in CPU_ONLY_BACKENDS:
            continue
        out, stats = sk.combine_(
            r.clone(), f, layout=layout, method="pcgrad", stats=True, backend=name
        )
        assert stats.table.device == r.device and stats.table.dtype == torch.float32
        assert stats.per_segment.cos_out_r.shape == (3,) and stats.total.cos_out_r.dim() == 0
        tables[name] = stats.table.cpu()
    for name, table in tables.items():
        torch.testing.assert_close(table, tables["reference"], rtol=1e-5, atol=1e-6, msg=name)
