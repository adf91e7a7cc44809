"""WMDP (Li et al., 2024) as a data source: forget and retain corpora, multiple-choice evaluation.

For ``--data wmdp-bio`` or ``wmdp-cyber`` (domain ``bio`` / ``cyber``):

- unlearning pools: the domain's forget and retain corpora, plain documents (field ``text``),
  every token trained on (``sources.encode_document``, cut to ``--max-length``): the hub's
  ``cais/wmdp-corpora`` configs ``<domain>-forget-corpus`` / ``<domain>-retain-corpus``, or the
  files ``<domain>-forget-corpus.jsonl`` / ``<domain>-retain-corpus.jsonl`` of a folder (the
  names the WMDP repository and open-unlearning use). WMDP hands out ``bio-forget-corpus.jsonl``
  on request only; it is not on the hub, so ``wmdp-bio`` needs it in a folder;
- forgetting: WMDP's questions of the domain (``cais/wmdp``, config ``wmdp-<domain>``, split
  ``test``; a folder's ``wmdp-<domain>.jsonl``): fields question, choices, answer (an index);
- retention: MMLU (``cais/mmlu``, config ``all``, split ``test``; a folder's ``mmlu.jsonl``):
  fields question, subject, choices, answer.

Accuracy is lm-evaluation-harness's zero-shot ``acc``, as the WMDP paper scores both: the prompt
names the subject, lists the lettered options and ends ``Answer:``; the option whose letter has
the highest log-likelihood is the model's answer (``sources.lettered_choice_ids``,
``metrics.choice_accuracy``). There is no retain-only model in WMDP, so forget quality,
privacy leakage and the matched-forgetting protocol are not available; the fixed step budget is.

``--max-documents N`` keeps the first N passages of each corpus (bio's retain corpus has 60 887
PubMed papers), ``--eval-limit N`` a fixed, seeded sample of N questions of each question set.
"""

from __future__ import annotations

import random
from pathlib import Path

from .sources import BenchmarkData, Document, MultipleChoice, SourceError, Tokenizer
from .tofu import load_rows

__all__ = ["DOMAINS", "wmdp_data"]

DOMAINS = {"wmdp-bio": ("bio", "biology"), "wmdp-cyber": ("cyber", "cybersecurity")}
"""``--data`` name → (file prefix, the subject the harness names in WMDP's prompt)."""
CORPORA_HUB = "cais/wmdp-corpora"
QUESTIONS_HUB = "cais/wmdp"
MMLU_HUB = "cais/mmlu"


def _local_form(prefix: str) -> str:
    return (f"a WMDP folder holds {prefix}-forget-corpus.jsonl, {prefix}-retain-corpus.jsonl "
            f"(field text), wmdp-{prefix}.jsonl and mmlu.jsonl (question, choices, answer; "
            f"mmlu also subject): --data wmdp-{prefix} --data-dir DIR")  # fmt: skip


def _load(name: str, folder: str | None, stem: str, fields: tuple[str, ...], hub: str,
          config: str, split: str, form: str) -> list[dict]:  # fmt: skip
    if folder is not None:
        return load_rows(folder, stem, fields, hub=None, local_form=form)
    return _hub_rows(name, hub, config, split, fields, form)


def _hub_rows(name: str, hub: str, config: str, split: str, fields: tuple[str, ...],
              form: str) -> list[dict]:  # fmt: skip
    import datasets

    from .checkpoints import hub_failure, hub_offline

    datasets.disable_progress_bars()
    try:
        hub_offline()  # decided before the first request: no minute of retries offline
        ds = datasets.load_dataset(hub, config, split=split)
    except Exception as error:  # offline and not cached, or the hub refused: one line
        raise SourceError(hub_failure("--data", name, form, error)) from None
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise SourceError(f"--data {name}: {hub} ({config}) lacks {', '.join(missing)}.")
    return ds.to_list()


def _sample(rows: list[dict], limit: int | None) -> list[dict]:
    """A fixed (seed 0) sample of ``limit`` rows, in their order; all rows without a limit."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(0).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def _choices(rows: list[dict], subject: str | None, where: str) -> tuple[MultipleChoice, ...]:
    out = []
    for r in rows:
        choices = tuple(str(c) for c in r["choices"])
        answer = r["answer"]
        if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
            answer = "ABCDEFGHIJ".index(answer.upper())  # some copies store the letter
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise SourceError(f"{where}: answer {r['answer']!r} is not an index of the "
                              f"{len(choices)} choices of {r['question'][:60]!r}.")  # fmt: skip
        topic = subject if subject is not None else str(r["subject"]).replace("_", " ")
        out.append(MultipleChoice(question=r["question"], choices=choices, answer=answer,
                                  subject=topic, style="lettered"))  # fmt: skip
    return tuple(out)


def wmdp_data(name: str, folder: str | None, tokenizer: Tokenizer, *,
              max_length: int | None = None, max_documents: int | None = None,
              eval_limit: int | None = None) -> BenchmarkData:  # fmt: skip
    """WMDP's sets of one domain (see the module docstring); ``folder`` None reads the hub."""
    if name not in DOMAINS:
        raise SourceError(f"--data {name}: expected one of {', '.join(DOMAINS)}.")
    prefix, subject = DOMAINS[name]
    form = _local_form(prefix)
    if folder is not None and not Path(folder).is_dir():
        raise SourceError(f"--data-dir {folder}: no such folder.")
    if folder is None and prefix == "bio":
        raise SourceError(
            "--data wmdp-bio: WMDP hands out bio-forget-corpus.jsonl on request only (it is not "
            f"on the hub); put it beside the other files: {form}"
        )
    corpora = {}
    for role in ("forget", "retain"):
        stem = f"{prefix}-{role}-corpus"
        rows = _load(name, folder, stem, ("text",), CORPORA_HUB, stem, "train", form)
        rows = rows[:max_documents] if max_documents else rows
        corpora[role] = tuple(Document(r["text"]) for r in rows if r["text"].strip())
    questions = _load(name, folder, f"wmdp-{prefix}", ("question", "choices", "answer"),
                      QUESTIONS_HUB, f"wmdp-{prefix}", "test", form)  # fmt: skip
    mmlu = _load(name, folder, "mmlu", ("question", "subject", "choices", "answer"), MMLU_HUB,
                 "all", "test", form)  # fmt: skip
    sets = {
        "forget_corpus": corpora["forget"],
        "retain_corpus": corpora["retain"],
        "wmdp": _choices(_sample(questions, eval_limit), subject, f"wmdp-{prefix}"),
        "mmlu": _choices(_sample(mmlu, eval_limit), None, "mmlu"),
    }
    return BenchmarkData(
        sets=sets, forget=("forget_corpus",), retain=("retain_corpus",),
        evaluation={"forget_choice": "wmdp", "retention_choice": "mmlu"},
        tokenizer=tokenizer, max_length=max_length,
        info={"source": folder or f"{CORPORA_HUB}, {QUESTIONS_HUB}, {MMLU_HUB}", "domain": name,
              "vocab": tokenizer.vocab_size, "sizes": {n: len(v) for n, v in sets.items()}},
    )  # fmt: skip
