"""Each loss against a hand computation on a tiny batch (README, "Unlearning losses")."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import sago_kernels.unlearning.losses as L

# vocab of 3; logits chosen so probabilities are easy: softmax([0, ln 2, ln 1]) = [1/4, 1/2, 1/4]
LN2 = math.log(2.0)
ROW = [0.0, LN2, 0.0]


def _batch():
    logits = torch.tensor([[ROW, ROW, ROW], [ROW, ROW, ROW]])  # [B=2, T=3, V=3]
    labels = torch.tensor(
        [[-100, 1, 0], [-100, 2, -100]]
    )  # seq 0 scores tokens 1, 0; seq 1 token 2
    return logits, labels


def test_sequence_logprob_and_nll_by_hand():
    logits, labels = _batch()
    # seq 0: log(1/2) + log(1/4); seq 1: log(1/4)
    want = torch.tensor([math.log(0.5) + math.log(0.25), math.log(0.25)])
    torch.testing.assert_close(L.sequence_logprob(logits, labels), want)
    # 3 labelled tokens: mean NLL = -(ln 1/2 + 2 ln 1/4)/3
    nll = -(math.log(0.5) + 2 * math.log(0.25)) / 3
    torch.testing.assert_close(L.nll_loss(logits, labels), torch.tensor(nll))
    torch.testing.assert_close(L.ga_loss(logits, labels), torch.tensor(-nll))


def test_ga_matches_a_causal_lms_own_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 13, (3, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(L.ga_loss(out.logits, labels), -out.loss)


def test_npo_by_hand():
    logits, labels = _batch()
    ref = torch.zeros_like(logits)  # uniform: log p_ref = 2·ln(1/3) and ln(1/3)
    beta = 0.1
    lp = [math.log(0.5) + math.log(0.25), math.log(0.25)]
    lref = [2 * math.log(1 / 3), math.log(1 / 3)]
    want = (
        -(2 / beta)
        * sum(math.log(1 / (1 + math.exp(beta * (a - b)))) for a, b in zip(lp, lref))
        / 2
    )
    torch.testing.assert_close(L.npo_loss(logits, labels, ref, beta=beta), torch.tensor(want))
    # at θ = ref the loss is (2/β)·ln 2 and its gradient pushes log p down
    x = logits.clone().requires_grad_(True)
    loss = L.npo_loss(x, labels, logits.detach(), beta=beta)
    torch.testing.assert_close(loss, torch.tensor(2 / beta * LN2))
    loss.backward()
    step = x - 0.1 * x.grad
    assert (L.sequence_logprob(step.detach(), labels) < L.sequence_logprob(logits, labels)).all()


def test_simnpo_by_hand():
    logits, labels = _batch()
    beta, delta = 4.5, 0.2
    mean_nll = [-(math.log(0.5) + math.log(0.25)) / 2, -math.log(0.25)]
    want = (
        -(2 / beta) * sum(math.log(1 / (1 + math.exp(-beta * (m - delta)))) for m in mean_nll) / 2
    )
    torch.testing.assert_close(
        L.simnpo_loss(logits, labels, beta=beta, delta=delta), torch.tensor(want)
    )


def test_kl_by_hand():
    logits, labels = _batch()
    ref = torch.zeros_like(logits)
    # KL(uniform ‖ [1/4, 1/2, 1/4]) at each of the 3 scored positions
    kl = sum((1 / 3) * math.log((1 / 3) / q) for q in (0.25, 0.5, 0.25))
    torch.testing.assert_close(L.kl_loss(logits, labels, ref), torch.tensor(kl))
    torch.testing.assert_close(L.kl_loss(logits, labels, logits), torch.tensor(0.0))


def test_run_loss_forwards_once_and_needs_reference():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 5)

        def forward(self, input_ids, attention_mask=None):
            calls.append(self)
            return self.emb(input_ids)

    model, ref = Counting(), Counting()
    batch = {"input_ids": torch.randint(0, 5, (2, 4)), "labels": torch.randint(0, 5, (2, 4))}
    L.run_loss("npo", model, batch, ref_model=ref)
    assert calls == [model, ref]
    calls.clear()
    L.run_loss("kl", model, batch, ref_model=ref, forget=False)
    assert calls == [model, ref]
    calls.clear()
    L.run_loss("nll", model, batch, forget=False)
    assert calls == [model]
    with pytest.raises(ValueError, match="ref_model"):
        L.run_loss("npo", model, batch)
    with pytest.raises(ValueError, match="forget_loss"):
        L.run_loss("dpo", model, batch)


# --------------------------------------------------------------------------- misuse (issue 12)


@pytest.mark.parametrize("bad", [-1, -2, -99, -101, 3, 7])
@pytest.mark.parametrize(
    "loss",
    [
        lambda x, y: L.nll_loss(x, y),
        lambda x, y: L.ga_loss(x, y),
        lambda x, y: L.npo_loss(x, y, torch.zeros_like(x)),
        lambda x, y: L.simnpo_loss(x, y),
        lambda x, y: L.kl_loss(x, y, torch.zeros_like(x)),
    ],
)
def test_labels_outside_the_vocabulary_are_refused(loss, bad):
    logits, labels = _batch()  # vocab of 3
    labels[0, 2] = bad
    with pytest.raises(ValueError, match=rf"labels\[\(0, 2\)\] = {bad}"):
        loss(logits, labels)


def test_labels_should_be_integers():
    logits, labels = _batch()
    with pytest.raises(TypeError, match="labels.dtype"):
        L.nll_loss(logits, labels.float())


def test_kl_counts_tokens_the_reference_rules_out_as_zero():
    logits, labels = _batch()
    ref = torch.tensor([[0.0, LN2, float("-inf")]]).expand(2, 3, 3)  # p_ref = [1/3, 2/3, 0]
    kl = sum(p * math.log(p / q) for p, q in ((1 / 3, 0.25), (2 / 3, 0.5)))
    x = logits.clone().requires_grad_(True)
    loss = L.kl_loss(x, labels, ref)
    torch.testing.assert_close(loss, torch.tensor(kl))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # the model ruling out the same token is no divergence either
    masked = logits.clone()
    masked[..., 2] = float("-inf")
    torch.testing.assert_close(L.kl_loss(masked, labels, masked), torch.tensor(0.0))


@pytest.mark.parametrize("beta, error", [(0, ValueError), (0.0, ValueError), (-0.5, ValueError),
                                         (float("nan"), ValueError), (float("inf"), ValueError),
                                         ("0.1", TypeError), (None, TypeError)])  # fmt: skip
@pytest.mark.parametrize("name", ["npo", "simnpo"])
def test_beta_should_be_a_positive_float_before_any_forward(name, beta, error):
    logits, labels = _batch()
    direct = (
        (lambda: L.npo_loss(logits, labels, torch.zeros_like(logits), beta=beta))
        if name == "npo"
        else (lambda: L.simnpo_loss(logits, labels, beta=beta))
    )
    with pytest.raises(error, match="beta"):
        direct()

    class Never(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("the model ran before `beta` was checked")

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": labels}
    with pytest.raises(error, match="beta"):
        L.run_loss(name, Never(), batch, ref_model=Never(), beta=beta)


def test_run_loss_checks_its_arguments_before_the_forward():
    class Never(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("the model ran before the arguments were checked")

    logits, labels = _batch()
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": labels}
    with pytest.raises(TypeError, match="'simnpo' loss's hyperparameters"):
        L.run_loss("simnpo", Never(), batch, bta=1.0)
    with pytest.raises(TypeError, match="none"):
        L.run_loss("ga", Never(), batch, beta=1.0)
    with pytest.raises(ValueError, match="ref_model"):
        L.run_loss("kl", Never(), batch, forget=False)
    with pytest.raises(ValueError, match="labels"):
        L.run_loss("nll", Never(), {"input_ids": batch["input_ids"]}, forget=False)


# --------------------------------------------------------------------------- RMU


def _gpt2(n_layer=2, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=16, n_layer=n_layer, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def _rmu_batch(mask=True):
    ids = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone()}
    if mask:
        batch["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return batch


def test_rmu_direction_is_a_unit_vector_fixed_by_its_seed():
    u = L.rmu_direction(16, seed=3)
    assert u.shape == (16,) and u.dtype == torch.float32
    torch.testing.assert_close(u.norm(), torch.tensor(1.0))
    assert (u >= 0).all()  # uniform in [0, 1) then normalised, as the original draws it
    torch.testing.assert_close(L.rmu_direction(16, seed=3), u, rtol=0, atol=0)
    g = torch.rand(16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(u, g / g.norm(), rtol=0, atol=0)
    assert not torch.allclose(L.rmu_direction(16, seed=4), u)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(L.rmu_direction(16, seed=3), u, rtol=0, atol=0)
    torch.testing.assert_close(
        L.rmu_direction(16, seed=3, dtype=torch.float64), u.double(), rtol=0, atol=0
    )


@pytest.mark.parametrize("mask", [True, False])
def test_rmu_forget_loss_by_hand_on_a_tiny_gpt2(mask):
    model, batch = _gpt2(), _rmu_batch(mask)
    steering, seed, layer = 6.5, 7, 1
    loss = L.run_loss("rmu", model, batch, layer=layer, steering=steering, seed=seed)

    # layer 1: the first block's output, computed here without output_hidden_states
    with torch.no_grad():
        t = model.transformer
        h = t.wte(batch["input_ids"]) + t.wpe(torch.arange(5))
        h = t.h[0](h, attention_mask=None)
        h = h[0] if isinstance(h, tuple) else h
    g = torch.rand(16, generator=torch.Generator().manual_seed(seed))
    target = steering * g / g.norm()
    per_token = ((h - target) ** 2).sum(-1) / 16  # ‖h − c·u‖²/d
    if mask:  # 5 + 3 tokens counted; the causal block's first 3 tokens of row 1 ignore the pads
        want = (per_token[0].sum() + per_token[1, :3].sum()) / 8
    else:
        want = per_token.mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-5)
    # the padded positions do not count: changing them does not change the loss
    if mask:
        other = dict(batch, input_ids=batch["input_ids"].clone())
        other["input_ids"][1, 3:] = 0
        torch.testing.assert_close(L.run_loss("rmu", model, other, seed=seed, steering=steering),
                                   loss.detach())  # fmt: skip


def test_rmu_forget_loss_ignores_labels():
    model, batch = _gpt2(), _rmu_batch()
    unlabelled = dict(batch, labels=torch.full_like(batch["labels"], -100))
    torch.testing.assert_close(
        L.run_loss("rmu", model, unlabelled), L.run_loss("rmu", model, batch)
    )


def test_rmu_gradient_steers_the_layer_towards_c_u():
    model, batch = _gpt2(), _rmu_batch()
    u = L.rmu_direction(16, seed=0)

    def distance():
        with torch.no_grad():
            h = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                      output_hidden_states=True).hidden_states[1]  # fmt: skip
        return (h - 20.0 * u).norm(dim=-1)[batch["attention_mask"].bool()].mean()

    before = distance()
    loss = L.run_loss("rmu", model, batch)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    assert L.run_loss("rmu", model, batch) < loss
    assert distance() < before
    # block 2 and the head played no part in the forget term
    assert model.transformer.h[1].mlp.c_fc.weight.grad is None


def test_rmu_retain_loss_is_zero_at_the_reference_and_grows_away_from_it():
    model, batch = _gpt2(), _rmu_batch()
    model.eval()
    ref = _gpt2()
    ref.eval()
    zero = L.run_loss("rmu", model, batch, ref_model=ref, forget=False)
    assert zero.item() == 0.0
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.1)
    moved = L.run_loss("rmu", model, batch, ref_model=ref, forget=False)
    assert moved.item() > 0.0
    # by hand: the same layer of both, mean over the 8 counted tokens of ‖Δh‖²/d
    with torch.no_grad():
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=True).hidden_states[1]  # fmt: skip
        r = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True).hidden_states[1]  # fmt: skip
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(moved.detach(), ((h - r) ** 2).mean(-1)[m].mean())
    moved.backward()
    assert all(p.grad is None for p in ref.parameters())
    with pytest.raises(ValueError, match="ref_model"):
        L.run_loss("rmu", model, batch, forget=False)


def test_rmu_forwards_each_model_once():
    model, ref, batch = _gpt2(), _gpt2(), _rmu_batch()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append("model"))
    ref.register_forward_pre_hook(lambda m, a: calls.append("ref"))
    L.run_loss("rmu", model, batch)
    assert calls == ["model"]
    calls.clear()
    L.run_loss("rmu", model, batch, ref_model=ref, forget=False)
    assert calls == ["model", "ref"]


@pytest.mark.parametrize(
    "hparams, error, match",
    [
        (dict(layer=3), ValueError, r"layer.*\[0, 2\].*layer = 3"),
        (dict(layer=-1), ValueError, r"layer.*>= 0"),
        (dict(layer=1.0), TypeError, r"layer.*int"),
        (dict(layer=True), TypeError, r"layer.*int"),
        (dict(steering=0.0), ValueError, r"steering.*> 0"),
        (dict(steering=-20.0), ValueError, r"steering.*> 0"),
        (dict(steering=float("inf")), ValueError, "steering"),
        (dict(steering="20"), TypeError, "steering"),
        (dict(seed=-1), ValueError, r"seed.*\[0, "),
        (dict(seed=2**64), ValueError, r"seed.*\[0, "),
        (dict(seed=0.5), TypeError, r"seed.*int"),
        (dict(beta=0.1), TypeError, r"'rmu' loss's hyperparameters \(\['layer', 'seed', 'steer"),
    ],
)  # fmt: skip
def test_rmu_refuses_bad_hyperparameters_before_any_forward(hparams, error, match):
    model = _gpt2()

    def never(*args):
        raise AssertionError("the model ran before the hyperparameters were checked")

    model.register_forward_pre_hook(never)
    with pytest.raises(error, match=match):
        L.run_loss("rmu", model, _rmu_batch(), **hparams)
    if set(hparams) <= {"layer"}:
        with pytest.raises(error, match=match):
            L.run_loss("rmu", model, _rmu_batch(), ref_model=model, forget=False, **hparams)
    if "layer" not in hparams and "beta" not in hparams:
        with pytest.raises(TypeError, match="'rmu' loss's hyperparameters"):  # retain: layer only
            L.run_loss("rmu", model, _rmu_batch(), ref_model=model, forget=False, **hparams)


def test_rmu_refuses_a_model_without_hidden_states():
    class Plain(torch.nn.Module):  # cannot be asked for them: refused before its forward
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("ran")

    with pytest.raises(ValueError, match=r"reads hidden states.*output_hidden_states=True.*Plain"):
        L.run_loss("rmu", Plain(), _rmu_batch())

    class Logits(torch.nn.Module):  # takes any keyword, returns only logits
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(13, 4)

        def forward(self, input_ids, **kwargs):
            return self.emb(input_ids)

    with pytest.raises(ValueError, match=r"reads hidden states.*Found a Tensor without them"):
        L.run_loss("rmu", Logits(), _rmu_batch())

    class NoConfig(torch.nn.Module):  # no config to check the layer before: checked after
        def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
            from types import SimpleNamespace

            h = torch.zeros(*input_ids.shape, 4)
            return SimpleNamespace(hidden_states=(h, h))

    with pytest.raises(ValueError, match=r"layer.*\[0, 1\].*layer = 2"):
        L.run_loss("rmu", NoConfig(), _rmu_batch(), layer=2)
    assert L.run_loss("rmu", NoConfig(), _rmu_batch(), layer=1, steering=2.0).item() == (
        pytest.approx(1.0)  # ‖0 − 2u‖²/4 = 4/4
    )


def test_rmu_in_one_unlearning_step_on_both_sides():
    import copy

    import sago_kernels as sk

    model = _gpt2()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    synth = sk.GradientSynthesizer(model, method="sago", alpha=100.0, backend="reference")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    forget, retain = _rmu_batch(), _rmu_batch(mask=False)
    with pytest.raises(ValueError, match=r"layer.*\[0, 2\]"):  # the retain term's layer too
        sk.unlearning_step(
            model, synth, opt, forget, retain, forget_loss="rmu", retain_loss="rmu",
            ref_model=ref, retain_loss_kwargs={"layer": 5},
        )  # fmt: skip
    before = L.run_loss("rmu", model, forget, layer=2).item()
    result = sk.unlearning_step(
        model, synth, opt, forget, retain, forget_loss="rmu", retain_loss="rmu", ref_model=ref,
        loss_kwargs={"layer": 2},
    )  # fmt: skip
    assert result.forget_loss.item() == pytest.approx(before)
    assert result.retain_loss.item() == 0.0  # model == ref before the step, at layer 2 as well
    assert L.run_loss("rmu", model, forget, layer=2).item() < before
    # the retain term took the forget term's layer: at layer 2 it has moved, so it is > 0 now
    assert L.run_loss("rmu", model, retain, ref_model=ref, forget=False, layer=2).item() > 0


# --------------------------------------------------------------------------- mutation survivors
# The hand computations above use a batch whose two rows share one logits row and whose batch
# size equals its number of scored positions (2), so a sum over the wrong dimension, a window of
# the wrong positions or a count clamped at 2 went unseen (issue 24, bench/mutation.py). Here:
# random logits, a batch of 3 by 6 positions, a row with one labelled token and one with none,
# every expected value from log-softmax written out in float64.


def _uneven_batch():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 6, 4, generator=g)
    labels = torch.randint(0, 4, (3, 6), generator=g)
    labels[:, 0] = -100
    labels[0, 2] = -100  # row 0: four labelled tokens
    labels[1, :] = -100
    labels[1, 4] = 3  # row 1: one
    labels[2, :] = -100  # row 2: none
    return logits, labels


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    log_z = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_z for x in row]


def _scored(logits, labels) -> list[list[float]]:
    """Per sequence, log p of each labelled token (position t read from the logits at t-1)."""
    return [
        [
            _log_softmax(logits[b, t - 1].tolist())[int(labels[b, t])]
            for t in range(1, labels.shape[1])
            if labels[b, t] != -100
        ]
        for b in range(labels.shape[0])
    ]


def _close(got: torch.Tensor, want: float) -> None:
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=1e-5, atol=1e-6)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_nll_and_simnpo_by_hand_on_uneven_rows():
    logits, labels = _uneven_batch()
    scored = _scored(logits, labels)
    assert [len(s) for s in scored] == [4, 1, 0]
    every = [x for s in scored for x in s]
    _close(L.nll_loss(logits, labels), -sum(every) / len(every))
    _close(L.nll_loss(logits[1:2], labels[1:2]), -scored[1][0])  # one token: not halved
    unlabelled = L.nll_loss(logits[2:], labels[2:])  # no token: 0, not 0/0
    assert unlabelled.item() == 0.0
    for beta, delta, kwargs in [(4.5, 0.0, {}), (2.0, -0.3, dict(beta=2.0, delta=-0.3))]:
        mean_nll = [-sum(s) / max(len(s), 1) for s in scored]
        want = -(2 / beta) * sum(_log_sigmoid(beta * (m - delta)) for m in mean_nll) / 3
        _close(L.simnpo_loss(logits, labels, **kwargs), want)


def test_npo_by_hand_from_logits_or_per_sequence_log_probabilities():
    logits, labels = _uneven_batch()
    ref = torch.randn(logits.shape, generator=torch.Generator().manual_seed(6))
    lp = [sum(s) for s in _scored(logits, labels)]
    lref = [sum(s) for s in _scored(ref, labels)]
    for beta, kwargs in [(0.1, {}), (0.7, dict(beta=0.7))]:  # 0.1: the default
        want = -(2 / beta) * sum(_log_sigmoid(-beta * (a - b)) for a, b in zip(lp, lref)) / 3
        _close(L.npo_loss(logits, labels, ref, **kwargs), want)
        given = torch.tensor(lref)
        _close(L.npo_loss(logits, labels, ref_logprob=given, **kwargs), want)
    for shape in [(3, 6), (2,), ()]:
        with pytest.raises(ValueError, match=r"one value per sequence, shape \(3,\)"):
            L.npo_loss(logits, labels, ref_logprob=torch.zeros(shape))
    with pytest.raises(ValueError, match="exactly one of"):
        L.npo_loss(logits, labels, ref, ref_logprob=torch.zeros(3))
    with pytest.raises(ValueError, match="exactly one of"):
        L.npo_loss(logits, labels)


def test_kl_by_hand_position_by_position():
    logits, labels = _uneven_batch()
    ref = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7))
    terms = []
    for b in range(3):
        for t in range(1, 6):
            if labels[b, t] != -100:
                p, q = _log_softmax(ref[b, t - 1].tolist()), _log_softmax(logits[b, t - 1].tolist())
                terms.append(sum(math.exp(a) * (a - c) for a, c in zip(p, q)))
    _close(L.kl_loss(logits, labels, ref), sum(terms) / len(terms))
    _close(L.kl_loss(logits[1:2], labels[1:2], ref[1:2]), terms[4])  # row 1's one token
    assert L.kl_loss(logits[2:], labels[2:], ref[2:]).item() == 0.0  # no token: 0, not 0/0


def test_scalar_messages_name_the_parameter():
    logits, labels = _uneven_batch()
    with pytest.raises(TypeError, match=r"^Parameter `beta` should be a finite Python float"):
        L.simnpo_loss(logits, labels, beta="1")
    with pytest.raises(TypeError, match=r"^Parameter `delta` should be a finite Python float"):
        L.simnpo_loss(logits, labels, delta="0")
    hidden = torch.zeros(1, 2, 4)
    with pytest.raises(TypeError, match=r"^Parameter `steering` should be a finite Python float"):
        L.rmu_loss(hidden, steering="20")
    with pytest.raises(ValueError, match=r"^Parameter `steering` should be > 0"):
        L.rmu_loss(hidden, steering=0.0)


def _u(hidden_size: int, seed: int) -> torch.Tensor:
    g = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed))
    return g / g.norm()


def test_rmu_direction_defaults_bounds_and_device():
    torch.testing.assert_close(L.rmu_direction(8), _u(8, 0), rtol=0, atol=0)  # seed 0
    assert L.rmu_direction(1).tolist() == [1.0]  # the smallest hidden size
    top = 2**64 - 1  # the largest seed torch.Generator takes
    torch.testing.assert_close(L.rmu_direction(4, seed=top), _u(4, top), rtol=0, atol=0)
    assert L.rmu_direction(4, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"^Parameter `hidden_size` should be >= 1\. Found"):
        L.rmu_direction(0)
    with pytest.raises(TypeError, match=r"^Parameter `hidden_size` should be a Python int"):
        L.rmu_direction(4.0)
    with pytest.raises(ValueError, match=rf"^Parameter `seed` should be in \[0, {top}\]\. Found"):
        L.rmu_direction(4, seed=top + 1)
    with pytest.raises(TypeError, match=r"^Parameter `seed` should be a Python int"):
        L.rmu_direction(4, seed=1.0)


def test_rmu_losses_by_hand_with_one_counted_token_or_none():
    hidden = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(8))
    ref = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(9))
    one = torch.tensor([[0, 0, 0], [0, 7, 0]])  # any nonzero value counts
    steering = 0.5  # a steering below 1 is allowed (> 0 is the rule)
    target = steering * _u(4, 0)  # seed 0: the default
    want = ((hidden[1, 1] - target) ** 2).mean()
    torch.testing.assert_close(L.rmu_loss(hidden, one, steering=steering), want)
    torch.testing.assert_close(
        L.rmu_retain_loss(hidden, one, ref_hidden=ref), ((hidden[1, 1] - ref[1, 1]) ** 2).mean()
    )
    assert L.rmu_loss(hidden, torch.zeros(2, 3), steering=steering).item() == 0.0  # not 0/0
    every = ((hidden - target) ** 2).mean()
    torch.testing.assert_close(L.rmu_loss(hidden, steering=steering), every)


def test_rmu_loss_steers_towards_u_on_the_hidden_states_device():
    hidden = torch.zeros(1, 2, 4, device="meta")  # no CPU direction may meet it
    assert L.rmu_loss(hidden).device.type == "meta"
    assert L.rmu_loss(hidden, torch.ones(1, 2, device="meta")).device.type == "meta"


def test_get_loss_names_the_argument_and_its_choices():
    assert L.get_loss("kl", forget=False) is L.RETAIN_LOSSES["kl"]
    assert L.get_loss("rmu", forget=True).fn is L.rmu_loss
    assert L.get_loss("rmu", forget=False).fn is L.rmu_retain_loss
    with pytest.raises(ValueError) as info:
        L.get_loss("npo", forget=False)
    assert str(info.value) == (
        "Parameter `retain_loss` should be one of ['kl', 'nll', 'rmu']. "
        "Found `retain_loss = 'npo'`."
    )
    with pytest.raises(ValueError) as info:
        L.get_loss("nll", forget=True)
    assert str(info.value) == (
        "Parameter `forget_loss` should be one of ['ga', 'npo', 'rmu', 'simnpo']. "
        "Found `forget_loss = 'nll'`."
    )


def test_loss_hparams_merge_defaults_check_each_and_name_the_argument():
    npo, rmu = L.FORGET_LOSSES["npo"], L.FORGET_LOSSES["rmu"]
    assert L.loss_hparams(npo, {}) == {"beta": 0.1}
    got = L.loss_hparams(rmu, {"seed": 3, "steering": 2})
    assert got == {"layer": 1, "steering": 2.0, "seed": 3}
    assert [type(got[k]) for k in ("layer", "steering", "seed")] == [int, float, int]
    with pytest.raises(TypeError) as info:
        L.loss_hparams(L.FORGET_LOSSES["ga"], {"beta": 1.0})
    assert str(info.value) == (
        "Parameter `loss_kwargs` should only hold the 'ga' loss's hyperparameters (none). "
        "Found ['beta']."
    )
    with pytest.raises(TypeError, match=r"^Parameter `retain_loss_kwargs` .* \(\['layer'\]\)"):
        L.loss_hparams(L.RETAIN_LOSSES["rmu"], {"seed": 1}, what="retain_loss_kwargs")


def test_check_models_takes_a_cached_reference_only_where_the_loss_reads_log_p_ref():
    from sago_kernels.unlearning.references import CachedReference

    cache, model = CachedReference(torch.zeros(4)), torch.nn.Linear(2, 2)
    for name in ("npo", "ga"):  # NPO reads log p_ref(x) only; GA needs no reference
        L.check_models(L.FORGET_LOSSES[name], {}, model, cache)
    for loss, hparams, reads in [
        (L.RETAIN_LOSSES["kl"], {}, "next-token distributions"),
        (L.RETAIN_LOSSES["rmu"], {"layer": 1}, "hidden states"),
    ]:
        with pytest.raises(ValueError) as info:
            L.check_models(loss, hparams, model, cache)
        assert str(info.value).startswith(
            f"The {loss.name!r} loss reads the reference's whole {reads}, which a CachedReference"
        )
    with pytest.raises(ValueError, match=r"^The 'npo' loss needs `ref_model`: a frozen copy"):
        L.check_models(L.FORGET_LOSSES["npo"], {}, model, None)
    with pytest.raises(TypeError, match=r"^Parameter `ref_model` should be a frozen copy.*`str`"):
        L.check_models(L.FORGET_LOSSES["npo"], {}, model, "ref")


class _Hidden(torch.nn.Module):
    """Returns ``count`` hidden states (each the embedding plus its index); ``blocks`` is what
    its config says (None: no config)."""

    def __init__(self, count=3, blocks=None):
        super().__init__()
        self.emb, self.count = torch.nn.Embedding(13, 4), count
        if blocks is not None:
            from types import SimpleNamespace

            self.config = SimpleNamespace(num_hidden_layers=blocks)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        from types import SimpleNamespace

        h = self.emb(input_ids)
        return SimpleNamespace(hidden_states=tuple(h + i for i in range(self.count)))


class _Plain(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None):
        raise AssertionError("ran")


class _Peft(_Hidden):
    def disable_adapter(self):
        return contextlib.nullcontext()


def test_check_models_asks_both_models_for_hidden_states_and_the_layer():
    from sago_kernels.unlearning.references import AdaptersOff

    retain, forget = L.RETAIN_LOSSES["rmu"], L.FORGET_LOSSES["rmu"]
    L.check_models(retain, {"layer": 2}, _Hidden(blocks=2), _Hidden(blocks=2))
    L.check_models(retain, {"layer": 2}, _Hidden(), AdaptersOff(_Peft(blocks=2)))
    L.check_models(forget, {"layer": 2}, _Hidden(blocks=2), _Plain())  # not asked: no reference
    with pytest.raises(ValueError, match=r"`ref_model` should accept `output_hidden_states=True`"):
        L.check_models(retain, {"layer": 1}, _Hidden(), _Plain())
    with pytest.raises(ValueError, match=r"`model` should accept .*Found `_Plain.forward`"):
        L.check_models(forget, {"layer": 1}, _Plain(), None)
    with pytest.raises(ValueError, match=r"^Parameter `layer` should be in \[0, 2\] .*layer = 3"):
        L.check_models(retain, {"layer": 3}, _Hidden(), AdaptersOff(_Peft(blocks=2)))
    with pytest.raises(ValueError, match=r"^Parameter `layer` should be in \[0, 2\] .*layer = 3"):
        L.check_models(forget, {"layer": 3}, _Hidden(blocks=2), None)


def test_check_int_bounds_are_inclusive_and_messages_exact():
    assert L.check_int("k", 0) == 0 and L.check_int("k", 5, low=5, high=5) == 5
    for value, error, message in [
        (True, TypeError, "Parameter `k` should be a Python int. Found `type(k) = bool`."),
        (2.0, TypeError, "Parameter `k` should be a Python int. Found `type(k) = float`."),
        (-1, ValueError, "Parameter `k` should be >= 0. Found `k = -1`."),
        (6, ValueError, "Parameter `k` should be in [0, 5]. Found `k = 6`."),
    ]:
        with pytest.raises(error) as info:
            L.check_int("k", value, high=5 if value == 6 else None)
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"should be in \[2, 5\]. Found `k = 1`"):
        L.check_int("k", 1, low=2, high=5)


def test_a_reference_apart_shares_no_trainable_memory():
    import copy

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    L.check_reference_apart(model, copy.deepcopy(model))
    L.check_reference_apart(model, None)
    with pytest.raises(ValueError, match=r"^Parameter `ref_model` should be a separate .*itself"):
        L.check_reference_apart(model, model)
    shared = copy.deepcopy(model)
    shared[1] = model[1]
    with pytest.raises(ValueError) as info:
        L.check_reference_apart(model, shared)
    assert "Found `1.weight` in both" in str(info.value)
    model[1].weight.requires_grad_(False)  # a frozen shared tensor does not train: allowed
    model[1].bias.requires_grad_(False)
    L.check_reference_apart(model, shared)
    viewed = copy.deepcopy(model)  # a tensor of the reference viewing a trainable one's memory
    viewed.register_buffer("alias", model[0].weight.detach().view(-1))
    with pytest.raises(ValueError, match="Found `0.weight` in both"):
        L.check_reference_apart(model, viewed)


def test_models_without_addresses_are_told_apart_by_identity():
    model = torch.nn.Linear(3, 2, device="meta")  # every meta tensor sits at address 0
    L.check_reference_apart(model, torch.nn.Linear(3, 2, device="meta"))
    empty = torch.nn.Module()
    empty.w = torch.nn.Parameter(torch.zeros(0))  # no elements: shares nothing
    other = torch.nn.Module()
    other.w = torch.nn.Parameter(torch.zeros(0))
    L.check_reference_apart(empty, other)
    sparse, apart, same = torch.nn.Module(), torch.nn.Module(), torch.nn.Module()
    sparse.w = torch.nn.Parameter(torch.ones(2, 2).to_sparse())  # no storage to ask an address
    apart.w = torch.nn.Parameter(torch.ones(2, 2).to_sparse())
    same.w = sparse.w
    L.check_reference_apart(sparse, apart)
    with pytest.raises(ValueError, match="Found `w` in both"):
        L.check_reference_apart(sparse, same)


def test_step_hparams_give_the_retain_term_the_forget_terms_layer():
    rmu_f, rmu_r = L.FORGET_LOSSES["rmu"], L.RETAIN_LOSSES["rmu"]
    forget, retain = L.step_hparams(rmu_f, rmu_r, {"layer": 4})
    assert forget["layer"] == 4 and retain == {"layer": 4}
    assert L.step_hparams(rmu_f, rmu_r, {"layer": 4}, {"layer": 2})[1] == {"layer": 2}
    assert L.step_hparams(L.FORGET_LOSSES["npo"], rmu_r) == ({"beta": 0.1}, {"layer": 1})
    assert L.step_hparams(rmu_f, L.RETAIN_LOSSES["nll"], {"layer": 4})[1] == {}
    with pytest.raises(TypeError, match=r"^Parameter `retain_loss_kwargs` should only hold"):
        L.step_hparams(rmu_f, rmu_r, None, {"seed": 1})


class _Unreadable:
    """A forward whose signature inspect cannot read: the hidden states are checked after it."""

    __signature__ = "unreadable"  # inspect.signature raises TypeError

    def __init__(self, module):
        self.module = module

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        return _Hidden.forward(self.module, input_ids, attention_mask, **kwargs)


def test_a_forward_without_a_readable_signature_is_checked_after_it_runs():
    import inspect

    model = _Hidden(count=2)
    model.forward = _Unreadable(model)
    with pytest.raises(TypeError):
        inspect.signature(model.forward)
    batch = _rmu_batch()
    loss = L.run_loss("rmu", model, batch, layer=1, steering=2.0)
    with torch.no_grad():
        h = model.emb(batch["input_ids"]) + 1
    torch.testing.assert_close(loss, L.rmu_loss(h, batch["attention_mask"], steering=2.0))
    with pytest.raises(ValueError, match=r"layer.*\[0, 1\].*layer = 2"):
        L.run_loss("rmu", model, batch, layer=2)


def test_run_loss_hands_the_attention_mask_to_both_models():
    seen = []

    class Recording(_Hidden):
        def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
            seen.append((self, attention_mask, output_hidden_states))
            return super().forward(input_ids, attention_mask, output_hidden_states)

    model, ref, batch = Recording(), Recording(), _rmu_batch()
    L.run_loss("rmu", model, batch, ref_model=ref, forget=False)
    assert [(m, mask is batch["attention_mask"], asked) for m, mask, asked in seen] == [
        (model, True, True),
        (ref, True, True),
    ]


class _Logits(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(13, 13)

    def forward(self, input_ids, attention_mask=None):
        return self.emb(input_ids)


def test_run_loss_by_name_or_loss_against_a_copy_or_a_cached_reference():
    from sago_kernels.unlearning.references import CachedReference

    model, ref, batch = _Logits(1), _Logits(2), _rmu_batch()
    logits, ref_logits = model.emb(batch["input_ids"]), ref.emb(batch["input_ids"]).detach()
    want = L.npo_loss(logits, batch["labels"], ref_logits, beta=0.3)
    got = L.run_loss(L.FORGET_LOSSES["npo"], model, batch, ref_model=ref, beta=0.3)
    torch.testing.assert_close(got, want)
    cache = CachedReference(torch.tensor([5.0, -7.0, 0.5]))
    indexed = dict(batch, index=torch.tensor([2, 0]))
    want = L.npo_loss(logits, batch["labels"], ref_logprob=torch.tensor([0.5, 5.0]))
    torch.testing.assert_close(L.run_loss("npo", model, indexed, ref_model=cache), want)
    want = L.kl_loss(logits, batch["labels"], ref_logits)
    got = L.run_loss("kl", model, batch, ref_model=ref, forget=False)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(L.run_loss("ga", model, batch, ref_model=cache),
                               L.ga_loss(logits, batch["labels"]))  # fmt: skip


def test_run_loss_messages_name_its_arguments():
    model = _Logits(1)
    with pytest.raises(TypeError, match=r"^Parameter `hparams` should only hold the 'ga' loss's"):
        L.run_loss("ga", model, _rmu_batch(), beta=1.0)
    with pytest.raises(TypeError, match=r"^Parameter `batch` should be a mapping"):
        L.run_loss("ga", model, [1, 2])
    with pytest.raises(ValueError, match=r"^Parameter `batch` should have a tensor under 'labels'"):
        L.run_loss("ga", model, {"input_ids": torch.zeros(1, 2, dtype=torch.long)})
