"""The offline TOFU-style benchmark: the field's metrics on fictitious authors, no download.

    python -m sago_kernels.unlearning.benchmark            # the default size (minutes on a CPU)
    python -m sago_kernels.unlearning.benchmark --quick    # a smaller, faster check
    python -m sago_kernels.unlearning.benchmark --methods sum sago upgrad gru_global --seeds 0 1 2 3 4
    python -m sago_kernels.unlearning.benchmark --paper    # the paper's Tables 1-3 (~45 min)

Per seed: a corpus of fictitious authors (``corpus.py``), a target model trained on every
author and the general-knowledge set, and a retain-only model trained without the forget
authors (the reference of forget quality and privacy leakage), both tiny GPT-2s built from a
config. Then, for each forget loss and each combine method, Algorithm 1 with the fused combine
from the target model, on the same batches for every method. Each run is measured twice:

- **matched forgetting**: at the first step where the forget set's exactly-memorised answer
  tokens fall to the retain-only model's count on the same answers (counts of tokens, compared as
  integers: a float mean would miss an exact hit, see issue 17);
- **fixed budget**: after ``--steps`` steps, as the paper's fixed epochs.

The metrics are open-unlearning's (``metrics.py``): forget quality, model utility, truth ratio,
answer probability, ROUGE-L recall, MIA AUCs, privacy leakage, extraction strength and exact
memorisation. ``results.json`` holds every per-example value needed to recompute them.

``--methods`` also takes ``forget_only``: the paper's forget-only baselines (GA, NPO, SimNPO, RMU
alone). γ·∇L_f steps the model, with no retain forward, backward or combine (the retain batch is
still drawn, so the forget batches are those of every other method). Under AdamW the γ of a
lone gradient hardly matters (Adam is invariant to its scale), so SimNPO alone is not slowed
by its γ = 0.125; in a combine, γ weighs g_f against g_r.

**The paper-table preset** (``--paper``): only the runs the paper's Tables 1-3 need, 21 a seed
(:func:`paper_runs`), not the loss × method cross product:

- Table 1: each forget loss (GA, NPO, SimNPO, RMU) alone, + GD (``sum``), + PCGrad, + SAGO;
  columns forget ROUGE-L recall and exact memorisation (lower is more forgotten), forget quality,
  then model utility and retain ROUGE-L recall (retention); at matched forgetting and at the
  fixed budget, mean ± std over seeds with the step counts.
- Table 2: NPO + GD + GRU (the authors' whole-model ``gru_global``), RMU + BLUR, GA + GD + Global
  PCGrad (``pcgrad_global``), GA + GD + PCGrad and + SAGO as in the paper, then UPGrad (the
  Gramian aggregator) with GA and NPO, and Table 1's NPO and RMU rows with PCGrad and SAGO beside
  GRU and BLUR (same loss; no extra runs).
- Table 3: the cosines Forget-Retain, Comb-Forget and Comb-Retain of the whole model's gradients
  (the combine's own statistics, every step), averaged over the fixed budget's steps for GA + GD
  with the sum (GradDiff), PCGrad and SAGO; mean ± std over seeds. ``cosines.png`` plots them
  per step.

The tables go to stdout and ``paper_tables.md`` (and under ``"paper_tables"`` in the JSON).
Sizes, chosen by measuring on the project's 2-core CPU machine with one thread while other jobs
held it (load 3-5): 100 trained authors (2.5x the default 40) with forget 10 %, so 10 forget
authors × 6 questions = 60 forget questions (the default has 24: the KS test of forget quality
gets sharper with more) and 60 holdout questions for the MIAs; the default model (GPT-2, 2
layers, width 128), which memorises this corpus in 30-75 epochs (seed 0: 30, retain-only 45);
a budget of 75 steps, 10 epochs of the forget set at 8 examples a step (the paper's fixed-epochs
protocol), long enough for GA, NPO and RMU + SAGO to reach matched forgetting in the one-seed
trial (in the full run RMU + SAGO reached it in 1 seed of 4); 4 seeds. One seed took 623 s
(pre-training 167 s, 21 runs of 11-27 s each), so the preset is ~42 min, under the hour with
room for the load; the full run took 2357 s (39 min, load average 1-7 from other jobs).
Rejected by measurement: 200 authors at width 128 had not memorised its corpus after 58 epochs
of 4 s (0.97-0.99 of the answer tokens, oscillating), and 200 authors at width 192 with 3
layers had not finished pre-training one model after 12 min. ``--seeds``, ``--steps`` and the
size flags override the preset.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from .. import dispatch
from ..methods import METHODS
from ..synthesizer import GradientSynthesizer
from . import corpus as corpus_module
from . import metrics as M
from .algorithm import unlearning_step
from .losses import (
    FORGET_LOSSES, IGNORE_INDEX, SUGGESTED_GAMMA, check_models, get_loss, loss_hparams, nll_loss,
    run_loss,
)  # fmt: skip

DEFAULT_METHODS = ("sum", "pcgrad", "sago", "sago_prefer_retain", "blur")
DEFAULT_LOSSES = ("ga", "npo", "simnpo", "rmu")
MIA_KINDS = ("loss", "zlib", "min_k", "min_k_plus_plus")
PROTOCOLS = ("matched", "fixed")
PAPER_PRESET = {"seeds": [0, 1, 2, 3], "authors": 100, "forget_percent": 10, "width": 128,
                "layers": 2, "steps": 75}  # fmt: skip
"""``--paper``'s sizes (the module docstring says why); explicit flags override each."""
FORGET_ONLY = "forget_only"
"""The paper's forget-only baselines (GA, NPO, SimNPO, RMU alone), a pseudo-method of this
benchmark: γ·∇L_f steps the model; no retain loss, no retain backward, no combine."""
GEOMETRY = ("cos_fr", "cos_out_f", "cos_out_r")
"""The per-step gradient geometry a run keeps (paper Table 3: Forget–Retain, Comb–Forget,
Comb–Retain cosines of the whole model's gradients, from the combine's own statistics)."""


# --------------------------------------------------------------------------- models and data


def tiny_lm(vocab_size: int, positions: int, args: argparse.Namespace, seed: int):
    """A small GPT-2 built from a config (no download); dropout off so runs are deterministic."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=positions, n_embd=args.width, n_layer=args.layers,
        n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).to(args.device)


def pad(examples: list[dict], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors with an attention mask (padding is never scored)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": mask.to(device)}  # fmt: skip


@torch.no_grad()
def memorised_tokens(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(answer tokens the model predicts exactly, teacher-forced; answer tokens): integers, so a
    target is met or not without float rounding."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train(was_training)
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    hit = (logits[:, :-1].argmax(-1) == targets) & scored
    return int(hit.sum()), int(scored.sum())


def train(model, examples, pad_id, args, seed, desc) -> dict:
    """Memorise ``examples`` (AdamW) until every answer token is predicted exactly, or
    ``--pretrain-epochs`` run out; a warning when the target was not reached."""
    from tqdm.auto import tqdm

    everything = pad(examples, pad_id, args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n, start = len(examples), time.perf_counter()
    hit, total = 0, 1
    bar = tqdm(range(1, args.pretrain_epochs + 1), desc=desc, leave=False, disable=args.no_progress)
    epoch = 0
    for epoch in bar:
        model.train()
        for idx in torch.randperm(n, generator=g).split(args.pretrain_batch):
            batch = {k: v[idx.to(args.device)] for k, v in everything.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            nll_loss(logits.logits, batch["labels"]).backward()
            opt.step()
            opt.zero_grad()
        if epoch % 5 == 0 or epoch == args.pretrain_epochs:
            hit, total = memorised_tokens(model, everything)
            bar.set_postfix(memorised=f"{hit / total:.3f}")
            if hit == total:
                break
    hit, total = memorised_tokens(model, everything)
    info = {"epochs": epoch, "memorised": hit / total, "reached": hit == total,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if not info["reached"]:
        print(
            f"warning: {desc} memorised {hit} of {total} answer tokens after {epoch} epochs "
            "(pre-training did not reach its target; raise --pretrain-epochs or --width)",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    model.eval().requires_grad_(False)
    return info


# --------------------------------------------------------------------------- evaluation


class Evaluator:
    """Every metric of one model, on one seed's fixed evaluation sets."""

    def __init__(self, corpus, args: argparse.Namespace) -> None:
        self.tok = corpus.tokenizer
        self.args = args
        n_retain = min(args.eval_retain, len(corpus.retain))
        self.sets = {
            "forget": list(range(len(corpus.forget))),
            "retain": list(range(n_retain)),  # the first QA of the retain split, fixed
            "world": list(range(len(corpus.world))),
            "holdout": list(range(len(corpus.holdout))),
        }
        self.qa = {name: [corpus.split(name)[i] for i in idx] for name, idx in self.sets.items()}
        self.answers = {
            name: [corpus.examples(name)[i] for i in idx] for name, idx in self.sets.items()
        }
        self.paraphrased = {
            name: [corpus.examples(name, "paraphrased_answer")[i] for i in idx]
            for name, idx in self.sets.items()
        }
        self.perturbed = {
            name: [corpus.perturbed_examples(name)[i] for i in idx]
            for name, idx in self.sets.items()
        }
        self.kw = dict(pad_id=self.tok.pad_id)

    def _rouge(self, model, name: str) -> list[float]:
        qa = self.qa[name]
        prompts = [[self.tok.bos_id] + self.tok.encode(q.question) for q in qa]
        longest = max(len(self.tok.encode(q.answer)) for q in qa) + 1
        generated = M.generate_greedy(
            model, None, prompts, max_new_tokens=longest, eos_id=self.tok.eos_id,
            pad_id=self.tok.pad_id,
        )  # fmt: skip
        predictions = [self.tok.decode(ids) for ids in generated]
        return M.rouge_l_recall(predictions, [q.answer for q in qa])

    def truth_ratios(self, model, name: str) -> torch.Tensor:
        return M.truth_ratio(model, self.paraphrased[name], self.perturbed[name], **self.kw)

    def mia(self, model) -> dict[str, dict[str, list[float]]]:
        out = {}
        for kind in MIA_KINDS:
            scores = {}
            for name in ("forget", "holdout"):
                extra = {}
                if kind == "zlib":  # open-unlearning compresses the answer's text
                    extra["texts"] = [q.answer for q in self.qa[name]]
                if kind in ("min_k", "min_k_plus_plus"):  # and leaves out the last token there
                    extra["drop_last"] = True
                scores[name] = M.mia_scores(
                    model, self.answers[name], kind=kind, **extra, **self.kw
                ).tolist()
            out[kind] = scores
        return out

    def __call__(self, model, reference: dict | None = None) -> dict:
        """All metrics; ``reference``: the retain-only model's own evaluation (for forget
        quality and privacy leakage); ``None`` when evaluating that model itself."""
        row: dict = {}
        per_example: dict = {}
        tr = {name: self.truth_ratios(model, name) for name in ("forget", "retain", "world")}
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
        for name in ("retain", "world"):
            utility[f"{name}_probability"] = float(
                M.answer_probability(model, self.answers[name], **self.kw).mean()
            )
            utility[f"{name}_rouge"] = statistics.fmean(self._rouge(model, name))
            utility[f"{name}_truth_ratio"] = M.truth_ratio_score(tr[name], forget=False)
        row.update(utility)
        row["model_utility"] = M.model_utility(utility)
        mia = self.mia(model)
        per_example["mia_scores"] = mia
        for kind, scores in mia.items():
            row[f"mia_auc_{kind}"] = M.mia_auc(scores["forget"], scores["holdout"])
        if reference is not None:
            row["forget_quality"] = M.forget_quality(
                per_example["truth_ratio_forget"], reference["per_example"]["truth_ratio_forget"]
            )
            row["privleak"] = M.privleak(
                row["mia_auc_min_k"], reference["metrics"]["mia_auc_min_k"]
            )
        return {"metrics": row, "per_example": per_example}


# --------------------------------------------------------------------------- one run


def forget_only_step(model, optimizer, forget_batch, *, forget_loss, ref_model, loss_kwargs,
                     gamma) -> torch.Tensor:  # fmt: skip
    """One step of a forget-only baseline: one forward and backward of the forget loss, the
    gradient scaled by γ in place (the forget term of the ``sum`` combine, γ·g_f), then
    ``optimizer.step()`` and ``optimizer.zero_grad()``. No retain forward or backward."""
    f_loss = get_loss(forget_loss, forget=True)
    hparams = loss_hparams(f_loss, dict(loss_kwargs))
    check_models(f_loss, hparams, model, ref_model)
    loss_f = run_loss(f_loss, model, forget_batch, ref_model=ref_model, **hparams)
    loss_f.backward()
    if gamma != 1.0:
        torch._foreach_mul_([p.grad for p in model.parameters() if p.grad is not None], gamma)
    optimizer.step()
    optimizer.zero_grad()
    return loss_f.detach()


def unlearn(target, corpus, evaluator, reference, loss, method, seed, args) -> dict:
    """Algorithm 1 from the target model; evaluated at matched forgetting and at the budget.

    ``method`` is a combine method, or :data:`FORGET_ONLY` (no retain term at all). The forget
    and retain batches are drawn from one generator per (seed, loss) for every method, the
    forget-only baseline included (it draws the retain batch and leaves it unused), so all
    methods see the same forget batches. Combine runs keep each step's global gradient
    geometry (:data:`GEOMETRY`)."""
    model = copy.deepcopy(target).train().requires_grad_(True)
    gamma = args.gamma if args.gamma is not None else SUGGESTED_GAMMA.get(loss, 1.0)
    synth = None
    if method != FORGET_ONLY:
        synth = GradientSynthesizer(model, method=method, alpha=args.alpha, gamma=gamma,
                                    backend=args.backend, keep_history=None)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    pad_id = corpus.tokenizer.pad_id
    forget_all = pad(corpus.examples("forget"), pad_id, args.device)
    retain_all = pad(corpus.examples("retain") + corpus.examples("world"), pad_id, args.device)
    g = torch.Generator().manual_seed(1000 * seed + sorted(FORGET_LOSSES).index(loss))

    def draw(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(batch["input_ids"]), (args.batch,), generator=g)
        return {k: v[idx.to(args.device)] for k, v in batch.items()}

    loss_kwargs = {"layer": args.rmu_layer} if loss == "rmu" else {}
    retain_loss = "rmu" if loss == "rmu" else "nll"
    curve, results, start = [], {}, time.perf_counter()
    hit, total = memorised_tokens(model, forget_all)
    curve.append({"step": 0, "forget_memorised": hit / total, "forget_tokens_memorised": hit})
    for step in range(1, args.steps + 1):
        forget_batch, retain_batch = draw(forget_all), draw(retain_all)
        if synth is None:
            forget_only_step(model, opt, forget_batch, forget_loss=loss, ref_model=target,
                             loss_kwargs=loss_kwargs, gamma=gamma)  # fmt: skip
        else:
            unlearning_step(
                model, synth, opt, forget_batch, retain_batch, forget_loss=loss,
                retain_loss=retain_loss, ref_model=target, loss_kwargs=loss_kwargs,
            )  # fmt: skip
        hit, total = memorised_tokens(model, forget_all)
        curve.append(
            {"step": step, "forget_memorised": hit / total, "forget_tokens_memorised": hit}
        )
        if "matched" not in results and hit <= reference["memorised_forget_tokens"]:
            results["matched"] = {"steps": step, "reached": True, **evaluator(model, reference)}
    results["fixed"] = {"steps": args.steps, "reached": True, **evaluator(model, reference)}
    if "matched" not in results:  # never as forgotten as the retain-only model: say so
        results["matched"] = {**results["fixed"], "reached": False}
    geometry = None
    if synth is not None:  # one row per step: the whole model's cosines
        table = synth.history_table()
        geometry = {name: [row[name] for row in table] for name in GEOMETRY}
    return {"seed": seed, "loss": loss, "method": method, "gamma": gamma,
            "curve": curve, "geometry": geometry, "protocols": results,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


# --------------------------------------------------------------------------- reporting

REPORTED = (
    ("forget_quality", "FQ", "{:.3g}"),
    ("model_utility", "MU", "{:.3f}"),
    ("forget_truth_ratio", "TR_f", "{:.3f}"),
    ("forget_rouge", "ROUGE_f", "{:.3f}"),
    ("forget_exact_memorization", "EM_f", "{:.3f}"),
    ("privleak", "PrivLeak", "{:.1f}"),
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (loss, method, protocol), of the steps
    and of every metric (the printed table shows :data:`REPORTED`)."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        for protocol in PROTOCOLS:
            cells.setdefault((run["loss"], run["method"], protocol), []).append(
                run["protocols"][protocol]
            )
    table = []
    for (loss, method, protocol), rows in cells.items():
        entry = {"loss": loss, "method": method, "protocol": protocol, "seeds": len(rows),
                 "reached": sum(r["reached"] for r in rows)}  # fmt: skip
        values = {"steps": [r["steps"] for r in rows]}
        for key in rows[0]["metrics"]:
            values[key] = [r["metrics"][key] for r in rows]
        for key, vals in values.items():
            entry[key], entry[key + "_std"] = mean_std(vals)
        table.append(entry)
    return table


def print_table(table: list[dict]) -> None:
    for protocol in PROTOCOLS:
        title = {
            "matched": "matched forgetting (forget tokens memorised <= the retain-only model's)",
            "fixed": "fixed step budget",
        }[protocol]
        print(f"\n{title}: mean ± std over seeds")
        header = f"{'loss':<8}{'method':<20}{'steps':>13}" + "".join(
            f"{label:>20}" for _, label, _ in REPORTED
        )
        print(header)
        print("-" * len(header))
        for e in (e for e in table if e["protocol"] == protocol):
            cells = "".join(
                f"{(fmt.format(e[k]) + ' ± ' + fmt.format(e[k + '_std'])):>20}"
                for k, _, fmt in REPORTED
            )
            steps = f"{e['steps']:.1f} ± {e['steps_std']:.1f}"
            missed = e["seeds"] - e["reached"]
            flag = f"  ({missed} of {e['seeds']} seeds not reached)" if missed else ""
            print(f"{e['loss']:<8}{e['method']:<20}{steps:>13}{cells}{flag}")


# --------------------------------------------------------------------------- the paper's tables

PAPER_LOSSES = ("ga", "npo", "simnpo", "rmu")
LOSS_LABELS = {"ga": "GA", "npo": "NPO", "simnpo": "SimNPO", "rmu": "RMU"}
PAPER_TABLE1 = (
    (FORGET_ONLY, ""), ("sum", " + GD"), ("pcgrad", " + GD + PCGrad"), ("sago", " + GD + SAGO"),
)  # fmt: skip
"""Table 1's rows per forget loss: (method, label suffix); the forget-only row is the loss's
name alone, as in the paper (whose "+ PCGrad" and "+ SAGO" rows are written out here)."""
PAPER_TABLE2 = (
    ("NPO + GD + GRU", "npo", "gru_global"),
    ("RMU + BLUR", "rmu", "blur"),
    ("GA + GD + Global PCGrad", "ga", "pcgrad_global"),
    ("GA + GD + PCGrad", "ga", "pcgrad"),
    ("GA + GD + SAGO", "ga", "sago"),
    ("GA + GD + UPGrad", "ga", "upgrad"),
    ("NPO + GD + UPGrad", "npo", "upgrad"),
    ("NPO + GD + PCGrad", "npo", "pcgrad"),
    ("NPO + GD + SAGO", "npo", "sago"),
    ("RMU + GD + PCGrad", "rmu", "pcgrad"),
    ("RMU + GD + SAGO", "rmu", "sago"),
)
"""Table 2's rows (label, loss, method): the paper's five (GRU is the authors' whole-model
``gru_global``, Global PCGrad ``pcgrad_global``), UPGrad as the Gramian aggregator, then the
same-loss PCGrad and SAGO rows of Table 1 beside GRU (NPO) and BLUR (RMU)."""
PAPER_TABLE3 = (("GradDiff", "ga", "sum"), ("PCGrad", "ga", "pcgrad"), ("SAGO", "ga", "sago"))
"""Table 3's rows (label, loss, method): GA + GD with each synthesis."""
PAPER_COLUMNS = (
    ("forget_rouge", "forget ROUGE-L ↓", "{:.3f}"),
    ("forget_exact_memorization", "forget EM ↓", "{:.3f}"),
    ("forget_quality", "forget quality ↑", "{:.2g}"),
    ("model_utility", "model utility ↑", "{:.3f}"),
    ("retain_rouge", "retain ROUGE-L ↑", "{:.3f}"),
)
"""Columns of Tables 1 and 2: forget performance (the forget set's ROUGE-L recall and exact
memorisation, lower is more forgotten; forget quality, higher is closer to the retain-only
model), then retain performance (model utility, the retain set's ROUGE-L recall)."""


def paper_runs() -> list[tuple[str, str]]:
    """Every (loss, method) the ``--paper`` tables need, each once, in table order."""
    cells = [(loss, method) for loss in PAPER_LOSSES for method, _ in PAPER_TABLE1]
    cells += [(loss, method) for _, loss, method in PAPER_TABLE2 + PAPER_TABLE3]
    return list(dict.fromkeys(cells))


def paper_tables(runs: list[dict], summary: list[dict]) -> dict[str, list[dict]]:
    """The rows of Tables 1–3 from a run's summary (Tables 1, 2: one row per cell and protocol)
    and its runs (Table 3: each run's per-step cosines averaged over its steps, then mean ± std
    over seeds). A cell the run lacks raises ``KeyError`` naming it."""
    cells = {(e["loss"], e["method"], e["protocol"]): e for e in summary}

    def row(label: str, loss: str, method: str, protocol: str) -> dict:
        if (loss, method, protocol) not in cells:
            raise KeyError(f"the run has no {loss} / {method} cell (run it with --paper)")
        return {"label": label, **cells[(loss, method, protocol)]}

    table1 = [
        row(LOSS_LABELS[loss] + suffix, loss, method, protocol)
        for protocol in PROTOCOLS
        for loss in PAPER_LOSSES
        for method, suffix in PAPER_TABLE1
    ]
    table2 = [row(label, loss, method, protocol)
              for protocol in PROTOCOLS for label, loss, method in PAPER_TABLE2]  # fmt: skip
    table3 = []
    for label, loss, method in PAPER_TABLE3:
        mine = [r for r in runs if r["loss"] == loss and r["method"] == method]
        if not mine:
            raise KeyError(f"the run has no {loss} / {method} cell (run it with --paper)")
        entry = {"label": label, "loss": loss, "method": method, "seeds": len(mine),
                 "steps": len(mine[0]["geometry"]["cos_fr"])}  # fmt: skip
        for name in GEOMETRY:
            per_seed = [statistics.fmean(r["geometry"][name]) for r in mine]
            entry[name], entry[name + "_std"] = mean_std(per_seed)
        table3.append(entry)
    return {"table1": table1, "table2": table2, "table3": table3}


def _steps_cell(e: dict) -> str:
    missed = e["seeds"] - e["reached"]
    flag = f" ({missed}/{e['seeds']} not reached)" if missed else ""
    return f"{e['steps']:.1f} ± {e['steps_std']:.1f}{flag}"


def _cell(e: dict, key: str, fmt: str) -> str:
    return f"{fmt.format(e[key])} ± {fmt.format(e[key + '_std'])}"


def paper_markdown(tables: dict[str, list[dict]]) -> str:
    """Tables 1–3 as markdown (mean ± sample std over seeds)."""
    header = "| method | steps | " + " | ".join(label for _, label, _ in PAPER_COLUMNS) + " |"
    rule = "|" + " --- |" * (2 + len(PAPER_COLUMNS))
    titles = {
        "matched": "matched forgetting (forget tokens memorised <= the retain-only model's)",
        "fixed": "fixed budget",
    }
    lines = []
    for key, name in (("table1", "Table 1"), ("table2", "Table 2")):
        for protocol in PROTOCOLS:
            lines += ["", f"{name}, {titles[protocol]}: mean ± std over seeds", "", header, rule]
            for e in tables[key]:
                if e["protocol"] == protocol:
                    cells = " | ".join(_cell(e, k, fmt) for k, _, fmt in PAPER_COLUMNS)
                    lines.append(f"| {e['label']} | {_steps_cell(e)} | {cells} |")
    lines += [
        "", "Table 3, average cosine similarity over the fixed budget's steps (GA + GD): mean ± "
        "std over seeds", "",
        "| method | steps averaged | Forget–Retain | Comb–Forget | Comb–Retain |",
        "| --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for e in tables["table3"]:
        cells = " | ".join(_cell(e, k, "{:.3f}") for k in GEOMETRY)
        lines.append(f"| {e['label']} | {e['steps']} | {cells} |")
    return "\n".join(lines[1:]) + "\n"


def plot_geometry(runs: list[dict], out: Path) -> Path | None:
    """Table 3's cosines per step (mean over seeds) for each of its rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    titles = {"cos_fr": "Forget–Retain", "cos_out_f": "Comb–Forget", "cos_out_r": "Comb–Retain"}
    fig, axes = plt.subplots(1, len(GEOMETRY), figsize=(4 * len(GEOMETRY), 3.5), squeeze=False)
    for i, (label, loss, method) in enumerate(PAPER_TABLE3):
        mine = [r for r in runs if r["loss"] == loss and r["method"] == method]
        for j, name in enumerate(GEOMETRY):
            per_step = [statistics.fmean(v) for v in zip(*(r["geometry"][name] for r in mine))]
            axes[0][j].plot(range(1, len(per_step) + 1), per_step, label=label, color=f"C{i}")
    for j, name in enumerate(GEOMETRY):
        axes[0][j].set_title(f"{titles[name]} cosine (GA + GD)")
        axes[0][j].set_xlabel("step")
        axes[0][j].axhline(0.0, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "cosines.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(runs: list[dict], table: list[dict], out: Path) -> list[Path]:
    """Forget quality against model utility per method (as the field plots it), and the forget
    set's memorised tokens over steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    losses = sorted({e["loss"] for e in table})
    methods = list(dict.fromkeys(e["method"] for e in table))
    fig, axes = plt.subplots(len(PROTOCOLS), len(losses), figsize=(4 * len(losses), 7),
                             squeeze=False)  # fmt: skip
    for i, protocol in enumerate(PROTOCOLS):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            for e in table:
                if e["protocol"] == protocol and e["loss"] == loss:
                    ax.errorbar(
                        e["model_utility"], max(e["forget_quality"], 1e-12),
                        xerr=e["model_utility_std"], yerr=e["forget_quality_std"], fmt="o",
                        label=e["method"], color=f"C{methods.index(e['method'])}",
                    )  # fmt: skip
            ax.set_yscale("log")
            ax.set_title(f"{loss}, {protocol}")
            ax.set_xlabel("model utility")
            ax.set_ylabel("forget quality (KS p-value)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "forget_quality_vs_utility.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.5), squeeze=False)
    for j, loss in enumerate(losses):
        ax = axes[0][j]
        for run in runs:
            if run["loss"] == loss and run["seed"] == runs[0]["seed"]:
                steps = [c["step"] for c in run["curve"]]
                ax.plot(steps, [c["forget_memorised"] for c in run["curve"]], label=run["method"],
                        color=f"C{methods.index(run['method'])}")  # fmt: skip
        ax.set_title(f"{loss}: forget tokens memorised (seed {runs[0]['seed']})")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "forget_curves.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- the command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sago_kernels.unlearning.benchmark",
        description="Offline TOFU-style unlearning benchmark (see the module docstring).",
        epilog="--paper's sizes, measured on a loaded 2-core CPU machine with one thread: 100 "
        "authors (forget 10 %: 60 forget questions against the default's 24, for a sharper KS "
        "test of forget quality; 200 authors had not memorised after 58 epochs at width 128, "
        "and a 192-wide 3-layer "
        "model had not pre-trained one model in 12 min), the default 2-layer 128-wide model (it "
        "memorises 100 authors in 30-75 epochs), 75 steps (10 epochs of the forget set at batch "
        "8, the paper's fixed epochs, long enough for SAGO to reach matched forgetting with GA "
        "and NPO; with RMU in 1 seed of 4), 4 seeds (one seed took 623 s; all four 39 min).",
    )
    p.add_argument("--quick", action="store_true",
                   help="a smaller run (fewer authors, 2 seeds, 2 losses, 3 methods)")  # fmt: skip
    p.add_argument("--paper", action="store_true",
                   help="the paper-table preset: only the cells of the paper's Tables 1-3 "
                   f"({len(paper_runs())} runs a seed), at {preset_flags()}; prints and saves "
                   "the tables (paper_tables.md). Size flags and --seeds "
                   "override the preset; --quick, --losses and --methods are refused with "
                   "it. See the module docstring for why these sizes")  # fmt: skip
    p.add_argument("--losses", nargs="+", default=None, metavar="LOSS",
                   help=f"forget losses (default {' '.join(DEFAULT_LOSSES)})")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"combine methods (default {' '.join(DEFAULT_METHODS)}; any of "
                   f"sk.methods(), or {FORGET_ONLY}: the forget loss alone, no retain "
                   "backward)")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds: each builds its own corpus and models (default 0 1 2)")  # fmt: skip
    p.add_argument("--authors", type=int, default=None, help="trained authors (default 40)")
    p.add_argument("--forget-percent", type=int, default=None, choices=(1, 5, 10),
                   help="share of the trained authors in the forget split "
                   "(default 10)")  # fmt: skip
    p.add_argument("--qa-per-author", type=int, default=6, help="questions per author")
    p.add_argument("--world-facts", type=int, default=40, help="general-knowledge questions")
    p.add_argument("--steps", type=int, default=None,
                   help="unlearning steps per run: the fixed budget (default 30)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="forget and retain examples per step")
    p.add_argument("--lr", type=float, default=1e-3, help="unlearning learning rate (AdamW)")
    p.add_argument("--alpha", type=float, default=1.0, help="retain weight α of the combine")
    p.add_argument("--gamma", type=float, default=None,
                   help="forget weight γ (default: the paper's per loss)")  # fmt: skip
    p.add_argument("--rmu-layer", type=int, default=1, help="hidden layer RMU steers")
    p.add_argument("--width", type=int, default=None,
                   help="model width (GPT-2 n_embd; default 128)")  # fmt: skip
    p.add_argument("--layers", type=int, default=None, help="model layers (default 2)")
    p.add_argument("--pretrain-epochs", type=int, default=200,
                   help="most epochs to memorise the training set")  # fmt: skip
    p.add_argument("--pretrain-lr", type=float, default=3e-3, help="pre-training learning rate")
    p.add_argument("--pretrain-batch", type=int, default=32, help="pre-training batch size")
    p.add_argument("--eval-retain", type=int, default=60,
                   help="retain questions evaluated for model utility")  # fmt: skip
    p.add_argument("--backend", default=None, choices=("triton", "native", "reference"),
                   help="combine backend (default: the automatic choice)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (0: torch's default); tiny models gain nothing from more, "
                   "and a loaded machine loses much to oversubscription")  # fmt: skip
    p.add_argument("--out", default="unlearning_out", help="folder for results.json and plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true",
                   help="no plots (the JSON and the tables only)")  # fmt: skip
    args = p.parse_args(argv)
    if args.paper:
        clash = [f for f, given in (("--quick", args.quick), ("--losses", args.losses),
                                    ("--methods", args.methods)) if given]  # fmt: skip
        if clash:
            p.error(f"--paper runs exactly the tables' cells: leave out {' '.join(clash)}")
    quick = args.quick
    defaults = {
        "losses": ["ga", "npo"] if quick else list(DEFAULT_LOSSES),
        "methods": ["sum", "pcgrad", "sago"] if quick else list(DEFAULT_METHODS),
        "seeds": [0, 1] if quick else [0, 1, 2],
        "authors": 20 if quick else 40,
        "steps": 20 if quick else 30,
        "forget_percent": 10,
        "width": 128,
        "layers": 2,
    }
    if args.paper:
        defaults.update(PAPER_PRESET)
        defaults["losses"] = list(dict.fromkeys(loss for loss, _ in paper_runs()))
        defaults["methods"] = list(dict.fromkeys(method for _, method in paper_runs()))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # the (loss, method) runs of each seed: the tables' cells, or every loss with every method
    args.runs = (paper_runs() if args.paper
                 else [(loss, m) for loss in args.losses for m in args.methods])  # fmt: skip
    problems = check_args(args)
    if problems:
        p.error("; ".join(problems))
    return args


def preset_flags() -> str:
    """``--paper``'s sizes as the flags that would set them."""
    return " ".join(
        f"--{key.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for key, v in PAPER_PRESET.items()
    )


def check_args(args: argparse.Namespace) -> list[str]:
    """Every flag checked before anything is built or trained: what is wrong, and how to fix."""
    problems = []
    unknown = [m for m in args.methods if m not in METHODS and m != FORGET_ONLY]
    if unknown:
        problems.append(
            f"--methods: unknown {unknown}; choose from {sorted([*METHODS, FORGET_ONLY])}"
        )
    unknown = [m for m in args.losses if m not in FORGET_LOSSES]
    if unknown:
        problems.append(f"--losses: unknown {unknown}; choose from {sorted(FORGET_LOSSES)}")
    for name in ("authors", "qa_per_author", "world_facts", "steps", "batch", "width", "layers",
                 "pretrain_epochs", "pretrain_batch", "eval_retain"):  # fmt: skip
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} should be >= 1, got {getattr(args, name)}")
    if args.width % 4:
        problems.append(f"--width should be a multiple of 4 (4 attention heads), got {args.width}")
    for name in ("lr", "pretrain_lr"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            problems.append(f"--{name.replace('_', '-')} should be a finite number > 0")
    if len(set(args.seeds)) != len(args.seeds):
        problems.append(f"--seeds should be distinct, got {args.seeds}")
    if not 1 <= args.rmu_layer <= args.layers:
        problems.append(f"--rmu-layer should be in [1, --layers = {args.layers}]")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        problems.append(f"--device: {args.device!r} is not a device; use cpu or cuda")
    else:
        if device.type == "cuda" and not torch.cuda.is_available():
            problems.append("--device cuda: no CUDA device is available here; use --device cpu")
        elif device.type not in ("cpu", "cuda"):
            problems.append(f"--device should be cpu or cuda, got {args.device!r}")
    if args.backend is not None and not problems:
        try:
            dispatch.resolve_backend(args.backend, torch.device(args.device))
        except RuntimeError as error:
            problems.append(f"--backend: {error}")
    return problems


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    backend, _ = dispatch.resolve_backend(args.backend, torch.device(args.device))
    shape = (f"{len(args.runs)} runs (the paper tables' cells)" if args.paper
             else f"{len(args.losses)} losses × {len(args.methods)} methods")  # fmt: skip
    print(
        f"benchmark: {len(args.seeds)} seeds × {shape} on {args.device}, combine backend "
        f"{backend!r}, {torch.get_num_threads()} threads",
        flush=True,
    )
    runs, seeds_info = [], []
    total_runs = len(args.seeds) * len(args.runs)
    bar = tqdm(total=total_runs, desc="unlearning runs", disable=args.no_progress)
    for seed in args.seeds:
        corpus = corpus_module.make_author_corpus(
            num_authors=args.authors, forget_percent=args.forget_percent,
            qa_per_author=args.qa_per_author, world_facts=args.world_facts, seed=seed,
        )  # fmt: skip
        tok = corpus.tokenizer
        longest = max(
            len(e["input_ids"])
            for name in ("forget", "retain", "holdout", "world")
            for field in ("answer", "paraphrased_answer")
            for e in corpus.examples(name, field)
        )
        longest = max(longest, max(len(e["input_ids"]) for qs in
                                   corpus.perturbed_examples("forget") for e in qs))  # fmt: skip
        positions = longest + 8
        target = tiny_lm(tok.vocab_size, positions, args, seed)
        everything = corpus.examples("forget") + corpus.examples("retain") + corpus.examples("world")
        target_info = train(target, everything, tok.pad_id, args, seed, f"seed {seed}: target")
        retain_model = tiny_lm(tok.vocab_size, positions, args, seed)
        retain_examples = corpus.examples("retain") + corpus.examples("world")
        retain_info = train(retain_model, retain_examples, tok.pad_id, args, seed,
                            f"seed {seed}: retain-only")  # fmt: skip
        evaluator = Evaluator(corpus, args)
        reference = evaluator(retain_model)
        hit, _ = memorised_tokens(retain_model, pad(corpus.examples("forget"), tok.pad_id,
                                                    args.device))  # fmt: skip
        reference["memorised_forget_tokens"] = hit
        target_eval = evaluator(target, reference)
        seeds_info.append({
            "seed": seed, "vocab": tok.vocab_size,
            "sizes": {n: len(corpus.split(n)) for n in ("forget", "retain", "holdout", "world")},
            "target_training": target_info, "retain_training": retain_info,
            "retain_model": reference, "target_model": target_eval,
        })  # fmt: skip
        tqdm.write(
            f"seed {seed}: vocabulary {tok.vocab_size}, target memorised "
            f"{target_info['memorised']:.3f} in {target_info['epochs']} epochs, retain-only "
            f"{retain_info['memorised']:.3f}; before unlearning FQ "
            f"{target_eval['metrics']['forget_quality']:.3g}, MU "
            f"{target_eval['metrics']['model_utility']:.3f}"
        )
        for loss, method in args.runs:
            run = unlearn(target, corpus, evaluator, reference, loss, method, seed, args)
            runs.append(run)
            m = run["protocols"]["matched"]
            bar.set_postfix(last=f"{loss}/{method}: {m['steps']} steps")
            bar.update()
    bar.close()
    table = summarise(runs)
    print_table(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = round(time.perf_counter() - start, 1)
    payload = {"args": vars(args), "backend": backend, "seeds": seeds_info, "runs": runs,
               "summary": table, "seconds": total}  # fmt: skip
    plots = []
    if args.paper:
        payload["paper_tables"] = paper_tables(runs, table)
        markdown = paper_markdown(payload["paper_tables"])
        print("\n" + markdown)
        (out / "paper_tables.md").write_text(markdown)
        plots.append(out / "paper_tables.md")
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    if not args.no_plots:
        plots += plot(runs, table, out)
    if args.paper and not args.no_plots:
        plots += [p for p in [plot_geometry(runs, out)] if p is not None]
    print(f"\nsaved {out / 'results.json'}" + "".join(f", {p}" for p in plots))
    print(f"total time {total} s")
    return payload


if __name__ == "__main__":
    main()
