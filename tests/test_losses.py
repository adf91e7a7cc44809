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
