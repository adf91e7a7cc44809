"""Every metric of one model on a benchmark's evaluation sets (``sources.EVAL_ROLES``).

The metrics are the field's, each computed as its source does (``metrics.py`` names the
open-unlearning function each follows):

- **TOFU** (forget, retain, real authors, world facts, holdout): forget quality, the forget
  set's truth ratio, probability, ROUGE-L recall, exact memorisation and extraction strength, the
  MIA AUCs and privacy leakage, and model utility, the harmonic mean of TOFU's nine values: the
  probability, ROUGE-L recall and truth ratio of the retain, real-authors and world-facts sets,
  the latter two's probabilities normalised over their perturbed answers and their truth ratios
  taken against the answer itself (TOFU's ``eval_everything.yaml``: ``base_answer_key``);
- **RWKU-style probes** (forget and retention): ROUGE-L recall of a greedy generation against the
  short answer, for the question probes, the fill-in-the-blank probes, and their mean ("All");
- **WMDP/MMLU-style multiple choice** (forget and retention): lm-evaluation-harness's accuracy,
  the option of highest log-likelihood (cloze options for the synthetic world, the lettered
  zero-shot prompt for WMDP and MMLU: ``sources.MultipleChoice.style``).

Each metric is computed when the data has its roles (TOFU's files have no probes or choices,
WMDP's no question-answer sets): a missing one is absent, never made up, and the tables print
it as n/a. Without a retain-only model (``reference_available=False``: a given ``--model``
without ``--retain-model``, or WMDP), forget quality and privacy leakage are ``None``: not
available, never a number. Each result keeps the per-example values its aggregates are
computed from. :data:`METRICS` says which way each metric is better; the tables and the JSON
use these names.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from . import metrics as M
from .sources import QA, BenchmarkData, MultipleChoice, Probe

MIA_KINDS = ("loss", "zlib", "min_k", "min_k_plus_plus")
UTILITY_ROLES = ("retain", "real_authors", "world_facts")
"""TOFU's model-utility sets; a metric's name starts with its role's."""
GENERAL_ROLES = ("real_authors", "world_facts")
"""Sets whose probability is normalised over the perturbed answers and whose truth ratio is
taken against the answer itself, as TOFU scores its real authors and world facts."""
PROBE_STYLES = ("qa", "fill_in")


@dataclass(frozen=True)
class Metric:
    """Which way a metric is better (``"higher"``, ``"lower"``, or a value it should be
    close to) and what it measures."""

    better: str
    meaning: str

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.better, f"→{self.better}")


METRICS = {
    "forget_quality": Metric("higher", "KS p-value of the forget truth ratios against the "
                             "retain-only model's (TOFU)"),
    "model_utility": Metric("higher", "harmonic mean of TOFU's nine retain, real-author and "
                            "world-fact values"),
    "forget_probe_rouge": Metric("lower", "forget authors' probes: ROUGE-L recall of greedy "
                                 "answers to paraphrased questions and fill-in-the-blank "
                                 "sentences (RWKU's All)"),
    "forget_probe_qa_rouge": Metric("lower", "forget probes, paraphrased questions only"),
    "forget_probe_fill_in_rouge": Metric("lower", "forget probes, fill-in-the-blank only"),
    "retention_probe_rouge": Metric("higher", "neighbour authors' probes (never in a loss), "
                                    "ROUGE-L recall (RWKU's neighbour All)"),
    "retention_probe_qa_rouge": Metric("higher", "neighbour probes, paraphrased questions"),
    "retention_probe_fill_in_rouge": Metric("higher", "neighbour probes, fill-in-the-blank"),
    "forget_choice_accuracy": Metric("lower", "4-option questions on the forget authors, "
                                     "accuracy by option log-likelihood (WMDP's)"),
    "retention_choice_accuracy": Metric("higher", "4-option questions on neighbours, real "
                                        "authors and world facts (MMLU's role)"),
    "forget_truth_ratio": Metric("higher", "TOFU's forget truth ratio, mean min(tr, 1/tr): 1 "
                                 "when the true and false answers are alike"),
    "forget_probability": Metric("lower", "forget answers' length-normalised probability"),
    "forget_rouge": Metric("lower", "forget answers' ROUGE-L recall (TOFU's forget_Q_A_ROUGE)"),
    "forget_exact_memorization": Metric("lower", "forget answer tokens predicted exactly"),
    "forget_extraction_strength": Metric("lower", "share of a forget answer extractable "
                                         "greedily"),
    "privleak": Metric("0", "MUSE's privacy leakage against the retain-only model, %: "
                       "< 0 under-, > 0 over-unlearning"),
    **{f"mia_auc_{kind}": Metric("0.5", f"{kind} membership-inference AUC, forget against "
                                 "holdout") for kind in MIA_KINDS},
    **{f"{role}_{value}": Metric("higher", f"model-utility value: {role} {value}")
       for role in UTILITY_ROLES for value in ("probability", "rouge", "truth_ratio")},
}  # fmt: skip
"""Every metric the evaluation reports: the JSON's keys, the tables' column names."""


class Evaluator:
    """Every metric of one model on one seed's fixed evaluation sets; the roles the data lacks
    are skipped (their metrics are absent, never made up)."""

    def __init__(self, data: BenchmarkData, *, batch_size: int = 64,
                 reference_available: bool = True) -> None:  # fmt: skip
        self.data = data
        self.tok = data.tokenizer
        self.template = data.template
        self.reference_available = reference_available
        self.kw = {"pad_id": self.tok.pad_id, "batch_size": batch_size}
        self.qa: dict[str, list[QA]] = {}
        self.answers, self.bases, self.perturbed = {}, {}, {}
        for role in ("forget", *UTILITY_ROLES, "holdout"):
            items = data.eval_set(role)
            if items is None:
                continue
            self.qa[role] = list(items)
            base = "answer" if role in GENERAL_ROLES else "paraphrased_answer"
            self.answers[role] = [data.encode_qa(q.question, q.answer) for q in items]
            self.bases[role] = [data.encode_qa(q.question, getattr(q, base)) for q in items]
            self.perturbed[role] = [
                [data.encode_qa(q.question, p) for p in q.perturbed_answers] for q in items
            ]
        self.probes: dict[str, list[Probe]] = {
            role: list(data.eval_set(role))
            for role in ("forget_probes", "retention_probes")
            if data.eval_set(role) is not None
        }
        self.choices: dict[str, list[MultipleChoice]] = {
            role: list(data.eval_set(role))
            for role in ("forget_choice", "retention_choice")
            if data.eval_set(role) is not None
        }
        self.choice_examples = {role: [data.encode_choices(item) for item in items]
                                for role, items in self.choices.items()}  # fmt: skip
        # a probe's answer comes inside a sentence: generate as long as the longest answer
        self.probe_tokens = 32
        if self.probes:
            answers = [i.answer for items in data.sets.values() for i in items
                       if isinstance(i, QA)]  # fmt: skip
            self.probe_tokens = max((len(self.template.answer_ids(self.tok, a)) for a in answers),
                                    default=32)  # fmt: skip

    # ------------------------------------------------------------------ pieces

    def _generate(self, model, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        generated = M.generate_greedy(
            model, None, prompts, max_new_tokens=max_new_tokens, eos_id=self.tok.eos_id, **self.kw
        )  # fmt: skip
        return [self.tok.decode(ids) for ids in generated]

    def rouge(self, model, role: str) -> list[float]:
        """ROUGE-L recall of greedy answers to a QA set's questions against its answers."""
        qa = self.qa[role]
        prompts = [self.template.prompt_ids(self.tok, q.question) for q in qa]
        longest = max(len(self.template.answer_ids(self.tok, q.answer)) for q in qa)
        return M.rouge_l_recall(self._generate(model, prompts, longest), [q.answer for q in qa])

    def probe_rouge(self, model, role: str) -> list[float]:
        """ROUGE-L recall of each probe's greedy generation against its short answer."""
        probes = self.probes[role]
        prompts = [self.template.probe_ids(self.tok, p) for p in probes]
        predictions = self._generate(model, prompts, self.probe_tokens)
        return M.rouge_l_recall(predictions, [p.answer for p in probes])

    def choice_logprobs(self, model, role: str) -> list[torch.Tensor]:
        """Each question's options' log-likelihoods (``metrics.choice_logprobs``)."""
        return M.choice_logprobs(model, self.choice_examples[role], **self.kw)

    def truth_ratios(self, model, role: str) -> torch.Tensor:
        return M.truth_ratio(model, self.bases[role], self.perturbed[role], **self.kw)

    def mia(self, model) -> dict[str, dict[str, list[float]]]:
        out = {}
        for kind in MIA_KINDS:
            scores = {}
            for role in ("forget", "holdout"):
                extra = {}
                if kind == "zlib":  # open-unlearning compresses the answer's text
                    extra["texts"] = [q.answer for q in self.qa[role]]
                if kind in ("min_k", "min_k_plus_plus"):  # and leaves out the last token there
                    extra["drop_last"] = True
                scores[role] = M.mia_scores(
                    model, self.answers[role], kind=kind, **extra, **self.kw
                ).tolist()
            out[kind] = scores
        return out

    # ------------------------------------------------------------------ all of it

    def __call__(self, model, reference: dict | None = None) -> dict:
        """All metrics; ``reference``: the retain-only model's own evaluation (for forget
        quality and privacy leakage); ``None`` when evaluating that model itself."""
        row: dict = {}
        per_example: dict = {}
        for role, probes in self.probes.items():
            scores = self.probe_rouge(model, role)
            prefix = "forget_probe" if role == "forget_probes" else "retention_probe"
            per_example[f"{prefix}_rouge"] = scores
            by_style = {}
            for style in PROBE_STYLES:
                mine = [s for s, p in zip(scores, probes) if p.style == style]
                if mine:
                    by_style[style] = statistics.fmean(mine)
                    row[f"{prefix}_{style}_rouge"] = by_style[style]
            # RWKU's "All": the mean of the question and fill-in-the-blank scores
            row[f"{prefix}_rouge"] = statistics.fmean(by_style.values())
        for role, items in self.choices.items():
            scores = self.choice_logprobs(model, role)
            per_example[f"{role}_logprobs"] = [s.tolist() for s in scores]
            row[f"{role}_accuracy"] = M.choice_accuracy(scores, [q.answer for q in items])
        if "forget" in self.qa:
            self._forget_metrics(model, reference, row, per_example)
        utility = {}
        for role in UTILITY_ROLES:
            if role not in self.qa:
                continue
            if role in GENERAL_ROLES:
                probability = M.answer_probability_normalised(
                    model, self.answers[role], self.perturbed[role], **self.kw
                )
            else:
                probability = M.answer_probability(model, self.answers[role], **self.kw)
            utility[f"{role}_probability"] = float(probability.mean())
            utility[f"{role}_rouge"] = statistics.fmean(self.rouge(model, role))
            tr = self.truth_ratios(model, role)
            utility[f"{role}_truth_ratio"] = M.truth_ratio_score(tr, forget=False)
        row.update(utility)
        if utility:
            row["model_utility"] = M.model_utility(utility)
        return {"metrics": row, "per_example": per_example}

    def _forget_metrics(self, model, reference, row: dict, per_example: dict) -> None:
        tr = self.truth_ratios(model, "forget")
        per_example["truth_ratio_forget"] = tr.tolist()
        row["forget_truth_ratio"] = M.truth_ratio_score(tr, forget=True)
        row["forget_probability"] = float(
            M.answer_probability(model, self.answers["forget"], **self.kw).mean()
        )
        rouge_forget = self.rouge(model, "forget")
        per_example["rouge_forget"] = rouge_forget
        row["forget_rouge"] = statistics.fmean(rouge_forget)
        # open-unlearning leaves each answer's last scored token (here <eos>) out of these
        answers = self.answers["forget"]
        row["forget_exact_memorization"] = float(
            M.exact_memorization(model, answers, drop_last=True, **self.kw).mean()
        )
        row["forget_extraction_strength"] = float(
            M.extraction_strength(model, answers, drop_last=True, **self.kw).mean()
        )
        if "holdout" in self.qa:
            mia = self.mia(model)
            per_example["mia_scores"] = mia
            for kind, scores in mia.items():
                row[f"mia_auc_{kind}"] = M.mia_auc(scores["forget"], scores["holdout"])
        if not self.reference_available:
            row["forget_quality"] = row["privleak"] = None
        elif reference is not None:
            row["forget_quality"] = M.forget_quality(
                per_example["truth_ratio_forget"], reference["per_example"]["truth_ratio_forget"]
            )
            if "mia_auc_min_k" in row:
                row["privleak"] = M.privleak(
                    row["mia_auc_min_k"], reference["metrics"]["mia_auc_min_k"]
                )
