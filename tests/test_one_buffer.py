"""One-buffer mode (``GradientSynthesizer(buffers=1)``): the combine inside the retain backward.

Judged against the default two-buffer mode, which the other synthesizer tests judge against the
reference: the same gradients (bitwise for element-wise methods) and statistics, step after
step, on every backend; each retain gradient freed inside the backward; misuse refused.
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

import sago_kernels as sk

# every method decided per parameter, except the ones with a state across steps (GRU; GradVac
# is no registered name): tests/test_synthesizer_state.py checks they are refused
ONE_BUFFER_METHODS = [n for n, m in sk.METHODS.items() if m.scope != "global" and not m.needs_state]
ELEMENT_METHODS = [n for n, m in sk.METHODS.items() if m.scope == "element"]


class _Net(torch.nn.Module):
    """Parameters of several sizes, one reached only by the forget loss, one only by the
    retain loss, one by neither, one frozen."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 40)
        self.b = torch.nn.Linear(40, 3)
        self.forget_only = torch.nn.Linear(6, 3)
        self.retain_only = torch.nn.Linear(6, 3, bias=False)
        self.unused = torch.nn.Linear(2, 2)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x, task):
        side = self.forget_only if task == "forget" else self.retain_only
        return self.frozen(self.b(torch.tanh(self.a(x))) + side(x))


def _step(model, synth, batches):
    """Two forget micro-batches, one retain backward, the combine."""
    xf1, xf2, xr = batches
    with synth.forget():
        (-model(xf1, "forget").square().mean()).backward()
        (-0.5 * model(xf2, "forget").abs().mean()).backward()
    with synth.retain():
        (model(xr, "retain") - 1).square().mean().backward()
    return synth.combine_()


def _run(device, backend, method, buffers, steps):
    torch.manual_seed(0)
    model = _Net().to(device)
    synth = sk.GradientSynthesizer(
        model, method=method, alpha=0.7, gamma=1.3, backend=backend, buffers=buffers
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    grads, tables = [], []
    for _ in range(steps):
        batches = [torch.randn(4, 6, generator=g).to(device) for _ in range(3)]
        stats = _step(model, synth, batches)
        grads.append([p.grad.clone() for p in synth.params])
        tables.append(stats.table.clone())
        opt.step()
    return model, synth, grads, tables


@pytest.mark.parametrize("method", ONE_BUFFER_METHODS)
def test_same_steps_as_two_buffer_mode(backend, device, method):
    steps = 3
    if backend == "triton" and device.type == "cpu":  # the interpreter is slow: fewer steps,
        steps = 2 if method in ("sago", "pcgrad", "gru") else 1  # and one for the weightings
    model1, synth1, grads1, tables1 = _run(device, backend, method, 1, steps)
    model2, synth2, grads2, tables2 = _run(device, backend, method, 2, steps)
    # the CPU backends sum each segment alone in one fixed order: one parameter combined alone
    # gives the bits it gives among the others (so one-buffer mode runs the backend it is given)
    bitwise = backend in ("reference", "native")
    for step, (g1, g2, t1, t2) in enumerate(zip(grads1, grads2, tables1, tables2)):
        for name, a, b in zip(synth1.names, g1, g2):
            if bitwise or method in ELEMENT_METHODS:  # same arithmetic on the same inputs
                assert torch.equal(a, b), f"step {step}: {name}"
            else:  # the dots of one parameter may be summed in another order
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")
        if bitwise:
            assert torch.equal(t1.nan_to_num(7.0), t2.nan_to_num(7.0)), f"step {step}"
        torch.testing.assert_close(t1, t2, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert [s.method for s in synth1.history] == [sk.METHODS[method].name] * steps
    for p1, p2 in zip(model1.parameters(), model2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    if synth1.state_buffer is not None:  # GRU: the moving average followed the same g_r
        torch.testing.assert_close(synth1.state_buffer, synth2.state_buffer)
    assert len(synth1.history) == steps


def test_each_retain_gradient_is_freed_inside_the_backward():
    """At most one retain gradient is alive at a time: each is freed by its own hook, so the
    retain backward holds one parameter's g_r on top of the buffer, never all of them."""
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    seen: list[weakref.ref] = []
    alive_at_each_combine = []
    combine_slot = synth._combine_slot

    def watching(index, retain=None):
        if retain is None:
            alive_at_each_combine.append(sum(ref() is not None for ref in seen))
            seen.append(weakref.ref(synth.params[index].grad))
        combine_slot(index, retain)

    synth._combine_slot = watching
    x = torch.randn(4, 6)
    with synth.forget():
        (-model(x, "forget").square().mean()).backward()
    with synth.retain():
        model(x, "retain").square().mean().backward()
        assert all(p.grad is None for p in synth.params)
    gc.collect()
    assert len(seen) == 5  # a.weight, a.bias, b.weight, b.bias, retain_only.weight
    assert alive_at_each_combine == [0, 0, 0, 0, 0]
    assert all(ref() is None for ref in seen)
    synth.combine_()
    for p, view in zip(synth.params, synth.layout.views(synth.forget_buffer)):
        assert p.grad.data_ptr() == view.data_ptr()  # g_final, in the one buffer


def test_holds_one_buffer():
    model = _Net()
    one = sk.GradientSynthesizer(model, method="pcgrad", buffers=1)
    assert one.retain_buffer is one.forget_buffer
    assert one.memory_bytes == one.layout.numel * 4
    del one
    two = sk.GradientSynthesizer(model, method="pcgrad")
    assert two.memory_bytes == 2 * two.layout.numel * 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="pcgrad_global"), "whole model"),
        (dict(method="blur"), "whole model"),
        (dict(method="gru_global"), "whole model"),
        (dict(method="sago", granularity="global"), "granularity='parameter'"),
        (dict(method="sago", granularity="module"), "granularity='parameter'"),
        (dict(method=sk.weighting_method(sk.GradVac())), "state per segment"),
        (dict(method="gru"), "method 'gru' keeps a state per segment across steps"),
        (dict(method=sk.method_with("gru", beta=0.5)), r"method 'gru\(beta=0.5\)' keeps a state"),
        (dict(method="sago", data_parallel_group=object()),
         r"^buffers=1 \(one-buffer mode\) combines .* averaged over the"),
        (dict(method="sago", process_group=object()),
         r"^buffers=1 \(one-buffer mode\) combines .* sharded"),
        (dict(buffers=0), "Found `buffers = 0`"),
        (dict(buffers=3), "Found `buffers = 3`"),
        (dict(buffers=True), "Found `buffers = True`"),
        (dict(buffers="1"), "Found `buffers = '1'`"),
    ],
)
def test_refused_at_construction(kwargs, match):
    model = _Net()
    kwargs = {"buffers": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        sk.GradientSynthesizer(model, **kwargs)
    assert all(p.grad is None for p in model.parameters())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def _forget_then_retain(model, synth, x):
    with synth.forget():
        (-model(x, "forget").square().mean()).backward()
    with synth.retain():
        model(x, "retain").square().mean().backward()


def test_a_second_retain_backward_is_refused_and_the_step_discarded():
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    x = torch.randn(4, 6)
    with synth.forget():
        (-model(x, "forget").square().mean()).backward()
    with pytest.raises(RuntimeError, match="second retain backward.*one retain|once per step"):
        with synth.retain():
            model(x, "retain").square().mean().backward()
            model(x, "retain").square().mean().backward()
    with pytest.raises(RuntimeError, match="incomplete.*zero_grad"):
        synth.combine_()
    synth.zero_grad()  # discards the step; a correct one then equals the two-buffer mode's
    _forget_then_retain(model, synth, x)
    synth.combine_()
    twin = _Net()
    twin.load_state_dict(model.state_dict())
    two = sk.GradientSynthesizer(twin, method="sago")
    _forget_then_retain(twin, two, x)
    two.combine_()
    for a, b in zip(synth.params, two.params):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("second", ["retain", "forget"])
def test_a_context_after_the_retain_backward_is_refused_before_anything_is_written(second):
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    x = torch.randn(4, 6)
    _forget_then_retain(model, synth, x)
    before = synth.forget_buffer.clone()
    with pytest.raises(RuntimeError, match=f"synth.{second}\\(\\) after synth.retain\\(\\)"):
        with getattr(synth, second)():
            pass
    assert torch.equal(synth.forget_buffer, before)
    synth.combine_()  # the step itself is intact


def test_a_retain_context_without_backward_does_not_block_the_step():
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    x = torch.randn(4, 6)
    with synth.retain():
        pass  # e.g. an exception before the backward, caught by the caller
    _forget_then_retain(model, synth, x)
    synth.combine_()


def test_hooks_of_a_dropped_synthesizer_do_nothing():
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    del synth
    gc.collect()
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
    x = torch.randn(4, 6)
    model(x, "retain").square().mean().backward()
    assert model.a.weight.grad is not None



@pytest.mark.parametrize("buffers", [1, 2])
def test_an_exception_inside_a_context_refuses_the_step_until_zero_grad(buffers):
    """A backward stopped part-way leaves some gradients in and others not: the combine is
    refused rather than run on them (one-buffer mode would take the missing ones as zero)."""
    torch.manual_seed(0)
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=buffers)
    x = torch.randn(4, 6)
    with synth.forget():
        (-model(x, "forget").square().mean()).backward()
    with pytest.raises(RuntimeError, match="stand-in"):
        with synth.retain():
            model(x, "retain").square().mean().backward()
            raise RuntimeError("stand-in for an out-of-memory error after the backward")
    with pytest.raises(RuntimeError, match="exception left synth.retain.*zero_grad"):
        synth.combine_()
    synth.zero_grad()
    _forget_then_retain(model, synth, x)
    synth.combine_()


def test_create_graph_in_one_buffer_retain_is_refused():
    """backward(create_graph=True) hands the hook a gradient with a graph: refused (the combine
    has no derivative), and the step with it."""
    model = _Net()
    synth = sk.GradientSynthesizer(model, method="sago", buffers=1)
    x = torch.randn(4, 6)
    with synth.forget():
        (-model(x, "forget").square().mean()).backward()
    with pytest.raises(ValueError, match="should not require grad"):
        with synth.retain():
            model(x, "retain").square().mean().backward(create_graph=True)
    with pytest.raises(RuntimeError, match="partial"):
        synth.combine_()


def test_a_sparse_retain_gradient_is_combined_as_buffers_2_accumulates_it():
    """nn.Embedding(sparse=True): autograd hands the retain hook a sparse gradient; it is made
    dense, as the two-buffer mode's dense retain buffer takes it, and the steps are the same."""

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(13, 4, sparse=True)
            self.out = torch.nn.Linear(4, 2)

        def forward(self, ids):
            return self.out(torch.tanh(self.emb(ids))).mean(1)

    runs = {}
    for buffers in (1, 2):
        model = Bag()
        synth = sk.GradientSynthesizer(model, method="sago", buffers=buffers)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            ids_f, ids_r = (torch.randint(0, 13, (3, 5), generator=g) for _ in range(2))
            with synth.forget():
                (-model(ids_f).square().mean()).backward()
            with synth.retain():
                (model(ids_r) - 1).square().mean().backward()
            synth.combine_()
            assert model.emb.weight.grad.layout == torch.strided
            opt.step()
        runs[buffers] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(runs[1], runs[2]):
        assert torch.equal(a, b)


def test_every_gradient_autograd_hands_over_takes_the_fast_path(monkeypatch):
    """Dense and sparse retain gradients go straight to the backend (the checked path, a third
    of a small parameter's time, is for what autograd does not make)."""
    from sago_kernels.synthesis import one_buffer

    checked = []
    monkeypatch.setattr(one_buffer, "checked_combine", lambda *a, **k: checked.append(a))
    model = _Net()
    emb = torch.nn.Embedding(9, 6, sparse=True)
    synth = sk.GradientSynthesizer(torch.nn.ModuleList([model, emb]), method="sago", buffers=1)
    x, ids = torch.randn(4, 6), torch.tensor([[1, 4, 4], [0, 8, 2]])
    with synth.forget():
        (-model(x, "forget").square().mean() - emb(ids).sum()).backward()
    with synth.retain():
        (model(x, "retain").square().mean() + emb(ids).square().sum()).backward()
    synth.combine_()
    assert checked == []


def test_a_retain_gradient_the_fast_path_cannot_read_goes_through_the_checked_combine():
    """What the backend cannot read as it is gets combine_'s own checks: strided, negated or
    grad-requiring views, another dtype or length are refused naming `retain` and the problem,
    before anything is written; the one such gradient they accept (one requiring grad, with grad
    mode off) is combined by combine_'s checked path: the same bits as combine_ of a plain copy,
    the loss scaler's unscale and found-inf flag included."""
    from sago_kernels.synthesis.one_buffer import OneBuffer

    layout = sk.GradLayout.from_sizes([6, 5])  # parameter 0 at [0, 6), parameter 1 at [64, 69)
    g = torch.Generator().manual_seed(3)
    values = torch.randn(12, generator=g)

    def slots_over(buffer, method="pcgrad", stats=True):
        return OneBuffer(layout, buffer, sk.METHODS[method], method, 0.7, 1.3, 1e-8, stats,
                         "reference")  # fmt: skip

    refused = [
        (values[::2], ValueError, "`retain` should be contiguous"),
        (torch._neg_view(values[:6]), ValueError, "`retain` should not be a negative view"),
        (values[:6].clone().requires_grad_(), ValueError, "`retain` should not require grad"),
        (values[:6].double(), TypeError, "`retain` should have dtype float32, bfloat16"),
        (values[:6].bfloat16(), TypeError, "`forget` should have the dtype of `retain`"),
        (values[:4], ValueError, "as many elements as `retain` \\(4\\)"),
    ]
    buffer = torch.randn(layout.numel, generator=g)
    before = buffer.clone()
    slots = slots_over(buffer)
    for retain, error, match in refused:
        with pytest.raises(error, match=match):
            slots.combine_slot(0, retain)
    assert torch.equal(buffer, before) and slots.combined == [False, False]
    for scaled in (False, True):
        retain = (values[:6] * (math.inf if scaled else 1.0)).requires_grad_()
        buffer = torch.randn(layout.numel, generator=g)
        forget = buffer[:6].clone()
        inv = torch.tensor([0.25]) if scaled else None
        found, want_found = (torch.zeros(1), torch.zeros(1)) if scaled else (None, None)
        slots = slots_over(buffer)
        with torch.no_grad():
            slots.combine_slot(0, retain, inv, found)
            want, stats = sk.combine_(
                retain.detach().clone(), forget, method="pcgrad", alpha=0.7, gamma=1.3,
                eps=1e-8, stats=True, backend="reference", inv_scale=inv, found_inf=want_found,
            )  # fmt: skip
        assert torch.equal(buffer[:6].nan_to_num(7.0), want.nan_to_num(7.0)), scaled
        assert slots.combined == [True, False]
        slots.combine_slot(1, slots.zero_retain(1))  # as combine_() does the ones left
        assert torch.equal(slots.statistics().table[0].nan_to_num(7.0),
                           stats.table[0].nan_to_num(7.0))  # fmt: skip
        if scaled:  # an inf in the retain gradient flags the step on this path too
            assert found.item() == want_found.item() == 1.0
