"""Each loss against a hand computation on a tiny batch (README, "Unlearning losses")."""

from __future__ import annotations

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
