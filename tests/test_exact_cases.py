"""Small cases with exact or oracle-derived expected values, each closing a gap that a planted bug
or a surviving mutant showed (issue 24). Each test's docstring names the bug it fails on.

Expected values come from ``oracle.py`` or are written out here; none from ``sago_kernels``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from oracle import assert_output_matches, assert_stats_match, bits, gru_truth, truth

import sago_kernels as sk

PROJECTIONS = ["pcgrad", "pcgrad_global", "gru", "gru_global"]


def _combine(backend, retain, forget, method, **kwargs):
    return sk.combine_(retain, forget, method=method, backend=backend, **kwargs)


# --------------------------------------------------------------------------- eps = 0


@pytest.mark.parametrize("method", PROJECTIONS)
def test_eps_zero_with_an_all_zero_retain_segment_is_gamma_f(backend, device, method):
    """eps = 0 (allowed) and a segment whose g_r is all zero (one-buffer mode's g_r for every
    parameter no retain gradient reached): d = 0 is no conflict, so c = 0 and g = γ·f exactly.
    Fails on PCGrad's clamp ``d < 0`` written ``d <= 0`` (then c = 0/0: NaN)."""
    layout = sk.GradLayout.from_sizes([5, 3], alignment=1)
    f = torch.tensor([1.5, -2.0, 0.25, 3.0, -1.0, 0.5, -0.75, 2.0], device=device)
    r = torch.zeros(8, device=device)
    if not method.endswith("global"):  # a second segment that conflicts, beside the zero one
        r[5:] = torch.tensor([-1.0, 2.0, -0.5])
    extra = {"state": torch.zeros(8, device=device)} if method.startswith("gru") else {}
    out = _combine(backend, r.clone(), f, method, layout=layout, gamma=0.5, eps=0.0, **extra)
    assert torch.equal(out[:5], 0.5 * f[:5]), out  # bits: 0.5·f is exact
    if not method.endswith("global"):
        # d = f·m' < 0 in the second segment: the projection ran there, γ·f was changed
        assert torch.isfinite(out[5:]).all() and not torch.equal(out[5:], 0.5 * f[5:])


def test_eps_zero_in_one_buffer_mode_keeps_unreached_parameters_finite(backend, device):
    """One-buffer mode combines each parameter no retain gradient reached with g_r = 0; with
    eps = 0 and PCGrad that is γ·g_f, not NaN (the clamp bug again, through the synthesizer)."""
    torch.manual_seed(0)
    model = _Net().to(device)
    synth = sk.GradientSynthesizer(
        model, method="pcgrad", gamma=0.5, eps=0.0, backend=backend, buffers=1
    )
    x = torch.randn(4, 5, device=device)
    twin = copy.deepcopy(model)
    (g_f,) = torch.autograd.grad(twin(x, "forget").square().mean(), [twin.forget_only.weight])
    with synth.forget():
        model(x, "forget").square().mean().backward()
    with synth.retain():
        model(x, "retain").square().mean().backward()
    synth.combine_()
    assert torch.equal(model.forget_only.weight.grad, 0.5 * g_f)


# --------------------------------------------------------------------------- GRU's average


@pytest.mark.parametrize("beta", [0.8, 0.25])
def test_gru_moving_average_weighs_the_new_gradient_by_beta(backend, device, beta):
    """m' = β·r + (1 − β)·m, β and 1 − β rounded to float32 (README, Semantics), bit for bit;
    and g = γ·f + κ·α·r − γ·c·m' from it. Fails on the weight 1 − β written β."""
    r = torch.tensor([1.0, -2.0, 3.0, 0.5], device=device)
    f = torch.tensor([-2.0, 1.0, -1.0, 4.0], device=device)
    m = torch.tensor([4.0, 1.0, -2.0, 2.0], device=device)
    state = m.clone()
    method = sk.method_with("gru", beta=beta)
    out = _combine(backend, r.clone(), f, method, state=state)
    b32 = torch.tensor(beta, dtype=torch.float32)
    k32 = torch.tensor(1.0 - beta, dtype=torch.float32)
    want_m = b32 * r.cpu() + k32 * m.cpu()
    assert torch.equal(bits(state.cpu()), bits(want_m))
    m64, f64, r64 = want_m.double(), f.double().cpu(), r.double().cpu()
    d = f64 @ m64
    c = d / (m64 @ m64 + 1e-10) if d < 0 else 0.0
    torch.testing.assert_close(out.double().cpu(), f64 - c * m64 + r64, rtol=1e-6, atol=1e-6)


def test_gru_segment_whose_f_dot_f_overflows_is_nan_and_keeps_its_state(backend, device):
    """f·f is one of the three dots that must be finite (README, GRU) even where f·m' is: with
    m' = 0, f·m' = 0 while f·f overflows float32. The segment is NaN and keeps its state; the
    other segment is combined. Fails on a finiteness check that skips f·f."""
    layout = sk.GradLayout.from_sizes([2, 2], alignment=1)
    f = torch.tensor([3e19, -3e19, 1.0, 2.0], device=device)
    r = torch.tensor([0.0, 0.0, 1.0, -1.0], device=device)
    state = torch.zeros(4, device=device)
    out = _combine(backend, r.clone(), f, "gru", layout=layout, state=state)
    assert torch.isnan(out[:2]).all() and torch.isfinite(out[2:]).all()
    assert torch.equal(state[:2], torch.zeros(2, device=device))
    assert torch.equal(state[2:].cpu(), torch.tensor(0.8, dtype=torch.float32) * r[2:].cpu())


# --------------------------------------------------------------------------- one-buffer mode


class _Net(torch.nn.Module):
    """Every parameter reached by both losses except ``forget_only`` (g_r = 0), which comes
    first (the *last* parameter in the synthesizer's order is combined by its retain hook) or,
    with ``unreached_last``, last (it is combined at ``combine_()``, with g_r = 0)."""

    def __init__(self, unreached_last: bool = False):
        super().__init__()
        if not unreached_last:
            self.forget_only = torch.nn.Linear(5, 3, bias=False)
        self.a = torch.nn.Linear(5, 7)
        self.b = torch.nn.Linear(7, 3)
        if unreached_last:
            self.forget_only = torch.nn.Linear(5, 3, bias=False)

    def forward(self, x, task):
        y = self.b(torch.tanh(self.a(x)))
        return y + self.forget_only(x) if task == "forget" else y


def _flat_grads(model, loss_fn, params) -> torch.Tensor:
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


@pytest.mark.parametrize("unreached_last", [False, True])
@pytest.mark.parametrize("method", ["sago", "pcgrad", "mgda"])  # (stateful methods: buffers=2)
def test_one_buffer_mode_combines_every_parameter_as_the_oracle(
    backend, device, method, unreached_last
):
    """g_final of every parameter, the last one included, and the step's statistics, against
    the oracle on g_r and g_f taken apart by autograd. Fails on one-buffer mode skipping any
    parameter's combine (its g_f would be left as g_final) or its statistics row."""
    torch.manual_seed(0)
    model = _Net(unreached_last).to(device)
    synth = sk.GradientSynthesizer(
        model, method=method, alpha=0.7, gamma=1.3, backend=backend, buffers=1
    )
    params = list(synth.params)
    assert params[-1] is (model.forget_only.weight if unreached_last else model.b.bias)
    twin = copy.deepcopy(model)
    twin_params = [dict(twin.named_parameters())[n] for n in synth.names]
    g = torch.Generator().manual_seed(2)
    xf, xr = (torch.randn(6, 5, generator=g).to(device) for _ in range(2))

    def forget_loss(net):
        return -(net(xf, "forget") - 1).square().mean()

    def retain_loss(net):
        return (net(xr, "retain") - 1).square().mean()

    f = _flat_grads(twin, forget_loss, twin_params).detach()
    r = _flat_grads(twin, retain_loss, twin_params).detach()
    sizes = [p.numel() for p in params]
    with synth.forget():
        forget_loss(model).backward()
    with synth.retain():
        retain_loss(model).backward()
    stats = synth.combine_()
    out = torch.cat([p.grad.reshape(-1) for p in params])

    m = sk.METHODS[method]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    for i, (name, n) in enumerate(zip(synth.names, sizes)):  # one parameter: one segment
        seg = sk.GradLayout.single(n)
        rs, fs = r[offsets[i] : offsets[i + 1]], f[offsets[i] : offsets[i + 1]]
        want = truth(rs, fs, seg, m, 0.7, 1.3, 1e-10)
        got = out[offsets[i] : offsets[i + 1]]
        assert_output_matches(got, want, seg, torch.float32, context=f"{method}/{name}")
    packed = sk.GradLayout.from_sizes(sizes, alignment=1)
    assert_stats_match(stats.table, r, f, out, packed, context=method)


# --------------------------------------------------------------------------- gru.py, reference.py


def test_gru_coefficients_are_float32_whatever_the_dots_dtype():
    """``gru.coefficients`` computes in float32, as every backend's dots are (documented)."""
    from sago_kernels import gru

    dots = torch.tensor([[1.0, 2.0, 3.0, -1.0 / 3.0, 0.1]], dtype=torch.float64)
    got = gru.coefficients(dots, 0.7, 1.3, 1e-10, 1.0, whole=False)
    assert got.dtype == torch.float32
    assert torch.equal(got, gru.coefficients(dots.float(), 0.7, 1.3, 1e-10, 1.0, whole=False))
    fm, mm = torch.tensor(-1.0 / 3.0), torch.tensor(0.1)  # float32, as documented
    want = torch.stack([torch.tensor(1.3), torch.tensor(0.7), -1.3 * (fm / (mm + 1e-10))])
    assert torch.equal(got[0], want)


@pytest.mark.parametrize("n", [4096 + 5, 3 * 4096 + 17, 256 * 4096 + 3 * 4096 + 5])
def test_fixed_order_dots_of_many_blocks_and_chunks_are_exact_on_integers(n):
    """Dots longer than a block (4096) and than a chunk (2**20), on small integers: every partial
    sum is an integer below 2**24, so any correct order gives the exact dot, and a block dropped,
    counted twice or misplaced shows (the fuzz's segments are all shorter than a block)."""
    from sago_kernels.reference import fixed_order_dots

    g = torch.Generator().manual_seed(n)
    x = torch.randint(-3, 4, (n,), generator=g).float()
    y = torch.randint(0, 3, (n,), generator=g).float()
    pairs = [(0, 1), (1, 1), (0, 0), (1, 0)]
    got = fixed_order_dots([x, y], pairs)
    vecs = [x.long(), y.long()]
    want = [int(vecs[i] @ vecs[j]) for i, j in pairs]
    assert got.dtype == torch.float32 and got.tolist() == want
    empty = torch.zeros(0, dtype=torch.float64)
    none = fixed_order_dots([empty, empty], pairs)
    assert none.dtype == torch.float64 and none.tolist() == [0.0] * 4
    # the block sums are added in float64: 2**24 + 1 + 1 is 2**24 + 2, where float32 adds to 2**24
    ones = torch.zeros(3 * 4096)
    ones[:4096], ones[4096], ones[2 * 4096] = 64.0, 1.0, 1.0
    assert fixed_order_dots([ones], [(0, 0)]).tolist() == [2.0**24 + 2]
    # float64 vectors are multiplied and summed in float64 (a float32 product would be ~1e-8 off)
    x64, y64 = x.double() / 3, y.double() / 7
    wide = fixed_order_dots([x64, y64], [(0, 1)])
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, (x64 * y64).sum()[None], rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- stats.py


def test_combine_stats_fields_dict_and_text_table():
    """``CombineStats``: each field is its column (the segments' rows, then the total row), the
    dict is the total row, and the text table has one line per segment (by name, or index when
    unnamed), at most ``max_rows`` of them, then the total."""
    from sago_kernels.stats import FIELDS, CombineStats

    table = torch.arange(32, dtype=torch.float32).reshape(4, 8) / 7
    stats = CombineStats.from_table("sago", table)
    assert stats.method == "sago" and stats.table is table
    for j, name in enumerate(FIELDS):
        assert torch.equal(getattr(stats.per_segment, name), table[:-1, j]), name
        assert torch.equal(getattr(stats.total, name), table[-1, j]), name
    assert stats.to_dict() == dict(zip(FIELDS, table[-1].tolist()))

    def row(label, values, width):
        return f"{label:<{width}}" + "".join(f"{x:>18.6g}" for x in values.tolist())

    head = "".join(f"{f:>18}" for f in FIELDS)
    width = len("head.weight") + 2
    lines = stats.format(names=["embed", None, "head.weight"], max_rows=2).splitlines()
    assert lines == [
        f"{'segment':<{width}}" + head,
        row("embed", table[0], width),
        row("1", table[1], width),
        "... 1 more segments",
        row("total", table[3], width),
    ]
    lines = stats.format().splitlines()
    assert lines == [f"{'segment':<7}" + head] + [
        row(label, table[i], 7) for i, label in enumerate(["0", "1", "2", "total"])
    ]
    assert stats.format(max_rows=3) == stats.format()  # exactly max_rows segments: all shown
    many = CombineStats.from_table("sum", torch.zeros(22, 8)).format().splitlines()
    assert len(many) == 23 and many[-2] == "... 1 more segments"  # 20 rows by default


# --------------------------------------------------------------------------- weightings.py


def _rows(seed: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` pairs of rows (u, v) in R^5 of every regime (conflicting, aligned, unequal norms),
    and their Gramians, in float64."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 5, generator=g, dtype=torch.float64)
    v = torch.randn(n, 5, generator=g, dtype=torch.float64)
    v[::3] = -0.7 * u[::3] + 0.3 * v[::3]  # conflicting
    v[1::3] = 4.0 * u[1::3] + v[1::3]  # aligned, unequal norms
    return u, v, _gramians(u, v)


def _gramians(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[[u·u, u·v], [u·v, v·v]] of each pair of rows, [n, 2, 2]."""
    uv = (u * v).sum(-1)
    return torch.stack([torch.stack([(u * u).sum(-1), uv], -1),
                        torch.stack([uv, (v * v).sum(-1)], -1)], -2)  # fmt: skip


def test_nash_mtl_weights_solve_the_bargaining_equation_in_every_regime():
    """Nash-MTL's weights solve G·w = 1/w (the Nash bargaining solution for two tasks), found
    here by its defining equation rather than TorchJD's iterations (which reach it only for
    aligned rows of similar norms); with ``max_norm`` the combination is scaled to that norm
    when longer. An independent check of the closed form."""
    from sago_kernels import weightings

    _, _, gram = _rows(5)
    exists = (gram[:, 0, 1] + (gram[:, 0, 0] * gram[:, 1, 1]).sqrt()) > 1e-9
    w = weightings.nash_mtl(max_norm=0.0)(gram)[exists]
    g = gram[exists]
    gw_w = (g @ w[..., None])[..., 0] * w
    torch.testing.assert_close(gw_w, torch.ones_like(w), rtol=1e-9, atol=0)
    norm = (w[:, None, :] @ g @ w[..., None])[:, 0, 0].sqrt()  # √2: wᵀGw = Σ w_i·(1/w_i)
    for max_norm in (1.0, 2.0):  # scaled down to 1; left as it is under 2
        capped = weightings.nash_mtl(max_norm=max_norm)(gram)[exists]
        scale = (norm / max_norm).clamp_min(1.0)[:, None]
        torch.testing.assert_close(capped, w / scale, rtol=1e-12, atol=0)



@pytest.mark.parametrize("max_norm", [None, 0.5, 2.0, 0.0])
def test_nash_mtl_combination_is_capped_at_max_norm_where_it_exists_and_where_it_does_not(
    max_norm,
):
    """The combination, from the rows: (û + v̂)/√(1 + cos) where the bargaining solution exists,
    u + v (w = (1, 1)) for a zero row or opposite rows; then scaled down to ``max_norm`` when
    longer (``None``: the default, 1; 0: no cap). Short and long rows, so that both sides of
    each cap are seen."""
    from sago_kernels import weightings

    u, v, _ = _rows(7, n=6)
    zero = torch.zeros(5, dtype=torch.float64)
    # zero rows and opposite rows (no solution), parallel ones, a long zero-row pair
    more = [(zero, 0.4 * v[0]), (0.3 * u[0], zero), (0.2 * u[1], -0.1 * u[1]),
            (3 * u[2], -3 * u[2]), (u[3], 0.2 * u[3]), (zero, 3 * v[4])]  # fmt: skip
    u = torch.cat([u, torch.stack([a for a, _ in more])])
    v = torch.cat([v, torch.stack([b for _, b in more])])
    gram = _gramians(u, v)
    w = (weightings.nash_mtl() if max_norm is None else weightings.nash_mtl(max_norm))(gram)
    got = w[:, :1] * u + w[:, 1:] * v
    cap = 1.0 if max_norm is None else max_norm
    for i in range(u.shape[0]):
        nu, nv = float(u[i].norm()), float(v[i].norm())
        exists = nu > 0 and nv > 0 and float(u[i] @ v[i]) / (nu * nv) > -1 + 1e-12
        want = (u[i] / nu + v[i] / nv) / math.sqrt(1 + float(u[i] @ v[i]) / (nu * nv)) if exists \
            else u[i] + v[i]  # fmt: skip
        if cap > 0 and float(want.norm()) > cap:
            want = want * (cap / float(want.norm()))
        torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-12)
    lengths = [float(x) for x in got.norm(dim=-1)]
    assert cap == 0 or (max(lengths) == pytest.approx(cap) and min(lengths) < 0.99 * cap)


def _cagrad_by_minimiser(u, v, c: float, norm_eps: float = 1e-4) -> torch.Tensor:
    """CAGrad(c)'s combination of the rows u, v as TorchJD defines it: both rows scaled by
    1/√tr(G) (0 when tr(G) < norm_eps), then (t, 1 − t) minimising g₀·g_t + c·|g₀|·|g_t| over the
    simplex (g₀ the mean row, g_t = t·u + (1 − t)·v; convex in t: a bounded scalar minimiser,
    scipy's, not the closed form), w = ½ + c·|g₀|·(t, 1 − t)/|g_t| (0 when |g_t| < norm_eps),
    applied to the unscaled rows."""
    from scipy.optimize import minimize_scalar

    trace = float(u @ u + v @ v)
    if trace < norm_eps:
        return torch.zeros_like(u)
    un, vn = u / math.sqrt(trace), v / math.sqrt(trace)
    g0 = (un + vn) / 2
    c_g0 = c * float(g0.norm())

    def objective(t):
        gt = t * un + (1 - t) * vn
        return float(g0 @ gt) + c_g0 * float(gt.norm())

    t = minimize_scalar(objective, bounds=(0.0, 1.0), method="bounded",
                        options={"xatol": 1e-12}).x  # fmt: skip
    for end in (0.0, 1.0):  # the bounded search never returns an end itself
        t = end if objective(end) <= objective(t) else t
    gt = float((t * un + (1 - t) * vn).norm())
    if gt < norm_eps:
        return torch.zeros_like(u)
    return (0.5 + c_g0 * t / gt) * u + (0.5 + c_g0 * (1 - t) / gt) * v


def _cagrad_rows() -> tuple[torch.Tensor, torch.Tensor]:
    """Random pairs of every regime and the edges of CAGrad's closed form: (t, 1 − t) at either end
    of the simplex, no interior stationary point, g₀ = 0, u = v, |u| = |v| (no slope: with c = 0,
    nothing to minimise), a zero row, |g_t| near norm_eps, Gramians far above and below trace 1."""
    u, v, _ = _rows(6, n=12)
    g = torch.Generator().manual_seed(16)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(5, generator=g, dtype=torch.float64)
    x = x - (x @ w) / (w @ w) * w  # x ⟂ w
    pairs = [
        (3 * w, w), (w, 3 * w), (w, 20 * w), (-w, w), (w, w), (-2 * w, w), (10 * w, x),
        (w, 0.05 * x), (0 * w, x), (w, -w + 1e-5 * x), (w, -w + 1e-3 * x), (w - 0.1 * x, -w),
        (1e-3 * w, 1e-3 * x - 5e-4 * w), (1e3 * w, 1e3 * x + 2e3 * w),
        (w, w * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)),  # |u| = |v|
    ]  # fmt: skip
    return (torch.cat([u, torch.stack([a for a, _ in pairs])]),
            torch.cat([v, torch.stack([b for _, b in pairs])]))  # fmt: skip


@pytest.mark.parametrize("c", [None, 0.0, 0.2, 2.0])
def test_cagrad_combination_is_its_objective_minimised_over_the_simplex(c):
    """CAGrad's combination (``c=None``: the default, 0.5) against ``_cagrad_by_minimiser`` on
    ``_cagrad_rows``: the combination, not the weights (where t is not unique, u = v or
    c·|g₀| = 0, every t gives the same one)."""
    from sago_kernels import weightings

    u, v = _cagrad_rows()
    gram = _gramians(u, v)
    w = (weightings.cagrad() if c is None else weightings.cagrad(c=c))(gram)
    got = w[:, :1] * u + w[:, 1:] * v
    for i in range(u.shape[0]):
        want = _cagrad_by_minimiser(u[i], v[i], 0.5 if c is None else c)
        scale = float(u[i].norm() + v[i].norm())
        assert float((got[i] - want).norm()) <= 1e-6 * scale, (i, got[i], want)



def test_cagrad_takes_the_middle_of_the_simplex_where_every_point_minimises():
    """Where the objective does not depend on t (u = v; |u| = |v| with c·|g₀| = 0), t = ½: the
    weights then are (½ + c/2)·(1, 1) for u = v, ½·(1, 1) with c = 0, and 0 where g_½ = g₀ is
    under norm_eps (opposite rows) although the ends of the simplex are not."""
    from sago_kernels import weightings

    u = torch.tensor([[1.0, 2.0], [1.0, 0.5], [1.0, 1e-6], [1.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [-1.0, 1e-6], [-1.0, -2.0]], dtype=torch.float64)
    gram = _gramians(u, v)
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(weightings.cagrad(c=0.4)(gram[:1])[0], 1.4 * half)
    w = weightings.cagrad(c=0.0)(gram[1:])
    torch.testing.assert_close(w, torch.stack([half, 0 * half, 0 * half]))
    torch.testing.assert_close(weightings.cagrad(c=0.5)(gram[3:])[0], 0 * half)


def test_cagrad_norm_eps_bounds_are_inclusive_above():
    """tr(G) = norm_eps exactly is combined, 0 just below it; a trace above it with |g_t| (on
    G/tr(G)) below it is 0, and |g_t| = norm_eps exactly is combined: both of CAGrad's tests."""
    from sago_kernels import weightings

    u = torch.tensor([[0.5, 0.0], [0.4999, 0.0], [0.6, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.0], [0.4999, 0.0], [-0.5, 0.2]], dtype=torch.float64)
    gram = _gramians(u, v)
    assert float(gram[0, 0, 0] + gram[0, 1, 1]) == 0.5
    w = weightings.cagrad(c=0.5, norm_eps=0.5)(gram)
    got = w[:, :1] * u + w[:, 1:] * v
    for i in range(3):
        want = _cagrad_by_minimiser(u[i], v[i], 0.5, norm_eps=0.5)
        torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-9)
    assert (w[0] > 0).all() and (w[1:] == 0).all()
    # u = v: on G/tr(G), t = ½ and |g_w|² = ½ exactly, so |g_w| = norm_eps = √½ is combined too
    same = torch.full((1, 2, 2), 8.0, dtype=torch.float64)
    w = weightings.cagrad(c=0.5, norm_eps=math.sqrt(0.5))(same)
    assert w.tolist() == [[0.75, 0.75]]


# --------------------------------------------------------------------------- reference.py, sharded


@pytest.mark.parametrize(
    "method", ["sago", "pcgrad", "pcgrad_global", "blur", "mgda", "gru", "gru_global"]
)
def test_reference_sharded_over_two_simulated_ranks_is_the_whole_combine(method):
    """``reference.combine(..., reduce=)``, the path of sharded gradients, in one process: each
    of two "ranks" holds one half of every segment, and its ``reduce`` adds the other rank's
    local table (recorded in a first pass). The halves put together must be the oracle's combine
    of the whole segments; each rank's sums are its own."""
    from sago_kernels import reference

    m = sk.METHODS[method]
    sizes = [6, 5, 0, 9, 1]
    halves = [[n // 2 for n in sizes], [n - n // 2 for n in sizes]]
    whole = sk.GradLayout.from_sizes(sizes, alignment=1)
    g = torch.Generator().manual_seed(3)
    r, f = torch.randn(whole.numel, generator=g), torch.randn(whole.numel, generator=g)
    f[6:11] = -2 * r[6:11]  # a conflicting segment
    state = torch.randn(whole.numel, generator=g)
    parts, cursor = [[], []], 0
    for n, a in zip(sizes, halves[0]):
        parts[0].append(torch.arange(cursor, cursor + a))
        parts[1].append(torch.arange(cursor + a, cursor + n))
        cursor += n
    index = [torch.cat(p) for p in parts]
    layouts = [sk.GradLayout.from_sizes(h, alignment=1) for h in halves]

    def run(rank, reduce):
        st = state[index[rank]].clone()
        extra = {"ema": m.ema, "state": st} if m.needs_state else {}
        out, sums, _ = reference.combine(
            r[index[rank]], f[index[rank]], layouts[rank], m.reference, m.scope,
            alpha=0.7, gamma=1.3, eps=1e-10, reduce=reduce, weighting=m.weighting, **extra,
        )  # fmt: skip
        return out, sums, st

    recorded = [[], []]
    for rank in (0, 1):
        run(rank, lambda t, rank=rank: recorded[rank].append(t.clone()))
    got, got_state = torch.empty(whole.numel), torch.empty(whole.numel)
    for rank in (0, 1):
        calls = iter(recorded[1 - rank])
        out, sums, st = run(rank, lambda t, calls=calls: t.add_(next(calls)))
        got[index[rank]], got_state[index[rank]] = out, st
        own = reference.combine(
            r[index[rank]], f[index[rank]], layouts[rank], sk.METHODS["sum"].reference, "element",
            alpha=0.7, gamma=1.3, eps=1e-10,
        )[1]  # fmt: skip
        assert torch.equal(sums[:, :3], own[:, :3]), "a rank's sums are its own"
    if m.needs_state:
        want = gru_truth(r, f, state, whole, m, 0.7, 1.3, 1e-10)
        assert torch.equal(bits(got_state), bits(want.state))
    else:
        want = truth(r, f, whole, m, 0.7, 1.3, 1e-10)
    assert_output_matches(got, want, whole, torch.float32, context=method)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conflict_mask_is_the_sign_rule_in_either_width(dtype):
    """Both non-zero, sign bits differ (README): ±0 never, subnormals always, in float32 and in
    float64 (its bits are read through a same-width integer view)."""
    from oracle import conflicts

    from sago_kernels.reference import conflict_mask

    tiny = torch.finfo(dtype).smallest_normal / 4  # a subnormal
    f = torch.tensor([1.0, -1.0, 0.0, -0.0, tiny, -tiny, 2.0, -3.0, 0.0], dtype=dtype)
    r = torch.tensor([-2.0, 3.0, -1.0, 1.0, -tiny, tiny, 5.0, -0.0, -0.0], dtype=dtype)
    want = torch.tensor([True, True, False, False, True, True, False, False, False])
    assert torch.equal(conflict_mask(f, r), want) and torch.equal(conflicts(f, r), want)


# --------------------------------------------------------------------------- methods.py


def test_method_registry_entries_are_what_their_names_say():
    """Every field of the registry's entries, and of ``method_with``/``weighting_method``/
    ``get_method``'s methods: names, formulas (shown in ``sk.METHODS``), scopes, kernel codes,
    reference functions, weightings and GRU parameters."""
    import importlib

    from sago_kernels import reference, weightings
    from sago_kernels.gru import EMAParams

    methods = importlib.import_module("sago_kernels.methods")  # sk.methods is the function

    codes = {name: (m.scope, m.code) for name, m in sk.METHODS.items()}
    assert codes["sum"] == ("element", 0) and codes["sago"] == ("element", 1)
    assert codes["sago_prefer_retain"] == ("element", 2) and codes["pcgrad"] == ("segment", 0)
    assert codes["pcgrad_global"] == ("global", 0) and codes["blur"] == ("global", 1)
    assert codes["gru"] == ("segment", 3) and codes["gru_global"] == ("global", 3)
    assert all(codes[name] == ("segment", 2) for name in weightings.BUILT_IN)
    assert sk.METHODS["sago"].reference is reference.sago
    assert sk.METHODS["blur"].reference is reference.blur
    assert [m.is_projection for m in map(sk.METHODS.get, ["sum", "pcgrad", "gru", "mgda"])] == [
        False, True, True, True,
    ]  # fmt: skip
    assert [m.needs_state for m in map(sk.METHODS.get, ["sago", "pcgrad", "gru", "mgda"])] == [
        False, False, True, False,
    ]  # fmt: skip
    assert methods.methods() == list(sk.METHODS) and "gru_global" in sk.METHODS

    gru = sk.method_with("gru_global", beta=0.9, retain_coef=0.0)
    assert gru.name == "gru_global(beta=0.9, retain_coef=0.0)" and gru.scope == "global"
    assert gru.formula == (
        "global: m ← β·r + (1 − β)·m (state), c = min(f·m, 0)/(m·m + eps); γ·(f − c·m) + κ·α·r "
        "(β = 0.9, κ = 0.0)"
    )
    assert gru.code == 3 and gru.reference is reference.gru and gru.ema == EMAParams(0.9, 0.0)
    assert repr(gru) == f"Method({gru.name!r}: {gru.formula})"
    assert sk.METHODS["gru"].formula.startswith("per segment: m ← β·r")
    assert sk.METHODS["gru"].formula.endswith("(β = 0.8, κ = 1.0)")
    assert sk.method_with("gru", beta=0.5).scope == "segment"

    cagrad = sk.method_with("cagrad", c=0.2)
    assert cagrad.name == "cagrad(c=0.2)" and cagrad.scope == "segment" and cagrad.code == 2
    assert cagrad.formula == "per segment, w = " + weightings.BUILT_IN["cagrad"][1]
    upgrad = sk.method_with("upgrad", pref=(0.3, 0.7), norm_eps=0.0)
    assert upgrad.name == "upgrad(pref=(0.3, 0.7), norm_eps=0.0)"

    def halves(g):
        return torch.full(g.shape[:-1], 0.5, dtype=g.dtype)

    class Halves:
        def __call__(self, g):
            return halves(g)

    mine = methods.weighting_method(halves)
    assert (mine.name, mine.scope, mine.code, mine.weighting) == ("halves", "segment", 2, halves)
    assert mine.formula == "w_0·γ·f + w_1·α·r, w = weighting(Gramian of (γ·f, α·r))"
    assert methods.weighting_method(Halves()).name == "Halves"
    named = methods.weighting_method(halves, "mean", "½·(u + v)", scope="global")
    assert (named.name, named.formula, named.scope) == ("mean", "½·(u + v)", "global")
    r, f = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
    assert torch.equal(named.reference(r, f, alpha=1.0, gamma=1.0, eps=0.0), 0.5 * f + 0.5 * r)

    assert methods.get_method("sago") is sk.METHODS["sago"] and methods.get_method(gru) is gru
    assert methods.get_method(halves).weighting is halves
    for bad in ("halves", 3, None):
        with pytest.raises(ValueError, match="Parameter `method` should be one of"):
            methods.get_method(bad)
    with pytest.raises(ValueError, match="the methods with parameters"):
        sk.method_with("pcgrad", eps=1.0)
    with pytest.raises(TypeError, match="Parameter `weighting` should be a callable"):
        methods.weighting_method("mgda")
    with pytest.raises(ValueError, match="Parameter `scope` should be 'segment' or 'global'"):
        methods.weighting_method(halves, scope="element")


def test_geometry_table_from_sums_and_the_overflow_rule():
    """``geometry_table`` against the oracle's float64 geometry on hand-made sums (zero vectors,
    an o·o rounded below 0, an empty segment), and the rule for overflowing norms: the fields
    built on a dot whose vector's norm is not finite are NaN, the others kept (README)."""
    from oracle import geometry64

    from sago_kernels.stats import geometry_table

    sums = torch.tensor(
        [
            [-2.0, 30.0, 4.0, 9.0, 6.0, -3.0],  # ordinary
            [0.0, 0.0, 4.0, 4.0, 0.0, 4.0],  # r = 0: cosines with r are 0
            [0.0, 0.0, 0.0, -1e-30, 0.0, 0.0],  # all zero, o·o rounded below 0
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # an empty segment
        ]
    )
    counts, numels = torch.tensor([3, 0, 0, 0]), torch.tensor([8, 5, 2, 0])
    got = geometry_table(sums, counts, numels)
    totals = torch.cat([sums, sums.sum(0, keepdim=True)]).double()
    want = geometry64(totals, counts, numels)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)

    inf = math.inf
    rows = torch.tensor(
        [
            [1.0, 2.0, 3.0, 1.0, 1.0, 1.0],
            [1.0, inf, 3.0, 1.0, 1.0, 1.0],  # r·r overflowed
            [1.0, 2.0, inf, 1.0, 1.0, 1.0],  # f·f overflowed
            [1.0, 2.0, 3.0, inf, 1.0, 1.0],  # o·o overflowed
        ]
    )
    table = geometry_table(rows, torch.zeros(4, dtype=torch.int64), torch.full((4,), 4))
    nan = torch.isnan(table[:4])
    # columns: dot_fr, norm_r, norm_f, norm_out, cos_fr, cos_out_r, cos_out_f, fraction
    assert nan.tolist() == [
        [False, False, False, False, False, False, False, False],
        [True, False, False, False, True, True, False, False],
        [True, False, False, False, True, False, True, False],
        [False, False, False, False, False, True, True, False],
    ]
    assert torch.isinf(table[1, 1]) and torch.isinf(table[3, 3]) and table[1, 7] == 0


@pytest.mark.parametrize("case", ["conflicting", "aligned", "zero_retain", "non_finite"])
def test_per_segment_reference_functions_match_the_oracle(case):
    """Each method's ``Method.reference`` on one segment, as the paper's formula reads (the
    reference backend itself runs GRU and the weightings through their batched steps): the
    oracle's output, and for GRU the new average (or the old one where the segment is NaN)."""
    g = torch.Generator().manual_seed(9)
    r, f, m = (torch.randn(7, generator=g) for _ in range(3))
    if case == "conflicting":
        f = -1.5 * r + 0.2 * f
    elif case == "aligned":
        f = 2.0 * r + 0.1 * f
    elif case == "zero_retain":
        r, m = torch.zeros(7), torch.zeros(7)
    else:
        f[2] = math.inf
    layout = sk.GradLayout.single(7)
    eps = 0.0 if case == "zero_retain" else 1e-10
    for name in ("pcgrad", "blur", "mgda", "gru"):
        method = sk.method_with("gru", beta=0.7, retain_coef=0.5) if name == "gru" else None
        method = method or sk.METHODS[name]
        kw = dict(alpha=0.6, gamma=1.4, eps=eps)
        if name == "gru":
            out, m_new = method.reference(r, f, m, beta=0.7, retain_coef=0.5, **kw)
            want = gru_truth(r, f, m, layout, method, 0.6, 1.4, eps)
            assert torch.equal(bits(m_new), bits(want.state)), case
        else:
            out = method.reference(r, f, **kw)
            want = truth(r, f, layout, method, 0.6, 1.4, eps)
        assert_output_matches(out, want, layout, torch.float32, context=f"{name}/{case}")


@pytest.mark.parametrize("method", ["pcgrad", "blur"])
def test_projection_nan_rules_dot_by_dot(backend, device, method):
    """Each of the README's NaN rules on its own (the fuzz's magnitudes never overflow): a
    segment is NaN in full when r·r overflows, or f·f does, though f·r stays finite; or when the
    effective weight (α − γ·c for PCGrad, γ − α·c for BLUR) is not finite; and it is not NaN
    where that weight is finite though α + γ·c (γ + α·c) would not be."""
    inf_rr = ([3e19, -3e19], [1e-20, 1e-20])  # (r, f): r·r overflows, f·r = 0
    inf_ff = ([1e-20, 1e-20], [3e19, -3e19])  # f·f overflows, f·r = 0
    cases = [(inf_rr, 1.0, 1.0, 1e-10, True), (inf_ff, 1.0, 1.0, 1e-10, True)]
    if method == "pcgrad":  # c = d/n = -1e40 overflows; then a weight that cancels to 0
        cases += [(([1e-22, 0.0], [-1e18, 1.0]), 1.0, 1.0, 0.0, True)]
        cases += [(([1e-20, 0.0], [-2e18, 0.0]), -2e38, 1.0, 0.0, False)]
    else:  # c = d/m = -1e40 overflows; then γ − α·c = 0 with α·c = -2e38
        cases += [(([-1e18, 1.0], [1e-22, 0.0]), 1.0, 1.0, 0.0, True)]
        cases += [(([-2e18, 0.0], [1e-20, 0.0]), 1.0, -2e38, 0.0, False)]
    for (r, f), alpha, gamma, eps, nan in cases:
        r, f = torch.tensor(r, device=device), torch.tensor(f, device=device)
        out = _combine(backend, r.clone(), f, method, alpha=alpha, gamma=gamma, eps=eps)
        context = f"{method} r={r.tolist()} f={f.tolist()} α={alpha} γ={gamma}"
        assert torch.isnan(out).all() if nan else torch.isfinite(out).all(), (context, out)


def test_a_global_weighting_is_one_gramian_over_all_segments(backend, device):
    """``scope="global"``: one set of weights from the dots of all segments together, against
    the oracle (which groups the segments itself); per segment the weights differ."""
    from sago_kernels import weightings

    layout = sk.GradLayout.from_sizes([5, 0, 7, 3], alignment=1)
    g = torch.Generator().manual_seed(4)
    r, f = torch.randn(layout.numel, generator=g), torch.randn(layout.numel, generator=g)
    f[:5] = -2 * r[:5]
    r, f = r.to(device), f.to(device)
    want = {}
    for scope in ("global", "segment"):
        method = sk.weighting_method(weightings.mgda(), "mgda_" + scope, scope=scope)
        out = _combine(backend, r.clone(), f, method, layout=layout, alpha=0.5, gamma=2.0)
        want[scope] = truth(r, f, layout, method, 0.5, 2.0, 1e-10)
        assert_output_matches(out, want[scope], layout, torch.float32, context=scope)
    assert not torch.allclose(want["global"].out, want["segment"].out), "the scopes must differ"
