"""GRU (``gru.py``): fuzzed against the float64 oracle on every backend, the state's exact bits,
the authors' recurrence over several steps, the synthesizer's state and checkpoints, misuse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracle import assert_output_matches, assert_state_matches, bits, gru_truth, segment_mask
from strategies import (
    CONFIGS,
    DTYPES,
    EPS,
    SEEDS,
    WEIGHTS,
    configured,
    fill_pair,
    gradient_values,
    layouts,
)

import sago_kernels as sk

GRU_METHODS = ("gru", "gru_global")
BETAS = st.sampled_from([0.8, 1.0, 0.5, 0.1, 0.99])
RETAIN_COEFS = st.sampled_from([1.0, 0.0, 0.5, -1.0])


def _state_like(layout: sk.GradLayout, retain: torch.Tensor, seed: int) -> torch.Tensor:
    """A finite starting average in the segments, NaN sentinels outside them (a backend that
    reads them poisons its dots; one that writes them changes their bits)."""
    state = gradient_values(seed, layout.numel, retain.dtype, specials=False)
    state[~segment_mask(layout)] = math.nan
    if np.random.default_rng(seed).random() < 0.25:  # the first step: a zero average
        state[segment_mask(layout)] = 0.0
    return state.to(retain.device)


@pytest.mark.parametrize("name", GRU_METHODS)
@given(
    layout=layouts(),
    dtype=st.sampled_from(DTYPES),
    seed=SEEDS,
    specials=st.booleans(),
    alpha=WEIGHTS,
    gamma=WEIGHTS,
    eps=EPS,
    beta=BETAS,
    retain_coef=RETAIN_COEFS,
    config=st.sampled_from(CONFIGS),
    use_out=st.booleans(),
)
def test_gru_matches_float64_oracle(
    backend, device, name, layout, dtype, seed, specials, alpha, gamma, eps, beta,
    retain_coef, config, use_out,
):  # fmt: skip
    method = sk.method_with(name, beta=beta, retain_coef=retain_coef)
    retain, forget = fill_pair(layout, dtype, seed, specials, device)
    state = _state_like(layout, retain, seed + 3)
    want = gru_truth(retain, forget, state, layout, method, alpha, gamma, eps)
    state_before = state.clone()
    retain_before, forget_before = retain.clone(), forget.clone()
    out = torch.full_like(retain, 7.0) if use_out else None

    with configured(backend, config):
        written = sk.combine_(
            retain, forget, layout=layout, method=method, alpha=alpha, gamma=gamma, eps=eps,
            out=out, state=state, backend=backend,
        )  # fmt: skip

    context = f"{backend}/{method.name}/{dtype}/{layout}"
    assert_output_matches(written, want, layout, dtype, context=context)
    # the state: exactly m' where the segment was written finite, untouched elsewhere (NaN
    # segments keep their average; nothing outside the segments is read or written)
    assert_state_matches(state, want, state_before, context)
    outside = ~segment_mask(layout, device)
    assert torch.equal(bits(written)[outside], bits(out if use_out else retain_before)[outside])
    assert torch.equal(bits(forget), bits(forget_before))
    if use_out:
        assert torch.equal(bits(retain), bits(retain_before)), "out= must leave retain as is"


@pytest.mark.parametrize("name", GRU_METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_leaves_the_same_state_and_statistics(name, dtype, backend, device):
    """Three steps with stats: the state bitwise equal to the reference backend's, the
    statistics within float32 summation error of them."""
    layout = sk.GradLayout.from_sizes([300, 0, 1, 77, 129, 16], alignment=16)
    states = {
        b: torch.zeros(layout.numel, dtype=dtype, device=device) for b in (backend, "reference")
    }
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        r = torch.randn(layout.numel, generator=g).to(dtype).to(device)
        f = (torch.randn(layout.numel, generator=g) - 0.5 * r.float().cpu()).to(dtype).to(device)
        got = {}
        for b in states:
            with configured(b, CONFIGS[0]):
                got[b] = sk.combine_(
                    r.clone(), f, layout=layout, method=name, state=states[b], stats=True,
                    backend=b,
                )  # fmt: skip
        assert torch.equal(bits(states[backend]), bits(states["reference"]))
        torch.testing.assert_close(
            got[backend][1].table, got["reference"][1].table, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            got[backend][0].float(), got["reference"][0].float(), rtol=2e-3, atol=1e-5
        )


def _authors_gru(r_steps, f_steps, beta, retain_coef):
    """The authors' recurrence (github.com/tmlr-group/GRU, ``moving_avg`` = β, one projection
    over the whole model), in float64: m = β·g_r + (1 − β)·m_old from m = 0; where
    <g_f, m> < 0, g_f − <g_f, m>/|m|²·m; plus κ·g_r (their ``+ce`` variant)."""
    m = torch.zeros_like(r_steps[0], dtype=torch.float64)
    outs = []
    for r, f in zip(r_steps, f_steps):
        r, f = r.double(), f.double()
        m = beta * r + (1 - beta) * m
        d = f @ m
        g = f - d / (m @ m) * m if d < 0 else f
        outs.append(g + retain_coef * r)
    return outs


@pytest.mark.parametrize("retain_coef", [0.0, 1.0])
def test_gru_global_follows_the_authors_recurrence(backend, device, retain_coef):
    layout = sk.GradLayout.from_sizes([257, 64, 1000, 3], alignment=1)
    g = torch.Generator().manual_seed(3)
    r_steps = [torch.randn(layout.numel, generator=g) for _ in range(6)]
    # forget gradients that conflict with the average on some steps and not on others
    f_steps = [torch.randn(layout.numel, generator=g) + (-1.5 if i % 2 else 0.5) * r
               for i, r in enumerate(r_steps)]  # fmt: skip
    want = _authors_gru(r_steps, f_steps, 0.8, retain_coef)
    method = sk.method_with("gru_global", beta=0.8, retain_coef=retain_coef)
    state = torch.zeros(layout.numel, device=device)
    for step, (r, f) in enumerate(zip(r_steps, f_steps)):
        out = sk.combine_(r.clone().to(device), f.to(device), layout=layout, method=method,
                          state=state, eps=0.0, backend=backend)  # fmt: skip
        torch.testing.assert_close(out.double().cpu(), want[step], rtol=1e-5, atol=1e-5)


def test_gru_with_beta_one_and_kappa_one_is_pcgrad(backend, device):
    layout = sk.GradLayout.from_sizes([100, 37, 5], alignment=1)
    g = torch.Generator().manual_seed(11)
    r = torch.randn(layout.numel, generator=g).to(device)
    f = (torch.randn(layout.numel, generator=g) - r.cpu()).to(device)
    pcgrad = sk.combine_(r.clone(), f, layout=layout, method="pcgrad", backend=backend)
    state = torch.randn(layout.numel, generator=g).to(device)  # forgotten at β = 1
    gru = sk.combine_(r.clone(), f, layout=layout, method=sk.method_with("gru", beta=1.0),
                      state=state, backend=backend)  # fmt: skip
    torch.testing.assert_close(gru, pcgrad, rtol=1e-6, atol=1e-6)
    assert torch.equal(state, r)


def test_rectified_forget_part_never_opposes_the_average(backend, device):
    """(g_final − κ·α·r)·m' >= 0 per segment: the forget part was projected off the average."""
    layout = sk.GradLayout.from_sizes([64, 200, 31])
    g = torch.Generator().manual_seed(5)
    state = torch.zeros(layout.numel, device=device)
    for _ in range(4):
        r = torch.randn(layout.numel, generator=g).to(device)
        f = (torch.randn(layout.numel, generator=g) - 2 * r.cpu()).to(device)
        out = sk.combine_(r.clone(), f, layout=layout, method="gru", alpha=0.5, state=state,
                          eps=0.0, backend=backend)  # fmt: skip
        for s in layout.segments:
            part, m = out[s.start : s.end] - 0.5 * r[s.start : s.end], state[s.start : s.end]
            assert (part.double() @ m.double()) >= -1e-5 * part.norm() * m.norm()


def test_a_nan_segment_keeps_its_state(backend, device):
    layout = sk.GradLayout.from_sizes([40, 40], alignment=1)
    r, f = torch.randn(layout.numel).to(device), torch.randn(layout.numel).to(device)
    f[3] = math.inf
    state = torch.randn(layout.numel).to(device)
    before = state.clone()
    out = sk.combine_(r.clone(), f, layout=layout, method="gru", state=state, backend=backend)
    assert torch.isnan(out[:40]).all() and torch.isfinite(out[40:]).all()
    assert torch.equal(state[:40], before[:40])
    assert torch.equal(state[40:], (0.8 * r[40:] + (1.0 - 0.8) * before[40:]))
    state = before.clone()
    sk.combine_(r.clone(), f, layout=layout, method="gru_global", state=state, backend=backend)
    assert torch.equal(state, before), "gru_global: one NaN segment makes the whole step NaN"


# --------------------------------------------------------------------------- the synthesizer


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _step(model, synth, x):
    """Forget and retain losses that conflict (so the projection, and the state, matter)."""
    with synth.forget():
        (-(model(x[:4]) - 1).square().mean()).backward()
    with synth.retain():
        (model(x[4:]) - 1).square().mean().backward()
    synth.combine_()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad


def test_synthesizer_holds_the_state_and_checkpoints_it():
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    model = _model()
    synth = sk.GradientSynthesizer(model, method="gru_global", stats=False)
    assert synth.state_buffer is not None and not synth.state_buffer.any()
    assert synth.memory_bytes == 3 * synth.retain_buffer.numel() * 4
    _step(model, synth, x)
    assert synth.state_buffer.any()
    saved = synth.state_dict()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, synth, x)
    _step(model, synth, x)
    continued = [p.detach().clone() for p in model.parameters()]

    resumed = _model()
    resumed.load_state_dict(weights)
    synth2 = sk.GradientSynthesizer(resumed, method="gru_global", stats=False)
    synth2.load_state_dict(saved)
    _step(resumed, synth2, x)
    _step(resumed, synth2, x)
    for a, b in zip(continued, resumed.parameters()):
        assert torch.equal(a, b), "resuming from state_dict() must continue the run exactly"

    fresh = _model()
    fresh.load_state_dict(weights)
    synth3 = sk.GradientSynthesizer(fresh, method="gru_global", stats=False)  # state lost
    _step(fresh, synth3, x)
    _step(fresh, synth3, x)
    assert any(not torch.allclose(a, b) for a, b in zip(continued, fresh.parameters()))


def test_synthesizer_zero_grad_keeps_the_state_and_stateless_methods_have_none():
    model = _model()
    synth = sk.GradientSynthesizer(model, method="gru")
    _step(model, synth, torch.randn(8, 6))
    kept = synth.state_buffer.clone()
    synth.zero_grad()
    assert torch.equal(synth.state_buffer, kept)
    plain = sk.GradientSynthesizer(model, method="pcgrad")
    assert plain.state_buffer is None and plain.state_dict() == {}
    with pytest.raises(ValueError, match="keeps none"):
        plain.load_state_dict(synth.state_dict())
    with pytest.raises(ValueError, match="keeps one"):
        synth.load_state_dict({})
    with pytest.raises(ValueError, match="shape"):
        synth.load_state_dict({"ema": torch.zeros(3)})
    with pytest.raises(ValueError, match="Unknown keys"):
        synth.load_state_dict({"ema": kept, "momentum": 1})


# --------------------------------------------------------------------------- misuse


def test_state_is_required_exactly_for_gru():
    r, f = torch.randn(8), torch.randn(8)
    with pytest.raises(ValueError, match="keeps a moving average"):
        sk.combine_(r, f, method="gru")
    with pytest.raises(ValueError, match="does not"):
        sk.combine_(r, f, method="pcgrad", state=torch.zeros(8))
    for bad, error, match in (
        (torch.zeros(8, dtype=torch.bfloat16), TypeError, "dtype and device"),
        (torch.zeros(9), ValueError, "as many elements"),
        (torch.zeros(4, 2), ValueError, "flat 1-D"),
        (r, ValueError, "share memory"),
        (f, ValueError, "share memory"),
    ):
        before = r.clone()
        with pytest.raises(error, match=match):
            sk.combine_(r, f, method="gru", state=bad)
        assert torch.equal(r, before), "nothing is written before the checks"


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"beta": 0.0}, ValueError, "in \\(0, 1\\]"),
        ({"beta": 1.5}, ValueError, "in \\(0, 1\\]"),
        ({"beta": "high"}, TypeError, "Parameter `beta` should be a finite Python float"),
        ({"retain_coef": math.inf}, ValueError, "Parameter `retain_coef` should be finite"),
        ({"momentum": 0.9}, TypeError, "does not take"),
    ],
)
def test_gru_parameters_are_checked(params, error, match):
    with pytest.raises(error, match=match):
        sk.method_with("gru", **params)


def test_gru_parameters_are_stored_as_floats():
    """An int or numpy β and κ are kept as the Python floats every backend rounds (and the
    formula and repr show)."""
    params = sk.method_with("gru", beta=1, retain_coef=np.float64(0.5)).ema
    assert type(params.beta) is float and type(params.retain_coef) is float
    assert repr(params) == "EMAParams(beta=1.0, retain_coef=0.5)"


def test_gru_is_refused_where_a_state_cannot_travel():
    r, f = [torch.randn(4)], [torch.randn(4)]
    with pytest.raises(ValueError, match="state"):
        sk.combine_grads_(r, f, method="gru")

    @torch.compile(backend="eager", fullgraph=True)
    def step(a, b, m):
        return sk.combine_(a, b, method="gru", state=m)

    with pytest.raises(Exception, match="torch.compile"):
        step(torch.randn(8), torch.randn(8), torch.zeros(8))


def test_methods_table_lists_gru():
    assert {"gru", "gru_global"} <= set(sk.methods())
    assert "β·r + (1 − β)·m" in sk.METHODS["gru"].formula
    assert sk.METHODS["gru"].needs_state and not sk.METHODS["pcgrad"].needs_state
