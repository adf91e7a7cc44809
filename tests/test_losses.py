"""Each loss against a hand computation on a tiny batch (README, "Unlearning losses")."""

from __future__ import annotations

import math

import pytest
import torch

import sago_kernels.losses as L

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
