"""A synthetic corpus of facts about fictitious entities, for unlearning experiments without data.

Each fact is three word-level tokens, ``<entity> <relation> <value>``; only the value is scored,
so a model "knows" a fact when it predicts the value from the entity and the relation. Closed
value sets and short sequences make memorisation fast: a 4-layer, 128-wide GPT-2 learns 200
entities × 4 facts in about 30 s on 2 CPU threads (AdamW, lr 1e-3, batches of 50).

Entities are split three ways: **forget** (the corpus to unlearn), **retain** (D_r, trained on
during unlearning) and **neighbour** (memorised in pre-training like the others, never seen during
unlearning: collateral damage shows here first).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .losses import IGNORE_INDEX, token_logprobs

RELATIONS = {
    "city": [
        "paris",
        "lima",
        "oslo",
        "cairo",
        "delhi",
        "quito",
        "hanoi",
        "perth",
        "dakar",
        "turin",
        "sofia",
        "lagos",
    ],
    "job": [
        "baker",
        "pilot",
        "nurse",
        "judge",
        "miner",
        "poet",
        "chef",
        "clerk",
        "diver",
        "smith",
        "tutor",
        "vet",
    ],
    "color": [
        "red",
        "blue",
        "green",
        "amber",
        "ivory",
        "olive",
        "coral",
        "navy",
        "plum",
        "teal",
        "rust",
        "gold",
    ],
    "pet": ["cat", "dog", "owl", "eel", "yak", "ant", "bee", "fox", "hen", "ram", "cod", "elk"],
}
SPECIALS = ["<pad>"]


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    value: str


@dataclass
class FactsCorpus:
    """The vocabulary, the three splits and the encoding of facts as model examples."""

    vocab: list[str]
    forget: list[Fact]
    retain: list[Fact]
    neighbour: list[Fact]

    @property
    def token_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocab)}

    @property
    def pad_id(self) -> int:
        return self.vocab.index("<pad>")

    def encode(self, fact: Fact) -> dict[str, list[int]]:
        ids = self.token_id
        input_ids = [ids[fact.entity], ids[fact.relation], ids[fact.value]]
        labels = [IGNORE_INDEX, IGNORE_INDEX, ids[fact.value]]
        return {"input_ids": input_ids, "labels": labels}

    def examples(self, split: str) -> list[dict[str, list[int]]]:
        return [self.encode(f) for f in getattr(self, split)]

    def tensors(self, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A whole split as one batch (all facts have the same length)."""
        ex = self.examples(split)
        return {k: torch.tensor([e[k] for e in ex], device=device) for k in ("input_ids", "labels")}


def make_corpus(
    entities: int = 200, forget_share: float = 0.1, neighbour_share: float = 0.2, seed: int = 0
) -> FactsCorpus:
    """``entities`` fictitious entities, each with one value per relation, split by entity."""
    rng = random.Random(seed)
    names = [f"e{i:03d}" for i in range(entities)]
    facts = {n: [Fact(n, rel, rng.choice(vals)) for rel, vals in RELATIONS.items()] for n in names}
    order = names[:]
    rng.shuffle(order)
    n_forget = max(1, round(entities * forget_share))
    n_neigh = max(1, round(entities * neighbour_share))
    splits = order[:n_forget], order[n_forget : n_forget + n_neigh], order[n_forget + n_neigh :]
    vocab = (
        SPECIALS
        + names
        + list(RELATIONS)
        + sorted({v for vals in RELATIONS.values() for v in vals})
    )

    def gather(group):
        return [f for n in group for f in facts[n]]

    return FactsCorpus(
        vocab, forget=gather(splits[0]), retain=gather(splits[2]), neighbour=gather(splits[1])
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(accuracy, mean NLL) of the scored value tokens of a split."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=batch["input_ids"]).logits
    logp, mask = token_logprobs(logits, batch["labels"])
    correct = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
    model.train(was_training)
    n = mask.sum().clamp_min(1)
    return (correct.sum() / n).item(), (-logp.sum() / n).item()
