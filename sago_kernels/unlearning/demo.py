"""Unlearning demo: memorise synthetic facts, then forget some of them with each method.

    python -m sago_kernels.unlearning.demo                       # defaults: CPU, a few minutes
    python -m sago_kernels.unlearning.demo --losses npo --methods sum sago --device cuda
    python -m sago_kernels.unlearning.demo --seeds 0 1 2 3 4         # each seed, then mean ± std over them

1. Builds a corpus of facts about fictitious entities (``sago_kernels.unlearning.facts``): forget,
   retain and neighbour entities, seeded.
2. Trains a tiny GPT-2 from a config until it knows every fact.
3. Unlearns the forget set with each forget loss (GA, NPO, SimNPO; retain loss GD = NLL on D_r)
   under each combine method, with Algorithm 1 and the fused combine. Every run stops when its
   forget accuracy reaches the same target (matched forgetting), so retention is compared at equal
   forgetting, as the paper's Appendix A tunes for. "Reached" is judged on counts of facts
   (``facts.at_or_below_target``), never on a float mean.
4. Prints the paper's tables: accuracy per method, and the gradient geometry (Table 3); saves a
   plot of forget/retain NLL over steps (Figure 1) and a JSON of every number.
5. With ``--seeds``, does all of the above once per seed (corpus, initialisation and batches all
   follow the seed) and prints the same tables as mean ± std over the seeds: one seed's table is
   one draw, and the differences between methods on this toy are of the size of the seed's.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from .algorithm import unlearning_step
from .facts import FactsCorpus, at_or_below_target, make_corpus, score
from .losses import SUGGESTED_GAMMA, nll_loss
from ..synthesizer import GradientSynthesizer

LOSS_LABELS = {"ga": "GA+GD", "npo": "NPO+GD", "simnpo": "SimNPO+GD"}


def tiny_gpt2(vocab_size: int, seed: int) -> torch.nn.Module:
    """A 4-layer, 128-wide GPT-2 (about 0.8M parameters) built from a config: no download."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=4, n_embd=128, n_layer=4, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg)


def pretrain(corpus: FactsCorpus, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """Train on every fact until all are known (or ``--pretrain-epochs`` run out)."""
    model = tiny_gpt2(len(corpus.vocab), args.seed).to(args.device)
    everything = {
        k: torch.cat([corpus.tensors(s, args.device)[k] for s in ("forget", "retain", "neighbour")])
        for k in ("input_ids", "labels")
    }
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    n, start = len(everything["input_ids"]), time.perf_counter()
    for epoch in range(1, args.pretrain_epochs + 1):
        for idx in torch.randperm(n, generator=g).split(args.pretrain_batch):
            idx = idx.to(args.device)
            logits = model(input_ids=everything["input_ids"][idx]).logits
            nll_loss(logits, everything["labels"][idx]).backward()
            opt.step()
            opt.zero_grad()
        known = score(model, everything)
        acc, knows_all = known.accuracy, known.correct == known.total
        if epoch % 5 == 0 or knows_all:
            print(f"  pre-training epoch {epoch:4d}: accuracy {acc:.3f}", flush=True)
        if knows_all:
            break
    info = {
        "epochs": epoch, "accuracy": acc, "correct": known.correct, "total": known.total,
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    return model, info


def unlearn(
    pretrained: torch.nn.Module,
    corpus: FactsCorpus,
    loss: str,
    method: str,
    args: argparse.Namespace,
) -> dict:
    """Algorithm 1 until forget accuracy <= target (on counts) or ``--steps`` run out."""
    model = copy.deepcopy(pretrained).train().requires_grad_(True)
    gamma = args.gamma if args.gamma is not None else SUGGESTED_GAMMA[loss]
    synth = GradientSynthesizer(model, method=method, alpha=args.alpha, gamma=gamma)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    splits = {s: corpus.tensors(s, args.device) for s in ("forget", "retain", "neighbour")}
    g = torch.Generator().manual_seed(args.seed + 1)  # the same batches for every method

    def draw(split: str, size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(splits[split]["input_ids"]), (size,), generator=g).to(args.device)
        return {k: v[idx] for k, v in splits[split].items()}

    totals: dict[str, int] = {}  # facts scored per split, the same at every measurement

    def measure(step: int) -> dict:
        row = {"step": step}
        for split, batch in splits.items():
            s = score(model, batch)
            totals[split] = s.total
            row[f"{split}_acc"], row[f"{split}_correct"], row[f"{split}_nll"] = (
                s.accuracy, s.correct, s.nll
            )
        return row

    def reached(row: dict) -> bool:
        return at_or_below_target(row["forget_correct"], totals["forget"], args.target)

    curve, start, step = [measure(0)], time.perf_counter(), 0
    while step < args.steps and not reached(curve[-1]):
        step += 1
        unlearning_step(
            model, synth, opt, draw("forget", args.batch), draw("retain", args.batch),
            forget_loss=loss, retain_loss="nll", ref_model=pretrained,
        )  # fmt: skip
        if step % args.eval_every == 0 or step == args.steps:
            curve.append(measure(step))
    if curve[-1]["step"] != step:
        curve.append(measure(step))
    geometry = synth.history_table()
    mean = {
        k: sum(r[k] for r in geometry) / max(len(geometry), 1)
        for k in ("cos_fr", "cos_out_f", "cos_out_r", "conflict_fraction")
    }
    final = curve[-1]
    counts = {}  # the numbers the target is judged on, beside the accuracies
    for split in splits:
        counts[f"{split}_correct"] = final[f"{split}_correct"]
        counts[f"{split}_total"] = totals[split]
    return {
        "loss": loss, "method": method, "gamma": gamma, "steps": step,
        "reached_target": reached(final),
        "forget_acc": final["forget_acc"], "retain_acc": final["retain_acc"],
        "neighbour_acc": final["neighbour_acc"], **counts, "geometry": mean, "curve": curve,
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def print_tables(results: list[dict], target: float) -> None:
    print(f"\nAccuracy after unlearning to forget accuracy <= {target} (matched forgetting)")
    print(
        f"{'forget loss':<12}{'method':<20}{'steps':>6}"
        f"{'forget ↓':>10}{'retain ↑':>10}{'neighbour ↑':>13}"
    )
    for r in results:
        flag = "" if r["reached_target"] else "  (target not reached)"
        print(
            f"{LOSS_LABELS[r['loss']]:<12}{r['method']:<20}{r['steps']:>6}{r['forget_acc']:>10.3f}"
            f"{r['retain_acc']:>10.3f}{r['neighbour_acc']:>13.3f}{flag}"
        )
    print("\nGradient geometry, mean over steps (paper Table 3)")
    print(
        f"{'forget loss':<12}{'method':<20}{'cos(f,r)':>10}"
        f"{'cos(out,f)':>12}{'cos(out,r)':>12}{'conflict':>10}"
    )
    for r in results:
        g = r["geometry"]
        print(
            f"{LOSS_LABELS[r['loss']]:<12}{r['method']:<20}{g['cos_fr']:>10.3f}{g['cos_out_f']:>12.3f}"
            f"{g['cos_out_r']:>12.3f}{g['conflict_fraction']:>10.3f}"
        )


SUMMARY_KEYS = ("steps", "forget_acc", "retain_acc", "neighbour_acc")
GEOMETRY_KEYS = ("cos_fr", "cos_out_f", "cos_out_r", "conflict_fraction")


def _mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1); no std from one seed rather than a false 0."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(runs: list[list[dict]]) -> list[dict]:
    """Mean ± std over seeds of each (loss, method) cell; ``runs`` holds one results list a seed.

    ``reached`` counts the seeds whose run reached the target (``reached_target``, judged on
    counts by :func:`facts.at_or_below_target`): a cell's means mix stopped and unstopped runs
    unless it equals ``seeds``.
    """
    cells: dict[tuple[str, str], list[dict]] = {}
    for results in runs:
        for r in results:
            cells.setdefault((r["loss"], r["method"]), []).append(r)
    summary = []
    for (loss, method), rows in cells.items():
        if len(rows) != len(runs):
            raise ValueError(
                f"({loss}, {method}) ran in {len(rows)} of {len(runs)} seeds: summarize runs "
                "made with the same --losses and --methods"
            )
        cell = {"loss": loss, "method": method, "seeds": len(rows)}
        cell["reached"] = sum(bool(r["reached_target"]) for r in rows)
        cell.update({k: _mean_std([float(r[k]) for r in rows]) for k in SUMMARY_KEYS})
        cell["geometry"] = {k: _mean_std([r["geometry"][k] for r in rows]) for k in GEOMETRY_KEYS}
        summary.append(cell)
    return summary


def _pm(stat: dict, digits: int) -> str:
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def print_summary(summary: list[dict], target: float, seeds: list[int]) -> None:
    n = len(seeds)
    print(f"\nMean ± std over {n} seeds ({' '.join(map(str, seeds))}); std is the sample std")
    print(f"Accuracy after unlearning to forget accuracy <= {target} (matched forgetting)")
    print(
        f"{'forget loss':<12}{'method':<10}{'steps':>14}{'forget ↓':>16}"
        f"{'retain ↑':>16}{'neighbour ↑':>16}{'reached':>9}"
    )
    for c in summary:
        print(
            f"{LOSS_LABELS[c['loss']]:<12}{c['method']:<10}{_pm(c['steps'], 0):>14}"
            f"{_pm(c['forget_acc'], 3):>16}{_pm(c['retain_acc'], 3):>16}"
            f"{_pm(c['neighbour_acc'], 3):>16}{c['reached']:>6}/{n}"
        )
    print("\nGradient geometry, mean over steps (paper Table 3), mean ± std over seeds")
    print(
        f"{'forget loss':<12}{'method':<10}{'cos(f,r)':>16}{'cos(out,f)':>16}"
        f"{'cos(out,r)':>16}{'conflict':>16}"
    )
    for c in summary:
        g = c["geometry"]
        print(
            f"{LOSS_LABELS[c['loss']]:<12}{c['method']:<10}"
            + "".join(f"{_pm(g[k], 3):>16}" for k in GEOMETRY_KEYS)
        )


def plot(results: list[dict], path: Path) -> bool:
    """Forget and retain NLL over steps, one column per forget loss (paper Figure 1)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    losses = list(dict.fromkeys(r["loss"] for r in results))
    fig, axes = plt.subplots(2, len(losses), figsize=(4.2 * len(losses), 6.5), squeeze=False)
    for col, loss in enumerate(losses):
        for r in (r for r in results if r["loss"] == loss):
            steps = [c["step"] for c in r["curve"]]
            axes[0][col].plot(steps, [c["forget_nll"] for c in r["curve"]], label=r["method"])
            axes[1][col].plot(steps, [c["retain_nll"] for c in r["curve"]], label=r["method"])
        axes[0][col].set_title(f"{LOSS_LABELS[loss]}: forget NLL (higher = forgotten)", fontsize=9)
        axes[1][col].set_title(f"{LOSS_LABELS[loss]}: retain NLL (lower = kept)", fontsize=9)
        axes[1][col].set_xlabel("step")
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Unlearning demo on synthetic facts (see module docstring)."
    )
    p.add_argument(
        "--losses", nargs="+", default=["ga", "npo", "simnpo"], choices=list(LOSS_LABELS)
    )
    p.add_argument("--methods", nargs="+", default=["sum", "pcgrad", "sago"])
    p.add_argument("--entities", type=int, default=200)
    p.add_argument("--steps", type=int, default=600, help="most unlearning steps per run")
    p.add_argument("--target", type=float, default=0.05, help="stop at this forget accuracy")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--gamma", type=float, default=None, help="default: the paper's per loss")
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--pretrain-epochs", type=int, default=150)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--pretrain-batch", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="run each seed into OUT/seed_<s>/ and print mean ± std over them (overrides --seed)",
    )  # fmt: skip
    p.add_argument("--out", default="demo_out", help="folder for results.json and the plot")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """One seed: corpus, pre-training, every (loss, method) run; saves and returns its numbers."""
    start = time.perf_counter()
    corpus = make_corpus(args.entities, seed=args.seed)
    print(
        f"corpus: {len(corpus.forget)} forget, {len(corpus.retain)} retain, "
        f"{len(corpus.neighbour)} neighbour facts; vocabulary {len(corpus.vocab)}",
        flush=True,
    )
    pretrained, info = pretrain(corpus, args)
    pretrained.eval().requires_grad_(False)
    print(
        f"pre-trained: accuracy {info['accuracy']:.3f} after {info['epochs']} epochs "
        f"({info['seconds']} s)"
    )
    results = []
    for loss in args.losses:
        for method in args.methods:
            r = unlearn(pretrained, corpus, loss, method, args)
            results.append(r)
            print(
                f"  {LOSS_LABELS[loss]:<10} {method:<20} {r['steps']:>4} steps, "
                f"forget {r['forget_acc']:.3f}, retain {r['retain_acc']:.3f}, "
                f"neighbour {r['neighbour_acc']:.3f} ({r['seconds']} s)",
                flush=True,
            )
    print_tables(results, args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = round(time.perf_counter() - start, 1)
    payload = {"args": vars(args), "pretraining": info, "results": results, "seconds": total}
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    plotted = plot(results, out / "unlearning_curves.png")
    print(
        f"\nsaved {out / 'results.json'}"
        + (f" and {out / 'unlearning_curves.png'}" if plotted else "")
    )
    print(f"total time {total} s", flush=True)
    return payload


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.seeds:
        return run(args)["results"]
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds repeats a seed ({args.seeds}): give each seed once")
    start, payloads, root = time.perf_counter(), [], Path(args.out)
    for seed in args.seeds:
        print(f"\n=== seed {seed} ===", flush=True)
        one = argparse.Namespace(**{**vars(args), "seed": seed, "out": str(root / f"seed_{seed}")})
        payloads.append(run(one))
    summary = summarize([p["results"] for p in payloads])
    print_summary(summary, args.target, args.seeds)
    total = round(time.perf_counter() - start, 1)
    (root / "summary.json").write_text(json.dumps({
        "args": vars(args), "summary": summary, "seconds": total,
        "seconds_per_seed": {s: p["seconds"] for s, p in zip(args.seeds, payloads)},
    }, indent=1))  # fmt: skip
    print(f"\nsaved {root / 'summary.json'}; total time {total} s over {len(args.seeds)} seeds")
    return [{**r, "seed": s} for s, p in zip(args.seeds, payloads) for r in p["results"]]


if __name__ == "__main__":
    main()
