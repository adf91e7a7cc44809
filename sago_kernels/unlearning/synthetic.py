"""The synthetic author world (``corpus.py``) as a data source of the benchmark.

Per seed: a target model trained on the forget and retain authors and the world facts, a
retain-only model trained without the forget authors; the unlearning pools are the forget
authors' questions and the retain authors' with the world facts; evaluation on the forget set,
the first ``eval_retain`` retain questions, the world facts, and the holdout authors (never
trained on) as the non-members of membership inference.
"""

from __future__ import annotations

from . import corpus as corpus_module
from .sources import BenchmarkData, PlainTemplate

__all__ = ["synthetic_data"]


def synthetic_data(
    *,
    seed: int,
    authors: int,
    forget_percent: int,
    qa_per_author: int,
    world_facts: int,
    eval_retain: int,
) -> BenchmarkData:
    """The seed's corpus with every set in its role (see the module docstring)."""
    corpus = corpus_module.make_author_corpus(
        num_authors=authors, forget_percent=forget_percent, qa_per_author=qa_per_author,
        world_facts=world_facts, seed=seed,
    )  # fmt: skip
    sets = {
        "forget": tuple(corpus.forget),
        "retain": tuple(corpus.retain),
        "world": tuple(corpus.world),
        "holdout": tuple(corpus.holdout),
        "retain_eval": tuple(corpus.retain[: min(eval_retain, len(corpus.retain))]),
    }
    return BenchmarkData(
        sets=sets,
        target_train=("forget", "retain", "world"),
        retain_model_train=("retain", "world"),
        forget=("forget",),
        retain=("retain", "world"),
        evaluation={
            "forget": "forget", "retain": "retain_eval", "world_facts": "world",
            "holdout": "holdout",
        },
        tokenizer=corpus.tokenizer,
        template=PlainTemplate(),
        info={
            "source": "synthetic", "seed": seed, "vocab": corpus.tokenizer.vocab_size,
            "sizes": {n: len(corpus.split(n)) for n in ("forget", "retain", "holdout", "world")},
        },
    )
