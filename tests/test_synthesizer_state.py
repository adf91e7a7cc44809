"""The synthesizer's state across steps (GRU's average, a GradVac's φ̂): it changes only when
``combine_()`` completes, ``state_dict()`` finds it however the method was given, and
``load_state_dict()`` refuses, before writing anything, a state that does not fit (issue 23,
items 1-3)."""

from __future__ import annotations

import math

import pytest
import torch

import sago_kernels as sk


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _backward(model, synth, seed):
    g = torch.Generator().manual_seed(seed)
    xf, xr = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    with synth.forget():  # mostly against the retain loss: GradVac's correction acts
        (-(model(xr) - 1).square().mean() - 0.5 * model(xf).square().mean()).backward()
    with synth.retain():
        (model(xr) - 1).square().mean().backward()


def _step(model, synth, opt, seed):
    _backward(model, synth, seed)
    synth.combine_()
    opt.step()


def _snapshot(synth):
    state = synth.state_dict()
    weighting = state.get("weighting") or {}
    phi_hat = weighting.get("phi_hat")
    return (
        None if synth.state_buffer is None else synth.state_buffer.clone(),
        None if phi_hat is None else phi_hat.clone(),
    )


def _same(a, b):
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b)
    )


STATEFUL = {
    "gru": lambda: "gru",
    "gradvac": lambda: sk.GradVac(),
    "gradvac_global": lambda: sk.weighting_method(sk.GradVac(beta=0.3), scope="global"),
}


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("buffers", [1, 2])
@pytest.mark.parametrize("method", sorted(STATEFUL))
def test_a_discarded_step_never_changes_the_state(method, buffers):
    """A retain backward that raises midway, or a finished backward discarded with
    synth.zero_grad(), leaves the state as it was; one-buffer mode, whose per-parameter
    combines would change it inside the backward, refuses stateful methods at construction."""
    model = _net()
    if buffers == 1:
        match = "whole model" if method.endswith("global") else "state per segment across"
        with pytest.raises(ValueError, match=match):
            sk.GradientSynthesizer(model, method=STATEFUL[method](), buffers=1)
        assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
        return
    synth = sk.GradientSynthesizer(model, method=STATEFUL[method](), backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, synth, opt, 0)
    before = _snapshot(synth)
    assert before[0] is not None or before[1] is not None
    # a retain backward stopped part-way
    with synth.forget():
        (-model(torch.randn(4, 6)).square().mean()).backward()
    with pytest.raises(RuntimeError, match="stand-in"):
        with synth.retain():
            model(torch.randn(4, 6)).sum().backward()
            raise RuntimeError("stand-in for an error in the middle of a step")
    synth.zero_grad()
    assert _same(_snapshot(synth), before)
    # a whole step's backward passes, discarded (a NaN loss, say)
    _backward(model, synth, 1)
    synth.zero_grad()
    assert _same(_snapshot(synth), before)
    _step(model, synth, opt, 2)
    assert not _same(_snapshot(synth), before)  # the state still moves on a completed step


# --------------------------------------------------------------------------- item 2


@pytest.mark.parametrize("method", sorted(STATEFUL))
def test_state_dict_finds_the_state_however_the_method_was_given(method):
    model, opt_seed = _net(), 0
    synth = sk.GradientSynthesizer(model, method=STATEFUL[method](), backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(2):
        _step(model, synth, opt, seed)
    saved = synth.state_dict()
    assert saved and "layout" in saved
    if method.startswith("gradvac"):
        assert saved["weighting"]["phi_hat"].shape == ((1,) if method.endswith("global") else (4,))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in (5, 6):
        _step(model, synth, opt, seed)
    continued = [p.detach().clone() for p in model.parameters()]
    for restore in (True, False):
        resumed = _net(opt_seed)
        resumed.load_state_dict(weights)
        synth2 = sk.GradientSynthesizer(resumed, method=STATEFUL[method](), backend="reference")
        if restore:
            synth2.load_state_dict(saved)
        opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
        for seed in (5, 6):
            _step(resumed, synth2, opt2, seed)
        same = all(torch.equal(a, b) for a, b in zip(continued, resumed.parameters()))
        assert same == restore, "resuming from state_dict() continues the run exactly"


# --------------------------------------------------------------------------- item 3


def _trained(model, method, seed=0):
    synth = sk.GradientSynthesizer(model, method=method, backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(model, synth, opt, seed)
    return synth


class _Square(torch.nn.Module):
    def __init__(self, n_in, n_out, bias=True):
        super().__init__()
        self.lin = torch.nn.Linear(n_in, n_out, bias=bias)

    def forward(self, x):
        x = torch.nn.functional.pad(x, (0, 2))[..., : self.lin.in_features]
        return self.lin(x).sum(-1, keepdim=True).expand(-1, 3)


def test_a_state_saved_on_another_layout_is_refused_before_anything_is_written():
    torch.manual_seed(0)
    # Linear(8, 4) and Linear(4, 8): buffers of the same length (aligned segments), not the
    # same segments; without bias, the same segments and names but other shapes
    for a, b, match in (
        ((8, 4), (4, 8), "segment 1 is `lin.bias` of 4 elements.*`lin.bias` of 8 elements"),
        ((8, 4, False), (4, 8, False), "`lin.weight` of shape \\[4, 8\\].*\\[8, 4\\]"),
    ):
        source = _Square(*a)
        target = _Square(*b)
        saved = _trained(source, "gru").state_dict()
        synth = sk.GradientSynthesizer(target, method="gru", backend="reference")
        assert saved["ema"].shape == synth.state_buffer.shape  # the old length check passed it
        before = synth.state_buffer.clone()
        with pytest.raises(ValueError, match=match):
            synth.load_state_dict(saved)
        assert torch.equal(synth.state_buffer, before)
    synth = sk.GradientSynthesizer(_net(), method="gru", backend="reference")
    good = _trained(_net(), "gru").state_dict()
    for bad, error, match in (
        ({k: v for k, v in good.items() if k != "layout"}, ValueError, 'lacks its "layout"'),
        ({**good, "layout": "x"}, ValueError, "layout"),
        ({**good, "ema": good["ema"].clone().fill_(math.nan)}, ValueError, "finite"),
        ({**good, "ema": good["ema"].to(torch.int64)}, TypeError, "floating-point"),
        ({**good, "weighting": {}}, ValueError, "keeps no weighting state"),
        ({k: v for k, v in good.items() if k != "ema_params"}, ValueError, '"ema_params"'),
        ({**good, "ema_params": {"beta": 0.5, "retain_coef": 1.0}}, ValueError,
         "made with beta = 0.5.*beta = 0.8"),
    ):
        before = synth.state_buffer.clone()
        with pytest.raises(error, match=match):
            synth.load_state_dict(bad)
        assert torch.equal(synth.state_buffer, before)
    synth.load_state_dict(good)
    assert torch.equal(synth.state_buffer, good["ema"])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(beta=7.0), ValueError, "`beta` should be in \\[0, 1\\]"),
        (dict(beta=-0.5), ValueError, "`beta`"),
        (dict(beta=math.nan), ValueError, "`beta`"),
        (dict(eps=-1.0), ValueError, "`eps`"),
        (dict(eps=math.inf), ValueError, "`eps`"),
        (dict(beta="0.5"), TypeError, "`beta`"),  # a type error, as check_scalar says it
        (dict(phi_hat=torch.tensor([0.1, math.nan, 0.2, 0.3], dtype=torch.float64)), ValueError,
         "cosines"),
        (dict(phi_hat=torch.tensor([0.1, 1.5, 0.2, 0.3], dtype=torch.float64)), ValueError,
         "cosines"),
        (dict(phi_hat=torch.tensor([0.1, -2.0, 0.2, 0.3], dtype=torch.float64)), ValueError,
         "cosines"),
        (dict(phi_hat=torch.zeros(2, 2, dtype=torch.float64)), ValueError, "1-D"),
        (dict(phi_hat=[0.1, 0.2, 0.3, 0.4]), ValueError, "1-D"),
        (dict(phi_hat=torch.tensor([1, 0, 0, 0])), TypeError, "float"),
        (dict(momentum=0.9), ValueError, "keys"),
    ],
)  # fmt: skip
def test_gradvac_refuses_a_state_its_constructor_or_a_run_would_not_make(change, error, match):
    gradvac = sk.GradVac(beta=0.25)
    _trained(_net(), gradvac)
    saved = gradvac.state_dict()
    before = (gradvac.beta, gradvac.eps, gradvac.phi_hat.clone())
    with pytest.raises(error, match=match):
        gradvac.load_state_dict({**saved, **change})
    assert (gradvac.beta, gradvac.eps) == before[:2] and torch.equal(gradvac.phi_hat, before[2])
    # the same state through the synthesizer: refused before its other parts are written too
    synth = sk.GradientSynthesizer(_net(), method=gradvac, backend="reference")
    state = synth.state_dict()
    with pytest.raises(error, match=match):
        synth.load_state_dict({**state, "weighting": {**state["weighting"], **change}})
    assert torch.equal(gradvac.phi_hat, before[2])


def test_a_gradvac_state_of_another_segment_count_is_refused_at_load_not_at_the_next_step():
    four = _trained(_net(), sk.GradVac()).state_dict()  # 4 segments (parameters)
    for method, count in (
        (sk.weighting_method(sk.GradVac(), scope="global"), 1),
        (sk.GradVac(), 4),
    ):
        other = sk.GradientSynthesizer(_net(), method=method, granularity="parameter")
        state = {**other.state_dict(), "weighting": four["weighting"]}
        if count == 4:
            other.load_state_dict(state)
            continue
        with pytest.raises(ValueError, match="one entry per segment \\(1 here\\). Found 4"):
            other.load_state_dict(state)
    module_wise = sk.GradientSynthesizer(_net(), method=sk.GradVac(), granularity="module")
    with pytest.raises(ValueError, match="layout of 4 segments; this synthesizer's has 2"):
        module_wise.load_state_dict({**module_wise.state_dict(), "layout": four["layout"]})
    # directly: a GradVac told the segment count refuses another
    with pytest.raises(ValueError, match="one entry per segment \\(3 here\\)"):
        sk.GradVac().load_state_dict(four["weighting"], segments=3)
