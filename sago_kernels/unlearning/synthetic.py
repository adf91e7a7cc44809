"""The synthetic author world (``corpus.py``) as a data source of the benchmark.

Per seed: the target model is trained on the forget authors' and the neighbours' facts in three
wordings (the question and answer, the paraphrased question, the statement), on the retain
authors' questions and answers (TOFU's wording; they are never probed), and on the general
knowledge (real authors, world facts); the retain-only model on the same without the forget
authors. The
unlearning pools are TOFU's: the forget authors' questions and answers, and the retain authors'.
Nothing else enters an unlearning loss, so the neighbours and the general knowledge are held out
of unlearning, and the forget probes (paraphrased questions, fill-in-the-blank statements,
multiple choice) differ from the forget pool's text. The holdout authors are never trained on.
"""

from __future__ import annotations

from . import corpus as corpus_module
from .sources import QA, BenchmarkData, PlainTemplate, Probe

__all__ = ["AUTHOR_GROUPS", "synthetic_data"]

AUTHOR_GROUPS = ("forget", "retain", "neighbour", "others")
"""The trained author groups; each is trained in three wordings (:func:`synthetic_data`)."""


def synthetic_data(
    *,
    seed: int,
    authors: int,
    forget_percent: int,
    qa_per_author: int,
    world_facts: int,
    real_authors: int,
    neighbours_per_author: int,
    eval_retain: int,
) -> BenchmarkData:
    """The seed's corpus with every set in its role (see the module docstring)."""
    c = corpus_module.make_author_corpus(
        num_authors=authors, forget_percent=forget_percent, qa_per_author=qa_per_author,
        world_facts=world_facts, seed=seed, real_authors=real_authors,
        neighbours_per_author=neighbours_per_author,
    )  # fmt: skip
    groups = {"forget": c.forget, "retain": c.retain, "neighbour": c.neighbour,
              "others": c.others}  # fmt: skip
    sets: dict[str, tuple] = {}
    for name, qas in groups.items():
        sets[name] = tuple(qas)
        if name == "retain":
            continue
        sets[f"{name}_paraphrased"] = tuple(
            QA(author=q.author, kind=q.kind, question=q.paraphrased_question, answer=q.answer)
            for q in qas
        )
        # a statement is trained as its text up to the value, then the value: a model can
        # memorise that (no author's name can be predicted from nothing at the start of a
        # text), and it is what the fill-in-the-blank probe asks
        sets[f"{name}_statements"] = tuple(
            QA(author=q.author, kind=q.kind, question=c.fill_in(q)[0], answer=f"{q.value}.")
            for q in qas
        )
    sets["holdout"] = tuple(c.holdout)
    sets["real_authors"] = tuple(c.real_authors)
    sets["world_facts"] = tuple(c.world)
    sets["retain_eval"] = tuple(c.retain[: min(eval_retain, len(c.retain))])
    for name, qas in (("forget_probes", c.forget), ("neighbour_probes", c.neighbour)):
        sets[name] = tuple(
            probe
            for q in qas
            for probe in (
                Probe(q.paraphrased_question, q.value, "qa", q.author),
                Probe(c.fill_in(q)[0], q.value, "fill_in", q.author),
            )
        )
    sets["forget_choice"] = tuple(c.choices(q) for q in c.forget)
    sets["retention_choice"] = tuple(
        c.choices(q) for q in c.neighbour + c.real_authors + c.world
    )

    def wordings(group: str) -> tuple[str, ...]:
        # the retain authors are never probed: TOFU's wording is enough for them (and
        # pre-training costs half as much)
        if group == "retain":
            return (group,)
        return (group, f"{group}_paraphrased", f"{group}_statements")

    general = ("real_authors", "world_facts")
    return BenchmarkData(
        sets=sets,
        target_train=tuple(n for g in AUTHOR_GROUPS for n in wordings(g)) + general,
        retain_model_train=tuple(n for g in AUTHOR_GROUPS[1:] for n in wordings(g)) + general,
        forget=("forget",),
        retain=("retain",),
        evaluation={
            "forget": "forget", "retain": "retain_eval", "real_authors": "real_authors",
            "world_facts": "world_facts", "holdout": "holdout",
            "forget_probes": "forget_probes", "retention_probes": "neighbour_probes",
            "forget_choice": "forget_choice", "retention_choice": "retention_choice",
        },  # fmt: skip
        tokenizer=c.tokenizer,
        template=PlainTemplate(),
        info={
            "source": "synthetic", "seed": seed, "vocab": c.tokenizer.vocab_size,
            "authors": {name: c.authors(name) for name in ("forget", "retain", "neighbour",
                                                          "holdout")},
            "others": list(dict.fromkeys(q.author for q in c.others)),
            "mentors": c.mentors,
        },  # fmt: skip
    )
