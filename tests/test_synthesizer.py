"""GradientSynthesizer: autograd into flat buffers with no copies, accumulation, the step."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HAS_CUDA
from strategies import state_for

import sago_kernels as sk


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 5)
        self.b = torch.nn.Linear(5, 3)
        self.unused = torch.nn.Linear(2, 2)  # never in the graph: no gradient in either task
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.b(torch.tanh(self.a(x))))


def _losses(model, xf, xr):
    return -model(xf).square().mean(), (model(xr) - 1).square().mean()


def _backward(synth, lf, lr):
    """One step's backward passes: the forget loss in its context, then the retain loss."""
    with synth.forget():
        lf.backward()
    with synth.retain():
        lr.backward()


def _flat_grads(model, loss, layout):
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    buf = layout.new_buffer()
    for v, g in zip(layout.views(buf), grads):
        if g is not None:
            v.copy_(g)
    return buf


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_step_equals_manual_algorithm_1(backend, device, method):
    torch.manual_seed(0)
    model = _Net().to(device)
    twin = copy.deepcopy(model)
    xf, xr = torch.randn(4, 6, device=device), torch.randn(4, 6, device=device)
    synth = sk.GradientSynthesizer(model, method=method, alpha=0.7, gamma=1.3, eps=1e-3,
                                   backend=backend)  # fmt: skip
    lf, lr = _losses(model, xf, xr)
    _backward(synth, lf, lr)
    stats = synth.combine_()

    tf, tr = _losses(twin, xf, xr)
    g_f = _flat_grads(twin, tf, synth.layout).to(device)
    g_r = _flat_grads(twin, tr, synth.layout).to(device)
    want, want_stats = sk.combine_(g_r, g_f, layout=synth.layout, method=method, alpha=0.7,
                                   gamma=1.3, eps=1e-3, stats=True, backend=backend,
                                   **state_for(method, g_r, zero=True))  # fmt: skip
    if backend in ("reference", "native"):  # the same gradients, the same backend: the same bits
        assert torch.equal(synth.retain_buffer, want)
        assert torch.equal(stats.table.nan_to_num(7.0), want_stats.table.nan_to_num(7.0))
    torch.testing.assert_close(synth.retain_buffer, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.table, want_stats.table, rtol=1e-4, atol=1e-5)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p, v in zip(trainable, synth.layout.views(synth.retain_buffer)):
        assert p.grad is not None and p.grad.data_ptr() == v.data_ptr()
    assert model.frozen.weight.grad is None
    assert synth.history[-1] is stats



@pytest.mark.parametrize("method, buffers", [("gru", 2), ("sago", 1)])
def test_buffers_and_state_are_in_the_parameters_dtype(method, buffers):
    """A bfloat16 model: both buffers, GRU's state and each .grad are bfloat16, and the step is
    the combine of its bfloat16 gradients."""
    torch.manual_seed(0)
    model = _Net().to(torch.bfloat16)
    twin = copy.deepcopy(model)
    synth = sk.GradientSynthesizer(model, method=method, buffers=buffers, backend="reference")
    xf, xr = torch.randn(4, 6, dtype=torch.bfloat16), torch.randn(4, 6, dtype=torch.bfloat16)
    lf, lr = _losses(model, xf, xr)
    _backward(synth, lf, lr)
    synth.combine_()
    buffers_ = [synth.forget_buffer, synth.retain_buffer, synth.state_buffer]
    assert {b.dtype for b in buffers_ if b is not None} == {torch.bfloat16}
    assert all(p.grad.dtype == torch.bfloat16 for p in synth.params)
    tf, tr = _losses(twin, xf, xr)
    g_f, g_r = (_flat_grads(twin, loss, synth.layout).bfloat16() for loss in (tf, tr))  # exact
    want = sk.combine_(g_r, g_f, layout=synth.layout, method=method, backend="reference",
                       **state_for(method, g_r, zero=True))  # fmt: skip
    got = torch.cat([p.grad.reshape(-1) for p in synth.params])
    torch.testing.assert_close(got, torch.cat([v.reshape(-1) for v in synth.layout.views(want)]))


def test_backward_writes_into_the_buffers_without_copies(device):
    model = _Net().to(device)
    synth = sk.GradientSynthesizer(model)
    lf, lr = _losses(model, torch.randn(2, 6, device=device), torch.randn(2, 6, device=device))
    buffers = {"forget": synth.forget_buffer, "retain": synth.retain_buffer}
    for task, loss in (("forget", lf), ("retain", lr)):
        with getattr(synth, task)():
            loss.backward()
            base = buffers[task].untyped_storage().data_ptr()
            for p in synth.params:
                assert p.grad.untyped_storage().data_ptr() == base, (
                    "a gradient left the flat buffer"
                )
        assert all(p.grad is None for p in synth.params), "contexts unbind param.grad on exit"
    assert synth.memory_bytes == 2 * synth.layout.numel * 4
    # the unused layer got no gradient in either task: zeros, not garbage
    unused = synth.layout.views(synth.forget_buffer)[4]
    assert unused.shape == (2, 2) and not unused.any()


def test_accumulation_and_automatic_clearing(device):
    torch.manual_seed(1)
    model = _Net().to(device)
    synth = sk.GradientSynthesizer(model, method="sum")
    xs = [torch.randn(3, 6, device=device) for _ in range(3)]
    with synth.forget():
        for x in xs[:2]:  # two micro-batches in one context
            (-model(x).square().mean()).backward()
    with synth.forget():  # a second context before the combine also adds
        (-model(xs[2]).square().mean()).backward()
    total = sum(-model(x).square().mean() for x in xs)
    want = _flat_grads(model, total, synth.layout).to(device)
    torch.testing.assert_close(synth.forget_buffer, want, rtol=1e-5, atol=1e-6)

    synth.combine_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    opt.zero_grad()  # set_to_none: the synthesizer still clears its buffers on the next context
    with synth.retain():
        pass
    assert not synth.retain_buffer.any() and not synth.forget_buffer.any()


def test_errors():
    model = _Net()
    synth = sk.GradientSynthesizer(model)
    with synth.forget():
        with pytest.raises(RuntimeError, match="nest"):
            with synth.retain():
                pass
        with pytest.raises(RuntimeError, match="leave the context"):
            synth.combine_()
    mixed = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="one dtype and device"):
        sk.GradientSynthesizer(mixed)
    with pytest.raises(ValueError, match="method"):
        sk.GradientSynthesizer(model, method="nash")
    with pytest.raises(ValueError, match="finite"):
        sk.GradientSynthesizer(model, gamma=float("nan"))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        sk.GradientSynthesizer(frozen)


def test_history_and_granularity():
    model = _Net()
    synth = sk.GradientSynthesizer(model, granularity="module", keep_history=2)
    assert synth.layout.num_segments == 3  # a, b, unused (frozen skipped)
    for _ in range(3):
        lf, lr = _losses(model, torch.randn(2, 6), torch.randn(2, 6))
        _backward(synth, lf, lr)
        synth.combine_()
    rows = synth.history_table()
    assert len(rows) == 2 and set(rows[0]) == set(sk.FIELDS)
    assert rows == [stats.to_dict() for stats in synth.history]  # each step's total row
    assert "GradientSynthesizer(method='sago'" in repr(synth)
    model = _Net()
    quiet = sk.GradientSynthesizer(model, stats=False, backend="reference")
    lf, lr = _losses(model, torch.randn(2, 6), torch.randn(2, 6))
    _backward(quiet, lf, lr)
    assert quiet.combine_() is None and quiet.history == [] and quiet.history_table() == []


def test_only_a_weighting_that_can_restore_its_state_is_checkpointed():
    """A weighting with state_dict but no load_state_dict could not be resumed: it is treated as
    stateless (nothing saved for it), as one with load_state_dict alone is."""

    class Half:
        def __init__(self, with_save, with_load):
            if with_save:
                self.state_dict = dict
            if with_load:
                self.load_state_dict = lambda state: None

        def __call__(self, gram):
            return torch.full(gram.shape[:-1], 0.5, dtype=gram.dtype)

    for save, load in ((True, False), (False, True), (True, True)):
        method = sk.weighting_method(Half(save, load), "half")
        state = sk.GradientSynthesizer(_Net(), method=method).state_dict()
        assert ("weighting" in state) == (save and load), (save, load)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_peak_memory_is_two_buffers_plus_activations():
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)]).cuda()
    synth = sk.GradientSynthesizer(model, method="pcgrad")
    x = torch.randn(4, 1024, device="cuda")
    for _ in range(2):  # warm-up: compile kernels, cache the layout's tables
        with synth.forget():
            (-model(x).square().mean()).backward()
        with synth.retain():
            model(x).square().mean().backward()
        synth.combine_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with synth.forget():
        (-model(x).square().mean()).backward()
    with synth.retain():
        model(x).square().mean().backward()
    synth.combine_()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    # activations of a batch of 4 are tiny; a gradient copy would add param_bytes
    assert extra < 0.25 * param_bytes, (extra, param_bytes)


def test_a_state_of_another_method_is_refused_naming_this_synthesizers_method():
    saved = sk.GradientSynthesizer(_Net(), method="gru").state_dict()
    with pytest.raises(ValueError, match="but method 'sago' keeps none"):
        sk.GradientSynthesizer(_Net(), method="sago").load_state_dict(saved)
    with pytest.raises(ValueError, match="but method 'gru' keeps one"):
        sk.GradientSynthesizer(_Net(), method="gru").load_state_dict({})


def test_average_over_replicas_hands_both_buffers_to_the_engines_reduction():
    """The engine's reduction (DDP's all-reduce, tested across processes through combine_) is
    what averages; this method gives it both flat buffers, forget then retain, as combine_ does."""
    synth = sk.GradientSynthesizer(_Net(), backend="reference")
    calls = []
    synth.engine.reduce_buffers_ = lambda forget, retain: calls.append((forget, retain))
    synth.average_over_replicas_()
    assert len(calls) == 1
    assert calls[0][0] is synth.forget_buffer and calls[0][1] is synth.retain_buffer
