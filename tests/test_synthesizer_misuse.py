"""GradientSynthesizer and unlearning_step under misuse: every wrong input is refused up front,
and no gradient is ever dropped or put in the wrong slot without an error (issue 12)."""

from __future__ import annotations

import gc
import math
import sys

import pytest
import torch

import sago_kernels as sk


def _param(value: float, n: int = 3) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((n,), value))


def _step(model: torch.nn.Module, synth: sk.GradientSynthesizer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    xf, xr = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    with synth.forget():
        (-model(xf).square().mean()).backward()
    with synth.retain():
        (model(xr) - 1).square().mean().backward()
    synth.combine_()


def _mlp(frozen_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    if frozen_last:
        model[2].requires_grad_(False)
    return model


# --------------------------------------------------------------------------- item 1: duplicates


def test_a_parameter_listed_twice_has_one_slot_and_the_others_keep_theirs():
    a, b, c = _param(0.0), _param(0.0), _param(0.0)
    synth = sk.GradientSynthesizer(
        [("a", a), ("a2", a), ("b", b), ("c", c)], method="sum", backend="reference"
    )
    assert [id(p) for p in synth.params] == [id(a), id(b), id(c)]
    assert synth.names == ["a", "b", "c"]
    with synth.forget():
        (a.sum() + 2 * b.sum() + 3 * c.sum()).backward()
    views = synth.layout.views(synth.forget_buffer)
    for view, want in zip(views, (1.0, 2.0, 3.0)):
        torch.testing.assert_close(view, torch.full((3,), want))


def test_tied_weights_from_named_parameters_without_dedup_match_the_module():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(7, 4)
            self.mid = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 7, bias=False)
            self.head.weight = self.emb.weight  # tied, as language models do

        def forward(self, ids):
            return self.head(torch.tanh(self.mid(self.emb(ids))))

    torch.manual_seed(0)
    model = Tied()
    ids = torch.randint(0, 7, (3, 5))
    grads = {}
    for name, given in (
        ("module", model),
        ("repeated", list(model.named_parameters(remove_duplicate=False))),
    ):
        synth = sk.GradientSynthesizer(given, method="sum", backend="reference")
        with synth.forget():
            model(ids).square().mean().backward()
        with synth.retain():
            model(ids).mean().backward()
        synth.combine_()
        grads[name] = synth.retain_buffer.clone()
        # clipping sees each tensor once: the norm it measures is the buffer's norm
        total = torch.nn.utils.clip_grad_norm_(synth.params, float("inf"))
        torch.testing.assert_close(total, synth.retain_buffer.norm())
        synth.zero_grad()
    torch.testing.assert_close(grads["repeated"], grads["module"])


# --------------------------------------------------------------------------- item 2: what is given


def test_a_plain_iterable_of_parameters_is_what_an_optimizer_takes():
    model = _mlp(frozen_last=True)
    by_module = sk.GradientSynthesizer(model, backend="reference")
    _step(model, by_module)
    want = by_module.retain_buffer.clone()
    by_module.zero_grad()

    plain = sk.GradientSynthesizer(model.parameters(), backend="reference")
    assert plain.names == ["0", "1"]
    assert [id(p) for p in plain.params] == [id(model[0].weight), id(model[0].bias)]
    _step(model, plain)
    torch.testing.assert_close(plain.retain_buffer, want)
    assert model[0].weight.grad.data_ptr() == plain.retain_buffer.data_ptr()
    plain.zero_grad()

    mapping = sk.GradientSynthesizer(dict(model.named_parameters()), backend="reference")
    assert mapping.names == ["0.weight", "0.bias"]


@pytest.mark.parametrize(
    "given, error, match",
    [
        (lambda m: m[0].weight, TypeError, "single tensor"),
        (lambda m: [m[0].weight * 2], ValueError, "leaf"),
        (lambda m: [torch.zeros(3)], TypeError, "requires_grad=False"),
        (lambda m: [("w", torch.zeros(3))], TypeError, "requires_grad=False"),
        (lambda m: [3], TypeError, r"model_or_params\[0\]"),
        (lambda m: [{"params": list(m.parameters())}], TypeError, "group"),
        (lambda m: [("w", m[0].weight, 1)], TypeError, "tuple of 3"),
        (lambda m: [m[0].weight, ("b", m[0].bias)], TypeError, "only parameters or only"),
        (lambda m: 3, TypeError, "Found a int"),
        (lambda m: "weights", TypeError, "Found a str"),
    ],
)
def test_what_is_not_a_parameter_is_refused_naming_the_argument(given, error, match):
    model = _mlp()
    with pytest.raises(error, match=match) as info:
        sk.GradientSynthesizer(given(model))
    assert "model_or_params" in str(info.value)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- item 3: create_graph


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_create_graph_inside_a_context_is_refused_and_the_step_stays_refused():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match="create_graph"):
        with synth.forget():
            (-model(x).square().mean()).backward(create_graph=True)
    assert all(p.grad is None for p in model.parameters())
    for attempt in (synth.combine_, synth.retain):
        with pytest.raises(RuntimeError, match="incomplete"):
            with contextlib_or_call(attempt):
                pass
    synth.zero_grad()  # discards the refused step
    _step(model, synth)


def contextlib_or_call(attempt):
    """``with contextlib_or_call(f):`` enters f() when it is a context, else has called it."""
    result = attempt()
    return result if hasattr(result, "__enter__") else _Null()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_higher_order_terms_through_autograd_grad_land_in_the_buffer():
    model = _mlp()
    twin_weights = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    x = torch.randn(4, 6)

    def loss_with_penalty(params, forward):
        loss = forward(x).square().mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return loss + 0.1 * sum(g.square().sum() for g in grads)

    synth = sk.GradientSynthesizer(model, method="sum", backend="reference")
    with synth.forget():
        loss_with_penalty(list(model.parameters()), model).backward()

    def twin(inp):
        w0, b0, w2, b2 = twin_weights
        return torch.nn.functional.linear(torch.tanh(inp @ w0.T + b0), w2, b2)

    want = torch.autograd.grad(loss_with_penalty(twin_weights, twin), twin_weights)
    for got, expected in zip(synth.layout.views(synth.forget_buffer), want):
        torch.testing.assert_close(got, expected)


def test_an_exception_in_the_body_goes_up_unchanged_and_unbinds():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    with pytest.raises(KeyError, match="mine"):
        with synth.forget():
            model[0].weight.grad = None  # would be refused on a normal exit
            raise KeyError("mine")
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- item 4: misuse


def test_a_second_combine_without_new_backward_passes_is_refused():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    _step(model, synth)
    g_final = synth.retain_buffer.clone()
    with pytest.raises(RuntimeError, match="already called"):
        synth.combine_()
    torch.testing.assert_close(synth.retain_buffer, g_final, rtol=0, atol=0)
    assert len(synth.history) == 1
    _step(model, synth, seed=1)  # the next step is fine
    # hand-filled buffers after zero_grad() combine as before
    synth.zero_grad()
    synth.retain_buffer.copy_(g_final)
    synth.combine_()


def test_a_backward_outside_the_contexts_is_refused_before_it_is_lost():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6)

    model(x).sum().backward()  # before the first context
    with pytest.raises(RuntimeError, match="outside synth.forget"):
        with synth.forget():
            pass
    opt.zero_grad()  # discarding it is the way out
    with synth.forget():
        (-model(x).square().mean()).backward()
    forget = synth.forget_buffer.clone()

    model(x).sum().backward()  # between the contexts and the combine
    with pytest.raises(RuntimeError, match="outside synth.forget"):
        synth.combine_()
    with pytest.raises(RuntimeError, match="outside synth.forget"):
        with synth.retain():
            pass
    opt.zero_grad()
    torch.testing.assert_close(synth.forget_buffer, forget, rtol=0, atol=0)  # kept
    with synth.retain():
        model(x).abs().mean().backward()
    synth.combine_()
    opt.step()

    opt.zero_grad()  # set_to_none: .grad is None again, the buffers hold the finished step
    model(x).sum().backward()  # after the step, before the next one
    with pytest.raises(RuntimeError, match="outside synth.forget"):
        with synth.forget():
            pass



@pytest.mark.parametrize("task", ["forget", "retain"])
def test_a_grad_unbound_inside_a_context_is_named_with_what_happened_to_it(task):
    """The last parameter's .grad set to None, or replaced, inside a context (the others still
    bound): the step is refused naming that parameter, the context and which of the two."""
    for replace, how in ((False, "set to None"), (True, "replaced by a tensor outside the buffer")):
        model = _mlp()
        synth = sk.GradientSynthesizer(model, backend="reference")
        x = torch.randn(4, 6)
        if task == "retain":
            with synth.forget():
                model(x).sum().backward()
        with pytest.raises(RuntimeError, match=rf"`2.bias.grad` was {how} inside synth.{task}\(\)"):
            with getattr(synth, task)():
                model(x).square().sum().backward()
                model[2].bias.grad = torch.zeros(3) if replace else None
        with pytest.raises(RuntimeError, match="incomplete"):
            synth.combine_()



def test_a_synthesizer_refused_at_construction_leaves_nothing_to_clean_up(monkeypatch):
    """Its __del__ runs on an object whose __init__ stopped before the hooks: no error there."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    with pytest.raises(ValueError, match="backend"):
        sk.GradientSynthesizer(_mlp(), backend="cuda")
    gc.collect()
    assert seen == []



def test_an_optimizer_is_taken_without_a_scaler_and_anything_else_is_refused():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    x = torch.randn(4, 6)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for optimizer, error in (("sgd", TypeError), (sgd, None)):
        with synth.forget():
            model(x).sum().backward()
        with synth.retain():
            model(x).square().sum().backward()
        if error is None:
            synth.combine_(optimizer=optimizer)  # as a loop written for fp16 passes it always
            continue
        with pytest.raises(error, match="should be a torch optimizer.*Found `str`"):
            synth.combine_(optimizer=optimizer)
        synth.zero_grad()


def test_zero_grad_inside_a_context_is_refused():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6)
    with synth.forget():
        with pytest.raises(RuntimeError, match="inside synth.forget"):
            synth.zero_grad()
        model(x).sum().backward()
    for clear in (opt.zero_grad, model.zero_grad):
        for backward_after in (False, True):
            synth.zero_grad()
            with pytest.raises(RuntimeError, match="zero_grad"):
                with synth.retain():
                    model(x).sum().backward()
                    clear()
                    if backward_after:
                        model(x).sum().backward()
            with pytest.raises(RuntimeError, match="incomplete"):
                synth.combine_()
    synth.zero_grad()
    _step(model, synth)


@pytest.mark.parametrize("buffers", [2, 1])
@pytest.mark.parametrize(
    "write",
    [
        lambda model, opt: opt.zero_grad(set_to_none=False),
        lambda model, opt: model.zero_grad(set_to_none=False),
        lambda model, opt: [p.grad.zero_() for p in model.parameters()][:0],
        lambda model, opt: torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3),
        lambda model, opt: model[0].bias.grad.mul_(2.0),
    ],
    ids=["optimizer", "module", "zero_", "clip", "one_tensor"],
)
def test_an_in_place_write_to_grad_inside_a_context_is_refused(write, buffers):
    """Zeroing .grad in place (``zero_grad(set_to_none=False)``) inside a context silently erased
    the micro-batches accumulated before it; any in-place write there besides autograd's own
    adds is now found when the context exits, and the step refused until ``zero_grad()``."""
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference", buffers=buffers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6)
    with synth.forget():
        model(x).sum().backward()
    with pytest.raises(RuntimeError, match="changed in place inside synth.forget"):
        with synth.forget():
            model(x).sum().backward()
            write(model, opt)
            model(x).sum().backward()
    with pytest.raises(RuntimeError, match="incomplete"):
        synth.combine_()
    synth.zero_grad()
    with synth.forget():  # before any backward of the context it erases the earlier ones too
        model(x).sum().backward()
    with pytest.raises(RuntimeError, match="changed in place"):
        with synth.forget():
            write(model, opt)
    synth.zero_grad()
    if buffers == 2:
        with pytest.raises(RuntimeError, match="changed in place inside synth.retain"):
            with synth.retain():
                model(x).sum().backward()
                write(model, opt)
        synth.zero_grad()
    _step(model, synth)  # accumulation itself is never mistaken for a write
    with synth.forget():
        for _ in range(3):
            (model(x) ** 2).sum().backward()
    with synth.retain():
        model(x).sum().backward(retain_graph=True)
    synth.combine_()


@pytest.mark.parametrize("given", ["module", "iterable"])
def test_changing_requires_grad_after_construction_is_refused(given):
    model = _mlp(frozen_last=True)
    source = model if given == "module" else list(model.named_parameters())
    synth = sk.GradientSynthesizer(source, backend="reference")
    model[2].weight.requires_grad_(True)  # unfrozen: it has no slot
    with pytest.raises(RuntimeError, match="new GradientSynthesizer"):
        with synth.forget():
            pass
    model[2].weight.requires_grad_(False)
    with synth.forget():
        model(torch.randn(2, 6)).sum().backward()
    model[2].bias.requires_grad_(True)  # between the contexts and the combine
    with pytest.raises(RuntimeError, match="new GradientSynthesizer"):
        synth.combine_()
    model[2].bias.requires_grad_(False)
    model[0].bias.requires_grad_(False)  # frozen: the optimizer would still step its slot
    with pytest.raises(RuntimeError, match="frozen"):
        synth.combine_()
    model[0].bias.requires_grad_(True)
    synth.combine_()


def test_a_parameter_added_to_the_module_later_is_refused():
    model = _mlp()
    synth = sk.GradientSynthesizer(model, backend="reference")
    model.append(torch.nn.Linear(3, 3))  # in the forward from now on
    with synth.retain():
        model(torch.randn(2, 6)).sum().backward()
    with pytest.raises(RuntimeError, match="`3.weight`.*new GradientSynthesizer"):
        synth.combine_()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(backend="Triton"), ValueError, "backend"),
        (dict(backend=1), TypeError, "backend"),
        (dict(stats="yes"), TypeError, "stats"),
        (dict(stats=1), TypeError, "stats"),
        (dict(keep_history=-1), ValueError, "keep_history"),
        (dict(keep_history=1.5), TypeError, "keep_history"),
        (dict(keep_history=True), TypeError, "keep_history"),
        (dict(keep_history="10"), TypeError, "keep_history"),
        (dict(alpha=float("nan")), ValueError, "^Parameter `alpha` should be finite"),
        (dict(gamma=float("inf")), ValueError, "^Parameter `gamma` should be finite"),
        (dict(eps=-1e-8), ValueError, "^Parameter `eps` should be >= 0"),
    ],
)
def test_constructor_arguments_are_checked_up_front(kwargs, error, match):
    with pytest.raises(error, match=match):
        sk.GradientSynthesizer(_mlp(), **kwargs)



def test_each_backend_name_is_resolved_for_the_parameters_device():
    from conftest import BACKENDS

    for name in BACKENDS:  # the Triton interpreter counts as available on the CPU here
        assert sk.GradientSynthesizer(_mlp(), backend=name).backend == name


def test_a_new_synthesizer_combines_buffers_filled_by_hand():
    """Before any step nothing is stale: buffers filled by hand are combined as combine_ would."""
    synth = sk.GradientSynthesizer(_mlp(), method="pcgrad", backend="reference")
    g = torch.Generator().manual_seed(0)
    for buffer in (synth.forget_buffer, synth.retain_buffer):
        for view in synth.layout.views(buffer):
            view.copy_(torch.randn(view.shape, generator=g))
    want = sk.combine_(synth.retain_buffer.clone(), synth.forget_buffer.clone(),
                       layout=synth.layout, method="pcgrad", backend="reference")  # fmt: skip
    synth.combine_()
    assert torch.equal(synth.retain_buffer, want)


def test_keep_history_zero_and_none_are_valid():
    model = _mlp()
    for keep, kept in ((0, 0), (None, 3)):
        synth = sk.GradientSynthesizer(model, keep_history=keep, backend="reference")
        for seed in range(3):
            _step(model, synth, seed)
        assert len(synth.history) == kept
        synth.zero_grad()


def test_a_bad_data_parallel_group_is_reported_under_its_own_name(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    model = _mlp()
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="`data_parallel_group`"):
            sk.GradientSynthesizer(model, data_parallel_group=object())
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
        )
        started = True
    else:  # pragma: no cover - some other test left a group up
        started = False
    try:
        with pytest.raises(TypeError, match="`data_parallel_group` should be") as info:
            sk.GradientSynthesizer(model, data_parallel_group="world")
        assert "process_group`" not in str(info.value).replace("data_parallel_group", "")
        with pytest.raises(TypeError, match="`process_group` should be"):
            sk.GradientSynthesizer(model, process_group="world")
    finally:
        if started:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- item 5: the step


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.emb(input_ids)))


def _lm():
    return _LM()


def _batch(seed):
    ids = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(forget_loss="dpo"), ValueError, "forget_loss"),
        (dict(retain_loss="ce"), ValueError, "retain_loss"),
        (dict(forget_loss="npo"), ValueError, "ref_model"),
        (dict(retain_loss="kl"), ValueError, "ref_model"),
        (dict(loss_kwargs={"bta": 0.1}), TypeError, "bta"),
        (dict(forget_loss="ga", loss_kwargs={"beta": 0.1}), TypeError, "beta"),
        (dict(loss_kwargs={"beta": 0.0}), ValueError, "beta"),
        (dict(loss_kwargs={"beta": -1.0}), ValueError, "beta"),
        (dict(loss_kwargs={"beta": float("nan")}), ValueError, "beta"),
        (dict(loss_kwargs={"beta": "0.1"}), TypeError, "beta"),
        (dict(loss_kwargs={"delta": float("inf")}), ValueError, "delta"),
        (dict(forget_loss="rmu"), ValueError, "reads hidden states"),  # _LM has none
        (dict(retain_loss="rmu"), ValueError, "ref_model"),
        (dict(retain_loss="rmu", ref_model=_LM()), ValueError, "reads hidden states"),
        (dict(retain_loss_kwargs={"layer": 1}), TypeError, "retain_loss_kwargs"),
        (dict(forget_loss="rmu", loss_kwargs={"layer": -1}), ValueError, "layer"),
        (dict(forget_loss="rmu", loss_kwargs={"seed": 0.5}), TypeError, "seed"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (dict(max_grad_norm=0.0), ValueError, "max_grad_norm"),
        (dict(max_grad_norm=float("nan")), ValueError, "max_grad_norm"),
        (dict(max_grad_norm=float("inf")), ValueError, "max_grad_norm"),
        (dict(max_grad_norm="1.0"), TypeError, "max_grad_norm"),
        (dict(max_grad_norm=True), TypeError, "max_grad_norm"),
        (dict(forget_batch={"input_ids": torch.zeros(2, 3, dtype=torch.long)}), ValueError,
         "forget_batch"),
        (dict(retain_batch=[1, 2]), TypeError, "retain_batch"),
    ],
)  # fmt: skip
def test_a_bad_step_is_refused_before_the_last_steps_gradients_are_touched(kwargs, error, match):
    model = _lm()
    synth = sk.GradientSynthesizer(model, method="sago", backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = dict(forget_loss="simnpo", retain_loss="nll", max_grad_norm=1.0)
    sk.unlearning_step(model, synth, opt, _batch(0), _batch(1), **step)
    g_final = synth.retain_buffer.clone()
    weights = [p.detach().clone() for p in model.parameters()]
    defaults = dict(forget_batch=_batch(2), retain_batch=_batch(3), **step)
    with pytest.raises(error, match=match):
        sk.unlearning_step(model, synth, opt, **{**defaults, **kwargs})
    torch.testing.assert_close(synth.retain_buffer, g_final, rtol=0, atol=0)
    assert all(p.grad is None for p in synth.params)  # as the optimizer's zero_grad left them
    for before, p in zip(weights, model.parameters()):
        torch.testing.assert_close(p.detach(), before, rtol=0, atol=0)
    sk.unlearning_step(model, synth, opt, _batch(2), _batch(3), **step)  # and it goes on


def test_max_grad_norm_clips_g_final_once_per_tensor():
    model = _lm()
    model.head.weight = model.emb.weight  # tied: [11, 8] both ways
    params = list(model.named_parameters(remove_duplicate=False))
    synth = sk.GradientSynthesizer(params, method="sum", backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sk.unlearning_step(model, synth, opt, _batch(0), _batch(1), forget_loss="ga",
                       max_grad_norm=1e-3)  # fmt: skip
    assert math.isclose(synth.retain_buffer.norm().item(), 1e-3, rel_tol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(forget_loss="simnpo", loss_kwargs={"beta": 0.0}), ValueError, "beta"),
        (dict(forget_loss="ga", loss_kwargs={"beta": 0.1}), TypeError, "beta"),
        (dict(forget_loss="dpo"), ValueError, "forget_loss"),
        (dict(forget_loss="rmu", loss_kwargs={"steering": 0.0}), ValueError, "steering"),
        (dict(forget_loss="rmu", retain_loss_kwargs={"beta": 0.1}), TypeError, "beta"),
        (dict(forget_loss="rmu", retain_loss="rmu"), ValueError, "ref_model"),
    ],
)
def test_the_trainer_checks_its_losses_before_building_anything(kwargs, error, match):
    pytest.importorskip("transformers")
    from sago_kernels.unlearning.trainer import UnlearningTrainer

    with pytest.raises(error, match=match):  # model=None: it never got that far
        UnlearningTrainer(model=None, args=None, **kwargs)
