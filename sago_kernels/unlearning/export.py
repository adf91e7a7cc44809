"""The synthetic world written as TOFU's files (``--export-data DIR``), read back by ``--data DIR``.

An export holds, for forget percentage NN (MM = 100 - NN), one JSON object per line as TOFU's
files do, each row with TOFU's fields (question, answer, paraphrased_answer, perturbed_answer)
plus the synthetic world's own (author, kind, value), which TOFU's readers ignore:

==============================  ==================================================
file                            the synthetic set
==============================  ==================================================
``forgetNN.json``               the forget authors' questions (unlearning forget pool)
``forgetNN_perturbed.json``     the same rows (TOFU's name for the forget evaluation set)
``retainMM.json``               the retain authors' questions (pool, training)
``retain_perturbed.json``       the first ``--eval-retain`` of them (model utility)
``world_facts_perturbed.json``  the world facts (model utility; trained on as well)
``holdoutNN.json``              the holdout authors (MIA non-members, never trained on)
==============================  ==================================================

and two files TOFU has no counterpart for:

- ``sago_roles.json``: each set's file and each role's sets (which sets train the target and the
  retain-only model, which form the unlearning pools, which set each evaluation role reads),
  the question-answer template and how the data was made (``info``). The synthetic world trains
  on its world facts and keeps them in the retain pool, which TOFU's file names cannot say;
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
from .sources import QA, BenchmarkData, PlainTemplate, SourceError, Tokenizer
from .tofu import load_rows, to_qa

__all__ = ["MANIFEST", "export_data", "exported_data"]

MANIFEST = "sago_roles.json"
VOCAB = "sago_vocab.json"
FORMAT = "sago_kernels.unlearning.export/1"
SYNTHETIC_FILES = {
    "forget": ["forget{nn}", "forget{nn}_perturbed"],
    "retain": ["retain{mm}"],
    "retain_eval": ["retain_perturbed"],
    "world": ["world_facts_perturbed"],
    "holdout": ["holdout{nn}"],
}
"""Each synthetic set's files: the first is the one the manifest reads it from."""


def _row(qa: QA) -> dict:
    return {"question": qa.question, "answer": qa.answer,
            "paraphrased_answer": qa.paraphrased_answer,
            "perturbed_answer": list(qa.perturbed_answers),
            "author": qa.author, "kind": qa.kind, "value": qa.value}  # fmt: skip


def export_data(data: BenchmarkData, out: Path, forget_percent: int) -> list[Path]:
    """Write ``data`` (the synthetic source's sets) as the files of the module docstring."""
    missing = sorted(set(SYNTHETIC_FILES) - set(data.sets))
    if missing or not isinstance(data.tokenizer, WordTokenizer):
        raise SourceError("--export-data writes the synthetic world only (--data synthetic).")
    names = {"nn": f"{forget_percent:02d}", "mm": f"{100 - forget_percent:02d}"}
    out.mkdir(parents=True, exist_ok=True)
    written, files = [], {}
    for name, stems in SYNTHETIC_FILES.items():
        stems = [s.format(**names) for s in stems]
        files[name] = f"{stems[0]}.json"
        for stem in stems:
            path = out / f"{stem}.json"
            path.write_text("".join(json.dumps(_row(qa)) + "\n" for qa in data.sets[name]))
            written.append(path)
    (out / VOCAB).write_text(json.dumps(data.tokenizer.vocab[3:]))
    template = data.template
    manifest = {
        "format": FORMAT,
        "files": files,
        "target_train": None if data.target_train is None else list(data.target_train),
        "retain_model_train": (
            None if data.retain_model_train is None else list(data.retain_model_train)
        ),
        "forget": list(data.forget),
        "retain": list(data.retain),
        "evaluation": dict(data.evaluation),
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


def exported_data(folder: str, *, tokenizer: Tokenizer | None = None,
                  template: PlainTemplate | None = None,
                  max_length: int | None = None) -> BenchmarkData:  # fmt: skip
    """An export read back: the manifest's sets in their roles, the word tokenizer and template
    it names (or ``tokenizer`` and ``template``, a given model's; a given tokenizer without a
    template keeps the export's layout, the one a model saved from the built-in path knows)."""
    root = Path(folder)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise SourceError(f"--data {folder}: {MANIFEST} is unreadable ({error}).") from None
    keys = ("format", "files", "forget", "retain", "evaluation", "template", "tokenizer", "info")
    missing = [k for k in keys if k not in manifest]
    if missing or manifest["format"] != FORMAT:
        raise SourceError(f"--data {folder}: {MANIFEST} is not an export of this version "
                          f"({FORMAT}); missing {missing}.")  # fmt: skip
    form = f"an export holds {MANIFEST} and the files it names: --data DIR"
    fields = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    sets = {}
    for name, file in manifest["files"].items():
        rows = load_rows(folder, Path(file).stem, fields, hub=None, local_form=form)
        sets[name] = tuple(to_qa(r) for r in rows)
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
