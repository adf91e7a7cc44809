"""The demo's synthetic corpus: seeded, split by entity, one scored token per fact."""

from __future__ import annotations

from sago_kernels.unlearning.facts import RELATIONS, make_corpus
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
