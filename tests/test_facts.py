"""The facts corpus of the recipes (``python/``): seeded, split by entity, one scored token per
fact, and the counted rule for an accuracy at or below a target (issue 17)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from sago_kernels.unlearning.facts import RELATIONS, at_or_below_target, make_corpus
from sago_kernels.unlearning.losses import IGNORE_INDEX


def test_corpus_is_seeded_and_split_by_entity():
    a, b = make_corpus(50, seed=3), make_corpus(50, seed=3)
    assert a.forget == b.forget and a.retain == b.retain and a.neighbour == b.neighbour
    assert make_corpus(50, seed=4).forget != a.forget
    entities = [{f.entity for f in getattr(a, s)} for s in ("forget", "retain", "neighbour")]
    assert (
        not (entities[0] & entities[1])
        and not (entities[0] & entities[2])
        and not (entities[1] & entities[2])
    )
    assert len(entities[0]) == 5 and len(entities[2]) == 10 and len(entities[1]) == 35
    assert len(a.forget) == 5 * len(RELATIONS)


def test_encoding_scores_only_the_value():
    c = make_corpus(20)
    fact = c.forget[0]
    ex = c.encode(fact)
    assert [c.vocab[i] for i in ex["input_ids"]] == [fact.entity, fact.relation, fact.value]
    assert ex["labels"] == [IGNORE_INDEX, IGNORE_INDEX, c.token_id[fact.value]]
    t = c.tensors("retain")
    assert t["input_ids"].shape == (len(c.retain), 3) and t["labels"].shape == t["input_ids"].shape


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
