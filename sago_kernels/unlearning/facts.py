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

import math
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


@dataclass(frozen=True)
class Score:
    """A split's score as counts: a target is judged on ``correct`` of ``total``, not on a mean."""

    correct: int
    total: int
    nll: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def score(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Score:
    """Facts known (value token predicted) out of facts scored, and the mean NLL, of a split."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=batch["input_ids"]).logits
    logp, mask = token_logprobs(logits, batch["labels"])
    correct = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
    model.train(was_training)
    total = int(mask.sum())
    return Score(int(correct.sum()), total, (-logp.sum() / max(total, 1)).item())


def evaluate(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(accuracy, mean NLL) of the scored value tokens of a split; compare counts from
    :func:`score` with a target (:func:`at_or_below_target`), not this accuracy."""
    s = score(model, batch)
    return s.accuracy, s.nll


TARGET_SLACK = 1e-9


def at_or_below_target(correct: int, total: int, target: float) -> bool:
    """Whether ``correct`` of ``total`` facts is an accuracy at or below ``target``, on counts.

    The one rule wherever an accuracy meets a target (the demo's stop, its "reached" flag, the
    multi-seed summary): the target becomes the most facts that may still be known,
    ``floor(target * total + 1e-9)``, and the integer count is compared with it. Comparing means
    misses exact hits: 4 of 80 as a float32 mean widens to 0.05000000074505806, above the float64
    target 0.05 (issue 17). The 1e-9 absorbs float64's rounding of the product itself
    (0.29 * 100 is 28.999999999999996), far below one fact for any corpus size.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(
            f"need 0 <= correct <= total and total > 0; got correct={correct}, total={total} "
            "(score a non-empty split: every fact has one scored value token)"
        )
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"`target` is an accuracy in [0, 1]; got {target} (pass e.g. 0.05)")
    return correct <= math.floor(target * total + TARGET_SLACK)
