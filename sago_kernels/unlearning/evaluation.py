"""Every metric of one model on a benchmark's evaluation sets (``sources.EVAL_ROLES``).

The metrics are open-unlearning's (``metrics.py``): forget quality, model utility, truth ratio,
answer probability, ROUGE-L recall, exact memorisation, extraction strength, MIA AUCs and
privacy leakage; and, for multiple-choice roles (WMDP, MMLU), the harness's accuracy. Each is
computed when the data has its roles (a source without question-answer sets has none of the
TOFU metrics). Each result keeps the per-example values needed to recompute them. Without a
retain-only model (``reference_available=False``), forget quality and privacy leakage are
``None``: not available, never a number.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from . import metrics as M
from .sources import BenchmarkData

MIA_KINDS = ("loss", "zlib", "min_k", "min_k_plus_plus")
CHOICE_ROLES = ("forget_choice", "retention_choice")
"""The multiple-choice roles; each gives ``<role>_accuracy`` (WMDP's, MMLU's)."""
UTILITY_ROLES = {"retain": "retain", "world_facts": "world"}
"""The model-utility roles and the prefix of their metrics' names."""


class Evaluator:
    """Every metric of one model, on one seed's fixed evaluation sets."""

    def __init__(self, data: BenchmarkData, args: argparse.Namespace, *,
                 reference_available: bool = True) -> None:  # fmt: skip
        self.data = data
        self.tok = data.tokenizer
        self.args = args
        self.reference_available = reference_available
        has_qa = data.eval_set("forget") is not None
        roles = [r for r in ("forget", *UTILITY_ROLES, "holdout")
                 if has_qa and data.eval_set(r) is not None]  # fmt: skip
        self.choices = {role: list(data.eval_set(role)) for role in CHOICE_ROLES
                        if data.eval_set(role) is not None}  # fmt: skip
        self.choice_examples = {role: [data.encode_choices(q) for q in items]
                                for role, items in self.choices.items()}  # fmt: skip
        self.qa = {role: list(data.eval_set(role)) for role in roles}
        self.answers = {
            role: [data.encode_qa(q.question, q.answer) for q in qa] for role, qa in self.qa.items()
        }
        self.paraphrased = {
            role: [data.encode_qa(q.question, q.paraphrased_answer) for q in qa]
            for role, qa in self.qa.items()
        }
        self.perturbed = {
            role: [[data.encode_qa(q.question, p) for p in q.perturbed_answers] for q in qa]
            for role, qa in self.qa.items()
        }
        self.kw = {"pad_id": self.tok.pad_id, "batch_size": getattr(args, "eval_batch", 64)}

    def _rouge(self, model, role: str) -> list[float]:
        qa = self.qa[role]
        template = self.data.template
        prompts = [template.prompt_ids(self.tok, q.question) for q in qa]
        longest = max(len(template.answer_ids(self.tok, q.answer)) for q in qa)
        generated = M.generate_greedy(
            model, None, prompts, max_new_tokens=longest, eos_id=self.tok.eos_id, **self.kw
        )  # fmt: skip
        predictions = [self.tok.decode(ids) for ids in generated]
        return M.rouge_l_recall(predictions, [q.answer for q in qa])

    def truth_ratios(self, model, role: str) -> torch.Tensor:
        return M.truth_ratio(model, self.paraphrased[role], self.perturbed[role], **self.kw)

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

    def __call__(self, model, reference: dict | None = None) -> dict:
        """All metrics; ``reference``: the retain-only model's own evaluation (for forget
        quality and privacy leakage); ``None`` when evaluating that model itself."""
        row: dict = {}
        per_example: dict = {}
        for role, items in self.choices.items():
            scores = M.choice_logprobs(model, self.choice_examples[role], **self.kw)
            per_example[f"{role}_logprobs"] = [s.tolist() for s in scores]
            row[f"{role}_accuracy"] = M.choice_accuracy(scores, [q.answer for q in items])
        if "forget" not in self.qa:  # no question-answer sets (WMDP): no TOFU metrics
            return {"metrics": row, "per_example": per_example}
        utility_roles = {r: name for r, name in UTILITY_ROLES.items() if r in self.qa}
        tr = {role: self.truth_ratios(model, role) for role in ("forget", *utility_roles)}
        per_example["truth_ratio_forget"] = tr["forget"].tolist()
        row["forget_truth_ratio"] = M.truth_ratio_score(tr["forget"], forget=True)
        row["forget_probability"] = float(
            M.answer_probability(model, self.answers["forget"], **self.kw).mean()
        )
        rouge_forget = self._rouge(model, "forget")
        per_example["rouge_forget"] = rouge_forget
        row["forget_rouge"] = statistics.fmean(rouge_forget)
        # open-unlearning leaves each answer's last scored token (here <eos>) out of these
        row["forget_exact_memorization"] = float(
            M.exact_memorization(model, self.answers["forget"], drop_last=True, **self.kw).mean()
        )
        row["forget_extraction_strength"] = float(
            M.extraction_strength(model, self.answers["forget"], drop_last=True, **self.kw).mean()
        )
        utility = {}
        for role, name in utility_roles.items():
            utility[f"{name}_probability"] = float(
                M.answer_probability(model, self.answers[role], **self.kw).mean()
            )
            utility[f"{name}_rouge"] = statistics.fmean(self._rouge(model, role))
            utility[f"{name}_truth_ratio"] = M.truth_ratio_score(tr[role], forget=False)
        row.update(utility)
        if utility:
            row["model_utility"] = M.model_utility(utility)
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
            row["privleak"] = (
                M.privleak(row["mia_auc_min_k"], reference["metrics"]["mia_auc_min_k"])
                if "mia_auc_min_k" in row else None
            )  # fmt: skip
        return {"metrics": row, "per_example": per_example}
