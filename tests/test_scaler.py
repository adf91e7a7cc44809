"""Mixed precision: a loss scaler's unscale fused into the combine (``inv_scale``, ``found_inf``).

The contract: combining gradients scaled by 2^k with ``inv_scale = 2^-k`` gives, bit for bit, the
combine of the unscaled gradients (multiplying by a power of two is exact), for every method and
dtype, statistics and GRU's state included; ``found_inf`` is set exactly when the step holds a
non-finite value, and then no state moves.
"""

from __future__ import annotations

import pytest
import torch

import sago_kernels as sk

SCALE = 2.0**16  # GradScaler's initial scale
STATELESS = [m for m in sk.METHODS if not sk.METHODS[m].needs_state]


def _buffers(layout, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    retain, forget = layout.new_buffer(dtype, device), layout.new_buffer(dtype, device)
    for buf in (retain, forget):
        for view in layout.segment_views(buf):
            view.copy_(torch.randn(view.numel(), generator=g) * 1e-3)
    return retain, forget


def _scalers(device, scale=SCALE):
    inv = torch.full((1,), scale, dtype=torch.float32, device=device).double().reciprocal().float()
    return inv, torch.zeros(1, dtype=torch.float32, device=device)


LAYOUT = sk.GradLayout.from_sizes([37, 5000, 0, 129, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", STATELESS)
def test_unscale_in_the_combine_equals_the_combine_of_unscaled_gradients(
    backend, device, dtype, method
):
    retain, forget = _buffers(LAYOUT, dtype, device)
    want, want_stats = sk.combine_(
        retain.clone(), forget, layout=LAYOUT, method=method, stats=True, backend=backend
    )
    inv, found = _scalers(device)
    got, got_stats = sk.combine_(
        retain * SCALE, forget * SCALE, layout=LAYOUT, method=method, stats=True,
        backend=backend, inv_scale=inv, found_inf=found,
    )  # fmt: skip
    assert torch.equal(got, want)
    assert torch.equal(got_stats.table, want_stats.table)
    assert found.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["gru", "gru_global"])
def test_gru_state_is_of_the_unscaled_gradients(backend, device, dtype, method):
    """GRU's average mixed steps of different scales: it must hold unscaled gradients only."""
    states = [LAYOUT.new_buffer(dtype, device) for _ in range(2)]
    for step in range(2):
        retain, forget = _buffers(LAYOUT, dtype, device, seed=step)
        want = sk.combine_(retain.clone(), forget, layout=LAYOUT, method=method,
                           backend=backend, state=states[0])  # fmt: skip
        inv, found = _scalers(device, SCALE * 2**step)  # the scale moves between steps
        got = sk.combine_(retain * SCALE * 2**step, forget * SCALE * 2**step, layout=LAYOUT,
                          method=method, backend=backend, state=states[1], inv_scale=inv,
                          found_inf=found)  # fmt: skip
        assert torch.equal(got, want) and torch.equal(states[1], states[0])
        assert found.item() == 0.0


def test_nash_mtl_caps_the_unscaled_step():
    """nash_mtl's cap at norm 1 was applied in scaled units: the step came out 1/scale too small
    after unscaling. With inv_scale the cap sees the unscaled gradients."""
    retain, forget = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    plain = sk.combine_(retain.clone(), forget, method="nash_mtl", backend="reference")
    inv, found = _scalers("cpu")
    fused = sk.combine_(retain * SCALE, forget * SCALE, method="nash_mtl", backend="reference",
                        inv_scale=inv, found_inf=found)  # fmt: skip
    naive = sk.combine_(retain * SCALE, forget * SCALE, method="nash_mtl", backend="reference")
    assert torch.equal(fused, plain) and plain.norm() == pytest.approx(1.0)
    assert (naive / SCALE).norm() == pytest.approx(1.0 / SCALE)  # the defect, for the record


@pytest.mark.parametrize("method", ["sago", "pcgrad", "upgrad", "blur"])
@pytest.mark.parametrize("where", ["retain", "forget"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_found_inf_is_set_by_a_non_finite_gradient(backend, device, method, where, value):
    retain, forget = _buffers(LAYOUT, torch.float32, device)
    (retain if where == "retain" else forget)[LAYOUT.segments[3].start + 7] = value
    inv, found = _scalers(device)
    sk.combine_(retain, forget, layout=LAYOUT, method=method, backend=backend,
                inv_scale=inv, found_inf=found)  # fmt: skip
    assert found.item() == 1.0
    ok_r, ok_f = _buffers(LAYOUT, torch.float32, device)
    sk.combine_(ok_r, ok_f, layout=LAYOUT, method=method, backend=backend, found_inf=found)
    assert found.item() == 1.0  # set, never cleared: GradScaler's flag for the whole step


def test_found_inf_is_set_by_a_non_finite_g_final():
    """Finite gradients, weights that overflow: PCGrad's coefficient d/(n + eps) with n
    underflowing; the segment is written as NaN, which the optimizer must not step on."""
    retain = torch.tensor([1e-30, 0.0])
    forget = torch.tensor([-3e38, 0.0])
    found = torch.zeros(1)
    out = sk.combine_(retain.clone(), forget, method="pcgrad", eps=0.0, backend="reference",
                      found_inf=found)  # fmt: skip
    assert torch.isnan(out).all() and found.item() == 1.0


@pytest.mark.parametrize("method", ["gru", "gru_global"])
def test_a_skipped_step_leaves_grus_state(backend, device, method):
    retain, forget = _buffers(LAYOUT, torch.float32, device)
    state = LAYOUT.new_buffer(torch.float32, device)
    sk.combine_(retain.clone(), forget, layout=LAYOUT, method=method, backend=backend, state=state)
    before = state.clone()
    forget[LAYOUT.segments[1].start] = float("inf")  # one segment overflows: no segment moves
    inv, found = _scalers(device, 1.0)
    sk.combine_(retain.clone(), forget, layout=LAYOUT, method=method, backend=backend,
                state=state, inv_scale=inv, found_inf=found)  # fmt: skip
    assert found.item() == 1.0 and torch.equal(state, before)
    found.fill_(1.0)  # set earlier in the step (another combine): this one keeps its state too
    ok_r, ok_f = _buffers(LAYOUT, torch.float32, device, seed=3)
    sk.combine_(ok_r, ok_f, layout=LAYOUT, method=method, backend=backend, state=state,
                found_inf=found)  # fmt: skip
    assert torch.equal(state, before)


def test_a_skipped_step_leaves_gradvacs_state(backend, device):
    gradvac = sk.GradVac()
    retain, forget = _buffers(LAYOUT, torch.float32, device)
    sk.combine_(retain.clone(), forget, layout=LAYOUT, method=gradvac, backend=backend)
    before = gradvac.phi_hat.clone()
    forget[0] = float("inf")
    found = torch.zeros(1, device=device)
    sk.combine_(retain.clone(), forget, layout=LAYOUT, method=gradvac, backend=backend,
                found_inf=found)  # fmt: skip
    assert found.item() == 1.0 and torch.equal(gradvac.phi_hat, before)


@pytest.mark.parametrize(
    "inv_scale, found_inf, error",
    [
        (1.0 / SCALE, None, TypeError),  # a Python float would need a host sync to make
        (torch.ones(2), None, ValueError),
        (torch.ones(1, dtype=torch.float64), None, ValueError),
        (None, torch.zeros(1, dtype=torch.int64), ValueError),
        (None, torch.zeros(1).to_sparse(), TypeError),
        (None, torch.zeros(1, requires_grad=True), ValueError),
    ],
)
def test_bad_scaler_tensors_are_refused_before_writing(inv_scale, found_inf, error):
    retain, forget = torch.ones(4), -torch.ones(4)
    with pytest.raises(error, match="inv_scale|found_inf"):
        sk.combine_(retain, forget, inv_scale=inv_scale, found_inf=found_inf)
    assert retain.eq(1).all()


def test_float16_gradients_are_not_unscaled():
    retain, forget = torch.ones(4, dtype=torch.float16), -torch.ones(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="FP16"):
        sk.combine_(retain, forget, inv_scale=torch.ones(1))


# --------------------------------------------------------------------------- the synthesizer


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _scaled_steps(method, buffers, scaler, steps=3, backend="reference", poison=None, stats=True):
    """AdamW steps of an Algorithm 1 loop; with ``scaler``, fp16-style: each loss scaled, the
    combine unscaling, scaler.step / update. ``poison``: the step whose forget loss is inf."""
    model = _mlp()
    synth = sk.GradientSynthesizer(model, method=method, buffers=buffers, backend=backend,
                                   grad_scaler=scaler, stats=stats)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    snapshots = []
    for step in range(steps):
        x, y = torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)
        scale = scaler.scale if scaler is not None else (lambda loss: loss)
        with synth.forget():
            loss_f = -(model(x) - y).square().mean()
            if step == poison:
                loss_f = loss_f * float("inf")
            scale(loss_f).backward()
        with synth.retain():
            scale((model(-x) - y).abs().mean()).backward()
        if scaler is not None:
            synth.combine_(optimizer=opt)
            scaler.step(opt)
            scaler.update()
        else:
            synth.combine_()
            opt.step()
        opt.zero_grad()
        snapshots.append([p.detach().clone() for p in model.parameters()])
    return model, synth, snapshots


@pytest.mark.parametrize(
    "method, buffers", [("sago", 2), ("sago", 1), ("pcgrad", 2), ("pcgrad", 1), ("gru", 2),
                        ("nash_mtl", 2), ("upgrad", 1)],
)  # fmt: skip
def test_scaled_steps_equal_the_fp32_steps(method, buffers):
    """A GradScaler's steps (scaled losses, the combine unscaling in its own pass, scaler.step)
    are the unscaled run's, bit for bit: the scale is a power of two."""
    plain, plain_synth, _ = _scaled_steps(method, buffers, None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaled, scaled_synth, _ = _scaled_steps(method, buffers, scaler)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)
    assert plain_synth.history_table() == scaled_synth.history_table()  # unscaled geometry
    if method == "gru":
        assert torch.equal(plain_synth.state_buffer, scaled_synth.state_buffer)


@pytest.mark.parametrize("method, buffers, stats", [("sago", 1, True), ("sago", 1, False),
                                                    ("pcgrad", 2, True), ("gru", 2, True)])
def test_an_overflowed_step_is_skipped_and_leaves_the_state(method, buffers, stats):
    """Without statistics too: the overflow is read from the sums the combine is then asked for."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _, synth, snapshots = _scaled_steps(method, buffers, scaler, steps=2, stats=stats)
    state = None if synth.state_buffer is None else synth.state_buffer.clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _, synth, poisoned = _scaled_steps(method, buffers, scaler, steps=3, poison=2, stats=stats)
    assert all(torch.equal(a, b) for a, b in zip(poisoned[1], poisoned[2]))  # not stepped
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], poisoned[1]))
    assert scaler.get_scale() == 2.0**15  # backed off, as after any overflow
    if state is not None:
        assert torch.equal(synth.state_buffer, state)



def _unscale_s_record(scaler):
    """What GradScaler.unscale_ itself records for an optimizer: of a float32 twin model's
    scaled gradient, unscaled by ``scaler``."""
    twin = torch.nn.Linear(1, 1, dtype=torch.float32)
    twin(torch.ones(1, 1, dtype=torch.float32)).sum().mul(scaler.get_scale()).backward()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    scaler.unscale_(twin_opt)
    return scaler._per_optimizer_states[id(twin_opt)]

def test_the_scaler_record_is_unscale_s_own():
    """What combine_ writes in the scaler is what GradScaler.unscale_ writes: stage and flag."""
    from torch.amp.grad_scaler import OptState

    model = _mlp()
    scaler = torch.amp.GradScaler("cpu")
    synth = sk.GradientSynthesizer(model, grad_scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 6)
    with synth.forget():
        scaler.scale(model(x).sum()).backward()
    with synth.retain():
        scaler.scale(model(x).square().sum()).backward()
    with pytest.raises(TypeError, match="optimizer"):
        synth.combine_()
    synth.combine_(optimizer=opt)
    ours = scaler._per_optimizer_states[id(opt)]
    theirs = _unscale_s_record(scaler)
    assert ours["stage"] is theirs["stage"] is OptState.UNSCALED
    assert list(ours["found_inf_per_device"]) == list(theirs["found_inf_per_device"])
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    with synth.forget():  # the next step, unscaled by hand before the combine: refused
        scaler.scale(model(x).sum()).backward()
    with synth.retain():
        scaler.scale(model(x).square().sum()).backward()
    scaler._per_optimizer_states[id(opt)]["stage"] = OptState.UNSCALED  # as unscale_(opt) leaves it
    before = synth.retain_buffer.clone()
    with pytest.raises(RuntimeError, match="already unscaled"):
        synth.combine_(optimizer=opt)
    assert torch.equal(synth.retain_buffer, before)  # refused before anything was written



def _one_scaled_step(model, synth, scaler, optimizer):
    x = torch.randn(2, 6, dtype=torch.float32)
    with synth.forget():
        scaler.scale(model(x).sum()).backward()
    with synth.retain():
        scaler.scale(model(x).square().sum()).backward()
    synth.combine_(optimizer=optimizer)


def test_a_wrapped_optimizer_records_in_the_one_it_wraps():
    """accelerate's AcceleratedOptimizer steps ``scaler.step(self.optimizer)``: the record goes
    to the optimizer inside the wrapper, as unscale_ of that one would leave it."""
    from torch.amp.grad_scaler import OptState

    class Wrapped:  # what accelerate's wrapper exposes: the torch optimizer as `.optimizer`
        def __init__(self, optimizer):
            self.optimizer = optimizer

    model = _mlp()
    scaler = torch.amp.GradScaler("cpu")
    synth = sk.GradientSynthesizer(model, grad_scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _one_scaled_step(model, synth, scaler, Wrapped(opt))
    assert scaler._per_optimizer_states[id(opt)]["stage"] is OptState.UNSCALED
    scaler.step(opt)
    scaler.update()


def test_a_parameter_group_added_between_steps_is_checked_at_the_next_combine():
    model = _mlp()
    scaler = torch.amp.GradScaler("cpu")
    synth = sk.GradientSynthesizer(model, grad_scaler=scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _one_scaled_step(model, synth, scaler, opt)
    scaler.step(opt)
    scaler.update()
    opt.add_param_group({"params": torch.nn.Linear(2, 2).parameters()})
    with pytest.raises(ValueError, match="does not hold"):
        _one_scaled_step(model, synth, scaler, opt)


def test_the_found_inf_flag_is_float32_as_unscale_s_whatever_the_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = _mlp().float()
        scaler = torch.amp.GradScaler("cpu")
        synth = sk.GradientSynthesizer(model, grad_scaler=scaler)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        _one_scaled_step(model, synth, scaler, opt)
        ours = scaler._per_optimizer_states[id(opt)]["found_inf_per_device"]
        theirs = _unscale_s_record(scaler)["found_inf_per_device"]
        assert [v.dtype for v in ours.values()] == [v.dtype for v in theirs.values()]
    finally:
        torch.set_default_dtype(default)


def test_scaler_misuse_is_refused():
    with pytest.raises(TypeError, match="GradScaler"):
        sk.GradientSynthesizer(_mlp(), grad_scaler=object())
    with pytest.raises(ValueError, match="FP16"):
        sk.GradientSynthesizer(_mlp().half(), grad_scaler=torch.amp.GradScaler("cpu"))
    model = _mlp()
    scaler = torch.amp.GradScaler("cpu")
    synth = sk.GradientSynthesizer(model, grad_scaler=scaler)
    other = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([*model.parameters(), *other.parameters()], lr=0.1)
    with synth.forget():
        model(torch.randn(2, 6)).sum().backward()  # not scaled: the scale is still unknown
    with synth.retain():
        model(torch.randn(2, 6)).sum().backward()
    with pytest.raises(ValueError, match="does not hold"):
        synth.combine_(optimizer=opt)
    with pytest.raises(RuntimeError, match="has not scaled a loss"):
        synth.combine_(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
