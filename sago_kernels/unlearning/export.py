"""The synthetic world written as TOFU's files (``--export-data DIR``), read back by ``--data DIR``.

An export holds, for forget percentage NN (MM = 100 - NN), one JSON object per line as TOFU's
files do, each row with TOFU's fields (question, answer, paraphrased_answer, perturbed_answer)
plus the synthetic world's own (author, kind, value), which TOFU's readers ignore:

=================================  ==================================================
file                               the synthetic set
=================================  ==================================================
``forgetNN.json``                  the forget authors' questions (unlearning forget pool)
``forgetNN_perturbed.json``        the same rows (TOFU's name for the forget evaluation set)
``retainMM.json``                  the retain authors' questions (pool, training)
``retain_perturbed.json``          the first ``--eval-retain`` of them (model utility)
``real_authors_perturbed.json``    the real authors (model utility; pre-training only)
``world_facts_perturbed.json``     the world facts (model utility; pre-training only)
``holdoutNN.json``                 the holdout authors (MIA non-members, never trained on)
``sago_<set>.json``                every other set under its own name: the neighbours, the
                                   paraphrased and statement wordings trained on, the
                                   probes (prompt, answer, style, author) and the
                                   multiple-choice questions (question, choices, answer, ...);
                                   an empty set has no file (the manifest says so)
=================================  ==================================================

and two files TOFU has no counterpart for:

- ``sago_roles.json``: each set's file and kind (qa, probe, choice), each role's sets (which sets
  train the target and the retain-only model, which form the unlearning pools, which set each
  evaluation role reads), the question-answer template and how the data was made (``info``);
- ``sago_vocab.json``: the word tokenizer's words in id order (the ids after ``<pad>``,
  ``<bos>``, ``<eos>``), so that the models trained on the export are the built-in path's.

``--data DIR`` on a folder with ``sago_roles.json`` reads it with :func:`exported_data`; with the
same flags it gives the built-in run's results JSON, bit for bit (tested). Without a ``--model``
the models are pre-trained as in the built-in path; with one, the manifest's roles still hold
and the tokenizer and template are the model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from .corpus import WordTokenizer
from .sources import (
    QA,
    BenchmarkData,
    MultipleChoice,
    PlainTemplate,
    Probe,
    SourceError,
    Template,
    Tokenizer,
)  # fmt: skip
from .tofu import load_rows, to_qa

__all__ = ["MANIFEST", "export_data", "exported_data"]

MANIFEST = "sago_roles.json"
VOCAB = "sago_vocab.json"
FORMAT = "sago_kernels.unlearning.export/2"
TOFU_FILES = {
    "forget": ["forget{nn}", "forget{nn}_perturbed"],
    "retain": ["retain{mm}"],
    "retain_eval": ["retain_perturbed"],
    "real_authors": ["real_authors_perturbed"],
    "world_facts": ["world_facts_perturbed"],
    "holdout": ["holdout{nn}"],
}
"""The synthetic sets written under TOFU's file names: the first is the one the manifest reads
it from; every other set is ``sago_<set>.json``."""
KINDS = {QA: "qa", Probe: "probe", MultipleChoice: "choice"}


def _row(item: QA | Probe | MultipleChoice) -> dict:
    if isinstance(item, Probe):
        return {"prompt": item.prompt, "answer": item.answer, "style": item.style,
                "author": item.author}  # fmt: skip
    if isinstance(item, MultipleChoice):
        return {"question": item.question, "choices": list(item.choices),
                "answer": item.answer, "author": item.author, "subject": item.subject,
                "style": item.style}  # fmt: skip
    return {"question": item.question, "answer": item.answer,
            "paraphrased_answer": item.paraphrased_answer,
            "perturbed_answer": list(item.perturbed_answers),
            "author": item.author, "kind": item.kind, "value": item.value,
            "paraphrased_question": item.paraphrased_question}  # fmt: skip


def _kind(name: str, items: tuple) -> str:
    kinds = {KINDS.get(type(item)) for item in items} or {"qa"}
    if len(kinds) != 1 or None in kinds:
        raise SourceError(f"--export-data: set {name!r} should hold items of one kind "
                          f"({', '.join(KINDS.values())}).")  # fmt: skip
    return kinds.pop()


def export_data(data: BenchmarkData, out: Path, forget_percent: int) -> list[Path]:
    """Write ``data`` (the synthetic source's sets) as the files of the module docstring."""
    missing = sorted(set(TOFU_FILES) - set(data.sets))
    if missing or not isinstance(data.tokenizer, WordTokenizer):
        raise SourceError("--export-data writes the synthetic world only (--data synthetic).")
    names = {"nn": f"{forget_percent:02d}", "mm": f"{100 - forget_percent:02d}"}
    out.mkdir(parents=True, exist_ok=True)
    written, files, kinds = [], {}, {}
    for name, items in data.sets.items():
        stems = [s.format(**names) for s in TOFU_FILES.get(name, [f"sago_{name}"])]
        kinds[name] = _kind(name, items)
        if not items and name not in TOFU_FILES:  # an empty set (no other authors): no file
            files[name] = None
            continue
        files[name] = f"{stems[0]}.json"
        for stem in stems:
            path = out / f"{stem}.json"
            path.write_text("".join(json.dumps(_row(item)) + "\n" for item in items))
            written.append(path)
    (out / VOCAB).write_text(json.dumps(data.tokenizer.vocab[3:]))
    template = data.template
    manifest = {
        "format": FORMAT,
        "files": files,
        "kinds": kinds,
        **data.roles(),
        "template": {
            "question_format": template.question_format,
            "answer_prefix": template.answer_prefix,
        },
        "tokenizer": VOCAB,
        "forget_split": f"forget{names['nn']}",
        "info": data.info,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return [*written, out / VOCAB, out / MANIFEST]


READERS = {
    "qa": (("question", "answer", "paraphrased_answer", "perturbed_answer"), to_qa),
    "probe": (("prompt", "answer", "style"),
              lambda r: Probe(r["prompt"], r["answer"], r["style"], r.get("author") or "")),
    "choice": (("question", "choices", "answer"),
               lambda r: MultipleChoice(question=r["question"], choices=tuple(r["choices"]),
                                        answer=r["answer"], author=r.get("author") or "",
                                        subject=r.get("subject") or "",
                                        style=r.get("style") or "cloze")),
}  # fmt: skip
"""Each set kind's required fields and its reader."""


def exported_data(folder: str, *, tokenizer: Tokenizer | None = None,
                  template: Template | None = None,
                  max_length: int | None = None) -> BenchmarkData:  # fmt: skip
    """An export read back: the manifest's sets in their roles, the word tokenizer and template
    it names (or ``tokenizer`` and ``template``, a given model's; a given tokenizer without a
    template keeps the export's layout, the one a model saved from the built-in path knows)."""
    root = Path(folder)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise SourceError(f"--data {folder}: {MANIFEST} is unreadable ({error}).") from None
    keys = ("format", "files", "kinds", "forget", "retain", "evaluation", "template", "tokenizer",
            "info")
    missing = [k for k in keys if k not in manifest]
    if missing or manifest["format"] != FORMAT:
        raise SourceError(f"--data {folder}: {MANIFEST} is not an export of this version "
                          f"({FORMAT}); missing {missing}.")  # fmt: skip
    form = f"an export holds {MANIFEST} and the files it names: --data DIR"
    sets = {}
    for name, file in manifest["files"].items():
        if file is None:  # an empty set
            sets[name] = ()
            continue
        kind = manifest["kinds"].get(name)
        if kind not in READERS:
            raise SourceError(f"--data {folder}: {MANIFEST} gives set {name!r} the kind "
                              f"{kind!r}; expected one of {', '.join(READERS)}.")  # fmt: skip
        fields, read = READERS[kind]
        rows = load_rows(folder, Path(file).stem, fields, hub=None, local_form=form)
        sets[name] = tuple(read(r) for r in rows)
    if tokenizer is None:
        try:
            words = json.loads((root / manifest["tokenizer"]).read_text())
        except (OSError, ValueError) as error:
            raise SourceError(f"--data {folder}: {manifest['tokenizer']} is unreadable "
                              f"({error}).") from None  # fmt: skip
        tokenizer = WordTokenizer(words)
    if template is None:
        template = PlainTemplate(**manifest["template"])
    info = {**manifest["info"], "source": str(folder), "vocab": tokenizer.vocab_size}

    def roles(key: str) -> tuple[str, ...] | None:
        value = manifest.get(key)
        return None if value is None else tuple(value)

    return BenchmarkData(
        sets=sets, forget=tuple(manifest["forget"]), retain=tuple(manifest["retain"]),
        evaluation=dict(manifest["evaluation"]), tokenizer=tokenizer,
        template=template or PlainTemplate(), target_train=roles("target_train"),
        retain_model_train=roles("retain_model_train"), info=info, max_length=max_length,
    )  # fmt: skip
