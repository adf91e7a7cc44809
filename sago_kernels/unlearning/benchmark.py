"""The offline TOFU-style unlearning benchmark, the package's main job: its command line.

    python -m sago_kernels.unlearning.benchmark            # the default size (minutes on a CPU)
    python -m sago_kernels.unlearning.benchmark --quick    # a smaller, faster check
    python -m sago_kernels.unlearning.benchmark --methods sum sago upgrad gru_global --seeds 0 1 2 3 4
    python -m sago_kernels.unlearning.benchmark --paper    # the paper's Tables 1-3 (~45 min)
    python -m sago_kernels.unlearning.benchmark --data tofu --forget-split forget10 \
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \
        --retain-model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90 --device cuda ...

Data and checkpoints (``--data``, ``--model``, ``--retain-model``, the memory flags,
``--save-model``, ``--export-data``): ``loading.py``, over the sources ``synthetic.py``,
``tofu.py``, ``wmdp.py``, ``export.py`` and the checkpoint loading of ``checkpoints.py``.

The parts, one idea each: the data (``sources.py``: named sets by role; the synthetic author
world of ``corpus.py`` through ``synthetic.py``), the protocol (``protocol.py``: pre-training,
the runs, matched forgetting and the fixed budget), the metrics of one model
(``evaluation.py`` over ``metrics.py``), the statistics and tables (``tables.py``) and the plots
(``plots.py``). ``results.json`` holds every per-example value needed to recompute the metrics.

**The paper-table preset** (``--paper``): only the runs the paper's Tables 1-3 need, 21 a seed
(``tables.paper_runs``), not the loss × method cross product; the tables go to stdout and
``paper_tables.md`` (and under ``"paper_tables"`` in the JSON); ``cosines.png`` plots Table 3 per
step.

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
import json
import math
import sys
import time
from pathlib import Path

import torch

from .. import dispatch
from ..methods import METHODS
from . import loading
from .losses import FORGET_LOSSES
from .plots import plot, plot_geometry
from .protocol import FORGET_ONLY, given_seed, prepare_seed, seed_line, unlearn
from .sources import SourceError
from .tables import paper_markdown, paper_runs, paper_tables, print_table, summarise

DEFAULT_METHODS = ("sum", "pcgrad", "sago", "sago_prefer_retain", "blur")
DEFAULT_LOSSES = ("ga", "npo", "simnpo", "rmu")
PAPER_PRESET = {"seeds": [0, 1, 2, 3], "authors": 100, "forget_percent": 10, "width": 128,
                "layers": 2, "steps": 75}  # fmt: skip
"""``--paper``'s sizes (the module docstring says why); explicit flags override each."""


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
    loading.add_arguments(p)
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
    problems = check_args(args) + loading.check_arguments(args)
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
    if args.model is None and not 1 <= args.rmu_layer <= args.layers:
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
    try:
        return _main(args)
    except SourceError as error:  # data or a checkpoint that cannot be had: one line, exit 2
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _main(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    if args.export_data is not None:
        from .export import export_data

        data = loading.data_for_seed(args, loading.prepare(args), args.seeds[0])
        files = export_data(data, Path(args.export_data), args.forget_percent)
        print(f"wrote {len(files)} files to {args.export_data} (seed {args.seeds[0]})")
        return {"export": [str(f) for f in files]}
    prepared = loading.prepare(args)  # everything that can fail on a file or the network

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
        data = loading.data_for_seed(args, prepared, seed)
        if prepared.target is not None:
            ready = given_seed(data, args, seed, prepared.target, prepared.retain_model,
                               prepared.cache)  # fmt: skip
        else:
            ready = prepare_seed(data, args, seed)
        target, evaluator, reference = (ready[k] for k in ("target", "evaluator", "reference"))
        info = ready["info"]
        seeds_info.append(info)
        tqdm.write(seed_line(info))
        for loss, method in args.runs:
            run = unlearn(target, data, evaluator, reference, loss, method, seed, args)
            runs.append(run)
            m = run["protocols"].get("matched", run["protocols"]["fixed"])
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
