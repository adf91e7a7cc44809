"""TOFU (Maini et al., 2024) as a data source: the hub's ``locuslab/TOFU`` or a folder of its files.

The files and fields read, under TOFU's own names (open-unlearning's ``configs/data/datasets/
TOFU_*.yaml`` and ``configs/eval/tofu_metrics/`` read the same), for ``--forget-split forgetNN``:

==============================  ======================================  =====================
file                            fields                                  role
==============================  ======================================  =====================
``forgetNN.json``               question, answer                        unlearning forget pool
``retainMM.json`` (MM = 100-NN) question, answer                        unlearning retain pool
``forgetNN_perturbed.json``     question, answer, paraphrased_answer,   forget evaluation
                                perturbed_answer (a list)
``retain_perturbed.json``       the same                                model utility (retain)
``real_authors_perturbed.json`` question, answer, perturbed_answer      model utility (ra)
``world_facts_perturbed.json``  question, answer, perturbed_answer      model utility (wf)
``holdoutNN.json``              question, answer                        MIA non-members
==============================  ======================================  =====================

Other fields are ignored (``author``, ``kind``, ``value`` and ``paraphrased_question`` are read
when present, as an
``--export-data`` folder has them). The truth ratio of the real-authors and world-facts sets
compares the answer itself with the perturbed ones (open-unlearning's ``ra_Truth_Ratio`` /
``wf_Truth_Ratio`` take ``*_Q_A_Prob`` as the true side), so their ``paraphrased_answer`` is the
answer. The models are given (``--model``, ``--retain-model``): TOFU's are fine-tuned on
``full.json`` and ``retainMM.json``, as open-unlearning publishes them.

Each file is read with ``datasets.load_dataset`` (``"json"`` for a folder; the hub config of the
same name otherwise, split ``train``); a missing file or field is a :class:`SourceError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .sources import QA, BenchmarkData, SourceError, Template, Tokenizer

__all__ = ["FORGET_SPLITS", "TOFU_HUB", "load_rows", "tofu_data", "tofu_files"]

TOFU_HUB = "locuslab/TOFU"
FORGET_SPLITS = ("forget01", "forget05", "forget10")
QA_FIELDS = ("question", "answer")
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
OPTION_FIELDS = ("question", "answer", "perturbed_answer")


def tofu_files(forget_split: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The set name → (TOFU file stem, required fields) of one forget split."""
    if forget_split not in FORGET_SPLITS:
        raise SourceError(f"--forget-split should be one of {', '.join(FORGET_SPLITS)}; "
                          f"got {forget_split!r}.")  # fmt: skip
    pct = forget_split.removeprefix("forget")
    return {
        "forget": (forget_split, QA_FIELDS),
        "retain": (f"retain{100 - int(pct)}", QA_FIELDS),
        "forget_eval": (f"{forget_split}_perturbed", PERTURBED_FIELDS),
        "retain_eval": ("retain_perturbed", PERTURBED_FIELDS),
        "real_authors": ("real_authors_perturbed", OPTION_FIELDS),
        "world_facts": ("world_facts_perturbed", OPTION_FIELDS),
        "holdout": (f"holdout{pct}", QA_FIELDS),
    }


def load_rows(source: str, stem: str, fields: Sequence[str], *, hub: str | None,
              local_form: str) -> list[dict]:  # fmt: skip
    """The rows of one file: ``source`` a folder (``<stem>.json`` / ``.jsonl`` / ``.parquet``
    there) or, when ``hub`` names a dataset, its config ``stem``. Every row must have ``fields``."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if hub is None:
        folder = Path(source)
        found = [folder / f"{stem}{ext}" for ext in (".json", ".jsonl", ".parquet")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise SourceError(f"--data {source}: the folder has no {stem}.json (nor .jsonl, "
                              f".parquet); {local_form}")  # fmt: skip
        kind = "parquet" if found[0].suffix == ".parquet" else "json"
        try:
            ds = datasets.load_dataset(kind, data_files=str(found[0]), split="train")
        except Exception as error:  # a malformed file: say which
            raise SourceError(f"--data {source}: {found[0].name} could not be read as "
                              f"{kind} ({_first_line(error)})") from None  # fmt: skip
        where = f"{found[0]}"
    else:
        from .checkpoints import hub_failure, hub_offline

        try:
            hub_offline()  # decided before the first request: no minute of retries offline
            ds = datasets.load_dataset(hub, stem, split="train")
        except Exception as error:  # offline and not cached, or the hub refused: one line
            raise SourceError(hub_failure("--data", source, local_form, error)) from None
        where = f"{hub} ({stem})"
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise SourceError(f"--data {source}: {where} lacks the field(s) {', '.join(missing)} "
                          f"(it has {', '.join(ds.column_names)}).")  # fmt: skip
    if len(ds) == 0:
        raise SourceError(f"--data {source}: {where} has no rows.")
    return ds.to_list()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def to_qa(row: dict, *, answer_as_paraphrase: bool = False) -> QA:
    """A TOFU row as a :class:`QA` (``perturbed_answer`` a list, or one string)."""
    perturbed = row.get("perturbed_answer") or ()
    if isinstance(perturbed, str):
        perturbed = (perturbed,)
    paraphrase = row["answer"] if answer_as_paraphrase else row.get("paraphrased_answer") or ""
    return QA(
        author=row.get("author") or "", kind=row.get("kind") or "", question=row["question"],
        answer=row["answer"], paraphrased_answer=paraphrase,
        perturbed_answers=tuple(perturbed), value=row.get("value") or "",
        paraphrased_question=row.get("paraphrased_question") or "",
    )  # fmt: skip


LOCAL_FORM = ("a TOFU folder holds forgetNN.json, retainMM.json, forgetNN_perturbed.json, "
              "retain_perturbed.json, real_authors_perturbed.json, world_facts_perturbed.json "
              "and holdoutNN.json: --data DIR")  # fmt: skip


def tofu_data(source: str, forget_split: str, tokenizer: Tokenizer,
              template: Template, max_length: int | None = None) -> BenchmarkData:  # fmt: skip
    """TOFU's sets of one forget split in their roles (see the module docstring): ``source`` is
    ``"tofu"`` (the hub) or a folder."""
    hub = TOFU_HUB if source == "tofu" else None
    sets = {}
    for name, (stem, fields) in tofu_files(forget_split).items():
        rows = load_rows(source, stem, fields, hub=hub, local_form=LOCAL_FORM)
        options = name in ("real_authors", "world_facts")
        sets[name] = tuple(to_qa(r, answer_as_paraphrase=options) for r in rows)
    return BenchmarkData(
        sets=sets, forget=("forget",), retain=("retain",),
        evaluation={"forget": "forget_eval", "retain": "retain_eval",
                    "real_authors": "real_authors", "world_facts": "world_facts",
                    "holdout": "holdout"},
        tokenizer=tokenizer, template=template, max_length=max_length,
        info={"source": TOFU_HUB if hub else str(source), "forget_split": forget_split,
              "vocab": tokenizer.vocab_size,
              "sizes": {n: len(v) for n, v in sets.items()}},
    )  # fmt: skip
