"""The demo's matched-forgetting stop (issue 17): a run whose forget accuracy is exactly the target
stops there, although 4 of 80 as a float32 mean (0.05000000074505806) is above the float64 0.05.
"""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

from sago_kernels.unlearning import demo
from sago_kernels.unlearning.facts import FactsCorpus, at_or_below_target, make_corpus, score


class ForgettingModel(torch.nn.Module):
    """Knows every fact of ``corpus`` except the first ``per_step * steps`` forget facts.

    A stand-in for the GPT-2 whose forget accuracy falls by a known count per step, so the test
    knows the exact step at which it equals the target; it still goes through the demo's own
    evaluation (argmax of logits against labels).
    """

    def __init__(self, corpus: FactsCorpus, per_step: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))  # something for AdamW to hold
        ids = corpus.token_id
        facts = corpus.forget + corpus.retain + corpus.neighbour
        self.answer = {(ids[f.entity], ids[f.relation]): ids[f.value] for f in facts}
        self.forget_keys = [(ids[f.entity], ids[f.relation]) for f in corpus.forget]
        self.vocab_size, self.per_step, self.steps = len(corpus.vocab), per_step, 0

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        forgotten = set(self.forget_keys[: self.per_step * self.steps])
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        for b, (entity, relation, _) in enumerate(input_ids.tolist()):
            value = self.answer[(entity, relation)]
            guess = (value + 1) % self.vocab_size if (entity, relation) in forgotten else value
            logits[b, 1, guess] = 10.0  # position 1 predicts the value token
        return SimpleNamespace(logits=logits + 0.0 * self.weight)


class NoSynthesizer:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def history_table(self) -> list[dict]:
        return []


def _fake_step(model: ForgettingModel, *args, **kwargs) -> None:
    model.steps += 1


def test_a_run_that_hits_the_target_exactly_stops_there(monkeypatch):
    monkeypatch.setattr(demo, "unlearning_step", _fake_step)
    monkeypatch.setattr(demo, "GradientSynthesizer", NoSynthesizer)
    corpus = make_corpus(200, seed=0)
    assert len(corpus.forget) == 80
    # 4 facts forgotten per step: after step 19, 4 of 80 are still known, exactly 0.05
    args = demo.parse_args(["--steps", "50", "--eval-every", "1", "--target", "0.05"])
    assert torch.tensor(4 / 80, dtype=torch.float32).item() > args.target  # the trap
    r = demo.unlearn(ForgettingModel(corpus, per_step=4), corpus, "ga", "sum", args)
    assert r["steps"] == 19, f"stopped at step {r['steps']}, not where 4/80 = 0.05 was reached"
    assert r["reached_target"]
    assert (r["forget_correct"], r["forget_total"]) == (4, 80)
    assert r["curve"][-1]["forget_correct"] == 4


def test_the_rule_counts_facts_where_the_float32_mean_misses():
    mean = torch.tensor(4, dtype=torch.int64) / torch.tensor(80)  # how a split's mean comes out
    assert mean.dtype == torch.float32 and mean.item() > 0.05  # 0.05000000074505806
    assert at_or_below_target(4, 80, 0.05)
    assert not at_or_below_target(5, 80, 0.05)
    assert at_or_below_target(29, 100, 0.29)  # 0.29 * 100 is 28.999999999999996 in float64


def test_the_rule_agrees_with_exact_fractions():
    for total in (*range(1, 41), 80, 97, 160, 640):
        for hundredths in range(101):
            target = hundredths / 100
            for correct in range(total + 1):
                exact = Fraction(correct, total) <= Fraction(hundredths, 100)
                assert at_or_below_target(correct, total, target) == exact, (correct, total)


@pytest.mark.parametrize(
    "correct, total, target", [(5, 4, 0.1), (-1, 4, 0.1), (0, 0, 0.1), (1, 4, 1.5), (1, 4, -0.1)]
)
def test_the_rule_rejects_impossible_counts_and_targets(correct, total, target):
    with pytest.raises(ValueError, match="got"):
        at_or_below_target(correct, total, target)


def test_score_counts_what_evaluate_averages():
    corpus = make_corpus(200, seed=0)
    model = ForgettingModel(corpus, per_step=4)
    model.steps = 19
    s = score(model, corpus.tensors("forget"))
    assert (s.correct, s.total) == (4, 80) and s.accuracy == 4 / 80
    assert score(model, corpus.tensors("retain")).correct == len(corpus.retain)


def _run(loss: str, method: str, steps: int, retain: float, reached: bool) -> dict:
    geometry = dict.fromkeys(("cos_fr", "cos_out_f", "cos_out_r", "conflict_fraction"), retain)
    return {
        "loss": loss, "method": method, "steps": steps, "reached_target": reached,
        "forget_acc": 0.05, "retain_acc": retain, "neighbour_acc": 1 - retain, "geometry": geometry,
    }  # fmt: skip


def test_summary_is_mean_and_sample_std_per_cell_over_seeds():
    seeds = [
        [_run("ga", "sum", 10, 0.5, True), _run("ga", "sago", 100, 0.9, True)],
        [_run("ga", "sum", 30, 0.7, True), _run("ga", "sago", 600, 0.8, False)],
    ]
    summary = demo.summarize(seeds)
    assert [(c["loss"], c["method"], c["seeds"]) for c in summary] == [
        ("ga", "sum", 2), ("ga", "sago", 2)
    ]  # fmt: skip
    first, second = summary
    assert first["steps"]["mean"] == 20 and first["steps"]["std"] == pytest.approx(2**0.5 * 10)
    assert first["retain_acc"]["values"] == [0.5, 0.7] and first["reached"] == 2
    assert second["reached"] == 1 and second["neighbour_acc"]["mean"] == pytest.approx(0.15)
    assert second["geometry"]["cos_out_r"]["mean"] == pytest.approx(0.85)
    assert demo.summarize(seeds[:1])[0]["steps"]["std"] is None  # one seed: no spread to show


def test_summary_refuses_seeds_that_ran_different_cells():
    with pytest.raises(ValueError, match="same --losses and --methods"):
        demo.summarize([[_run("ga", "sum", 1, 0.5, True)], [_run("npo", "sum", 1, 0.5, True)]])
