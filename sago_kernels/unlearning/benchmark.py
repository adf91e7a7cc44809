"""The offline TOFU-style benchmark: the field's metrics on fictitious authors, no download.

    python -m sago_kernels.unlearning.benchmark            # the default size (minutes on a CPU)
    python -m sago_kernels.unlearning.benchmark --quick    # a smaller, faster check
    python -m sago_kernels.unlearning.benchmark --methods sum sago upgrad gru_global --seeds 0 1 2 3 4

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
from .losses import FORGET_LOSSES, IGNORE_INDEX, SUGGESTED_GAMMA, nll_loss

DEFAULT_METHODS = ("sum", "pcgrad", "sago", "sago_prefer_retain", "blur")
DEFAULT_LOSSES = ("ga", "npo", "simnpo", "rmu")
MIA_KINDS = ("loss", "zlib", "min_k", "min_k_plus_plus")
PROTOCOLS = ("matched", "fixed")


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


def unlearn(target, corpus, evaluator, reference, loss, method, seed, args) -> dict:
    """Algorithm 1 from the target model; evaluated at matched forgetting and at the budget."""
    model = copy.deepcopy(target).train().requires_grad_(True)
    gamma = args.gamma if args.gamma is not None else SUGGESTED_GAMMA.get(loss, 1.0)
    synth = GradientSynthesizer(model, method=method, alpha=args.alpha, gamma=gamma,
                                backend=args.backend)  # fmt: skip
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
        unlearning_step(
            model, synth, opt, draw(forget_all), draw(retain_all), forget_loss=loss,
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
    return {"seed": seed, "loss": loss, "method": method, "gamma": gamma,
            "curve": curve, "protocols": results,
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


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (loss, method, protocol)."""
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
        for key, _, _ in REPORTED:
            values[key] = [r["metrics"][key] for r in rows]
        for key, vals in values.items():
            entry[key] = statistics.fmean(vals)
            entry[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
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
    )
    p.add_argument("--quick", action="store_true",
                   help="a smaller run (fewer authors, 2 seeds, 2 losses, 3 methods)")  # fmt: skip
    p.add_argument("--losses", nargs="+", default=None, metavar="LOSS",
                   help=f"forget losses (default {' '.join(DEFAULT_LOSSES)})")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"combine methods (default {' '.join(DEFAULT_METHODS)}; any of "
                   "sk.methods())")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds: each builds its own corpus and models (default 0 1 2)")  # fmt: skip
    p.add_argument("--authors", type=int, default=None, help="trained authors (default 40)")
    p.add_argument("--forget-percent", type=int, default=10, choices=(1, 5, 10),
                   help="share of the trained authors in the forget split")  # fmt: skip
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
    p.add_argument("--width", type=int, default=128, help="model width (GPT-2 n_embd)")
    p.add_argument("--layers", type=int, default=2, help="model layers")
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
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "losses": ["ga", "npo"] if quick else list(DEFAULT_LOSSES),
        "methods": ["sum", "pcgrad", "sago"] if quick else list(DEFAULT_METHODS),
        "seeds": [0, 1] if quick else [0, 1, 2],
        "authors": 20 if quick else 40,
        "steps": 20 if quick else 30,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = check_args(args)
    if problems:
        p.error("; ".join(problems))
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    """Every flag checked before anything is built or trained: what is wrong, and how to fix."""
    problems = []
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        problems.append(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
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
    print(
        f"benchmark: {len(args.seeds)} seeds × {len(args.losses)} losses × {len(args.methods)} "
        f"methods on {args.device}, combine backend {backend!r}, {torch.get_num_threads()} "
        "threads",
        flush=True,
    )
    runs, seeds_info = [], []
    total_runs = len(args.seeds) * len(args.losses) * len(args.methods)
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
        for loss in args.losses:
            for method in args.methods:
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
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    plots = plot(runs, table, out)
    print(f"\nsaved {out / 'results.json'}" + "".join(f", {p}" for p in plots))
    print(f"total time {total} s")
    return payload


if __name__ == "__main__":
    main()
