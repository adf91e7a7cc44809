"""The unlearning benchmark, the package's main job: its command line.

    python -m sago_kernels.unlearning.benchmark            # the default (minutes on 2 CPU cores)
    python -m sago_kernels.unlearning.benchmark --quick    # a smaller check (~2 min)
    python -m sago_kernels.unlearning.benchmark --paper    # the paper's Tables 1-3, Figures 3-4
    python -m sago_kernels.unlearning.benchmark --data tofu --forget-split forget10 \
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \
        --retain-model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90 --device cuda ...

What one run does (the headline experiment; ``--paper`` is its larger form):

1. **Data** (``synthetic.py`` over ``corpus.py``): a world of fictitious authors in the shape of
   TOFU and RWKU, per seed: forget and retain authors, neighbours of the forget authors, real
   authors and world facts (held out of every unlearning loss), holdout authors (never trained).
2. **Models** (``protocol.py``): a target GPT-2 trained on everything but the holdout, and a
   retain-only model trained without the forget authors (the reference of forget quality).
3. **Runs**: each forget loss with each combine method, Algorithm 1 for a fixed budget of
   ``--steps``, over the paper's grid of forget weights γ and retain weights α (Appendix A).
   Every run of a (seed, loss) draws the same batches, so NPO's reference log-probabilities
   are computed once per step and seed and shared (``protocol.StepReferences``): one reference
   forward per step instead of one per step and run (the default's 16 NPO runs a seed: 16 times
   fewer; ``--quick``'s 9: 9 times fewer), with the same results bit for bit.
4. **Metrics** (``evaluation.py``): RWKU-style probes (ROUGE-L of greedy answers to paraphrased
   and fill-in-the-blank questions), WMDP-style multiple choice, and TOFU's metrics (forget
   quality, the nine-value model utility, privacy leakage, ...), on the forget authors and on
   held-out knowledge.
5. **Analysis** (``analysis.py``): per seed, each method's Pareto front over the grid, read at
   the forgetting of GD; paired per-seed differences with 95% intervals. The early stop
   (matched memorisation) is a secondary table; Table 3's cosines use one common step window.
6. **Output** (``tables.py``, ``plots.py``): the tables on the terminal and in ``tables.md``,
   ``results.json`` (with the commit, command, machine, versions and numerics, every set's
   identity, every metric), ``per_example.json`` (the values the metrics recompute from),
   ``timings.json``, and the plots (the fronts as the paper's Figures 3-4, the cosines, the early
   stop's forgetting curves). ``python -m sago_kernels.unlearning.report results.json`` writes
   the tables again from the JSON.

Data and checkpoints (``--data``, ``--model``, ``--retain-model``, the memory flags,
``--save-model``, ``--export-data``): ``loading.py``, over the sources ``synthetic.py``,
``tofu.py``, ``wmdp.py``, ``export.py`` and the checkpoint loading of ``checkpoints.py``. A
source scores the roles it has: TOFU's files have no probes or choices, WMDP's only choices,
and the tables print a metric a source lacks as n/a. Given checkpoints run their seeds in this
process (``--jobs`` is for the synthetic world's per-seed pre-training). A file, a field or a
checkpoint that cannot be had is one line on stderr and exit status 2, before anything is
trained or written.

CPU numerics: by default the command re-executes itself with ``provenance.PORTABLE_ENV`` (MKL's
reproducible mode for Intel and AMD, ATen's kernels at AVX2), so that another x86 machine can
get the same bits; ``--numerics native`` keeps the machine's fastest paths (the JSON records
which).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import dispatch
from ..methods import METHODS
from . import loading, provenance
from .analysis import analyse
from .losses import FORGET_LOSSES
from .progress import Progress
from .protocol import (
    FORGET_ONLY,
    StepReferences,
    given_seed,
    prepare_seed,
    run_specs,
    seed_line,
    unlearn,
)  # fmt: skip
from .sources import SourceError
from .tables import paper_runs, render

DEFAULTS = {
    "losses": ["ga", "npo"], "methods": ["forget_only", "sum", "pcgrad", "sago"],
    "seeds": [0, 1, 2, 3], "gammas": [0.1, 0.3], "alphas": [0.1, 0.3], "authors": 30,
    "steps": 25, "jobs": 2, "qa_per_author": 6, "neighbours": 2, "real_authors": 20,
    "world_facts": 30, "eval_retain": 30,
}  # fmt: skip
"""The default run's sizes; ``--quick`` and ``--paper`` replace some (explicit flags win)."""
QUICK = {"losses": ["npo"], "methods": ["sum", "pcgrad", "sago"], "seeds": [0, 1],
         "gammas": [0.3], "alphas": [0.3], "authors": 16, "steps": 20, "qa_per_author": 4,
         "neighbours": 1, "real_authors": 10, "world_facts": 16, "eval_retain": 20}  # fmt: skip
PAPER = {"seeds": list(range(8)), "authors": 60, "steps": 50, "gammas": [0.1, 0.3],
         "alphas": [0.1, 0.3], "jobs": 2}  # fmt: skip
"""``--paper``'s sizes (the module docstring of ``tables.py`` lists its cells)."""
OUT = "unlearning_out"


class _Parser(argparse.ArgumentParser):
    """One line on bad input (what was wrong and how to fix it), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every default shown: argparse's "(default: ...)", or for a flag whose default depends on
    the preset (None here), the help's own "(default ...)" with the values."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _number(low: float, high: float, *, low_open: bool = True):
    """An argparse type: a finite float in (low, high] (or [low, high])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"should be a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            bound = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"should be a finite number in {bound}, got {text!r}")
        return value

    return parse


def _integer(low: int, high: int):
    """An argparse type: an int in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"should be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"should be in [{low}, {high}], got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m sago_kernels.unlearning.benchmark",
        description=__doc__.split("\n\n", 2)[0] + "\n\nSee the module docstring for what a run "
        "does (python -m pydoc sago_kernels.unlearning.benchmark).",
        formatter_class=_Formatter,
    )  # fmt: skip
    preset = p.add_argument_group("presets")
    preset.add_argument("--quick", action="store_true",
                        help=f"a smaller run: {_flags(QUICK)}")  # fmt: skip
    preset.add_argument("--paper", action="store_true",
                        help=f"the paper's Tables 1-3 ({len(paper_runs())} cells a seed, each "
                        f"over the grid) at {_flags(PAPER)}; --losses and --methods are refused "
                        "with it, size flags override it")  # fmt: skip
    runs = p.add_argument_group("runs")
    runs.add_argument("--losses", nargs="+", metavar="LOSS",
                      help=f"forget losses, of {sorted(FORGET_LOSSES)} (default "
                      f"{' '.join(DEFAULTS['losses'])})")  # fmt: skip
    runs.add_argument("--methods", nargs="+", metavar="METHOD",
                      help=f"combine methods, of sk.methods(), or {FORGET_ONLY} (the forget "
                      "loss alone; not for rmu) (default "
                      f"{' '.join(DEFAULTS['methods'])})")  # fmt: skip
    runs.add_argument("--gammas", nargs="+", type=_number(0, 100), metavar="G",
                      help="forget-weight multiples swept with α at 1, as the paper's γ in "
                      f"[0.1, 1] (default {' '.join(map(str, DEFAULTS['gammas']))}; 1 is "
                      "always run)")  # fmt: skip
    runs.add_argument("--alphas", nargs="+", type=_number(0, 100), metavar="A",
                      help="retain-weight multiples swept with γ at 1 (default "
                      f"{' '.join(map(str, DEFAULTS['alphas']))})")  # fmt: skip
    runs.add_argument("--steps", type=_integer(1, 100_000),
                      help=f"the fixed budget, steps per run (default {DEFAULTS['steps']})")
    runs.add_argument("--seeds", nargs="+", type=_integer(0, 2**31 - 1), metavar="SEED",
                      help="seeds: each builds its own world and models (default "
                      f"{' '.join(map(str, DEFAULTS['seeds']))})")  # fmt: skip
    runs.add_argument("--jobs", type=_integer(1, 64),
                      help=f"seeds run in parallel processes (default {DEFAULTS['jobs']})")
    add_ = runs.add_argument
    add_("--batch", type=_integer(1, 4096), default=8, help="forget and retain examples a step")
    add_("--lr", type=_number(0, 10), default=1e-3, help="unlearning learning rate (AdamW)")
    add_("--granularity", choices=("module", "parameter", "global"), default="module",
         help="segments of the per-segment methods (the paper's PCGrad projects per module)")
    add_("--rmu-layer", type=_integer(1, 64), default=1, help="hidden layer RMU steers")
    add_("--cosine-window", nargs=2, type=_integer(1, 100_000), metavar=("FIRST", "LAST"),
         help="Table 3's common step window (default: every step of the budget)")
    data = p.add_argument_group("data (the synthetic world)")
    add_ = data.add_argument
    add_("--authors", type=_integer(2, 5000),
         help=f"trained authors, forget and retain (default {DEFAULTS['authors']})")
    add_("--forget-percent", type=int, choices=(1, 5, 10), default=10,
         help="share of the trained authors in the forget set")
    add_("--qa-per-author", type=_integer(1, 11),
         help=f"facts per author (default {DEFAULTS['qa_per_author']})")
    add_("--neighbours", type=_integer(0, 4),
         help="neighbours per forget author, held out of unlearning (default "
         f"{DEFAULTS['neighbours']})")  # fmt: skip
    add_("--real-authors", type=_integer(1, 42),
         help=f"real-author questions (default {DEFAULTS['real_authors']})")
    add_("--world-facts", type=_integer(1, 82),
         help=f"world-fact questions (default {DEFAULTS['world_facts']})")
    add_("--eval-retain", type=_integer(1, 100_000),
         help="retain questions scored for model utility, TOFU's retain_perturbed role "
         f"(default {DEFAULTS['eval_retain']})")  # fmt: skip
    model = p.add_argument_group("models")
    add_ = model.add_argument
    add_("--width", type=_integer(4, 4096), default=128, help="GPT-2 width (n_embd, 4 heads)")
    add_("--layers", type=_integer(1, 64), default=2, help="GPT-2 layers")
    add_("--pretrain-epochs", type=_integer(1, 100_000), default=200,
         help="most epochs to memorise the training sets")
    add_("--pretrain-lr", type=_number(0, 10), default=3e-3, help="pre-training learning rate")
    add_("--pretrain-batch", type=_integer(1, 4096), default=32, help="pre-training batch size")
    run = p.add_argument_group("execution and output")
    add_ = run.add_argument
    add_("--backend", choices=("triton", "native", "reference"),
         help="combine backend (default: the automatic choice)")
    add_("--device", default="cpu", help="cpu or cuda")
    add_("--threads", type=_integer(0, 1024), default=1,
         help="torch threads per process (0: torch's default); tiny models gain nothing from "
         "more, and a shared machine loses much to oversubscription")
    add_("--numerics", choices=("portable", "native"), default="portable",
         help="portable: re-execute with MKL_CBWR=COMPATIBLE and ATEN_CPU_CAPABILITY=avx2 so "
         "other x86 machines can give the same bits; native: this CPU's fastest paths")
    add_("--out", default=OUT, help="output folder (created; checked writable before any "
         "training)")
    add_("--no-progress", action="store_true", help="no progress output")
    add_("--no-plots", action="store_true", help="no plots (the JSON and the tables only)")
    loading.add_arguments(p)
    return p


def _flags(preset: dict) -> str:
    return " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in preset.items()
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.paper:
        clash = [f for f, given in (("--quick", args.quick), ("--losses", args.losses),
                                    ("--methods", args.methods)) if given]  # fmt: skip
        if clash:
            p.error(f"--paper runs exactly the tables' cells: leave out {' '.join(clash)}")
    defaults = dict(DEFAULTS)
    if args.quick:
        defaults.update(QUICK)
    if args.paper:
        defaults.update(PAPER)
        defaults["losses"] = list(dict.fromkeys(loss for loss, _ in paper_runs()))
        defaults["methods"] = list(dict.fromkeys(m for _, m in paper_runs()))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = check_args(args) + loading.check_arguments(args)
    if problems:
        p.error("; ".join(problems))
    if args.paper:  # only the tables' cells, each over the grid
        cells = set(paper_runs())
        args.runs = [s for s in run_specs(args.losses, args.methods, args.gammas, args.alphas)
                     if (s.loss, s.method) in cells]  # fmt: skip
    else:
        args.runs = run_specs(args.losses, args.methods, args.gammas, args.alphas)
    if not args.runs:
        p.error("no runs: forget_only is the only method and rmu the only loss (RMU's "
                "standalone baseline is --methods sum)")
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    """What argparse's types cannot see, checked before anything is built or trained."""
    problems = []
    for flag in ("losses", "methods", "seeds", "gammas", "alphas"):
        values = getattr(args, flag)
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            problems.append(f"--{flag} repeats {', '.join(map(str, repeated))}: give each once")
    unknown = [m for m in args.methods if m not in METHODS and m != FORGET_ONLY]
    if unknown:
        problems.append(f"--methods: unknown {unknown}; choose from "
                        f"{sorted([*METHODS, FORGET_ONLY])}")  # fmt: skip
    unknown = [m for m in args.losses if m not in FORGET_LOSSES]
    if unknown:
        problems.append(f"--losses: unknown {unknown}; choose from {sorted(FORGET_LOSSES)}")
    if args.width % 4:
        problems.append(f"--width should be a multiple of 4 (4 attention heads), got {args.width}")
    if args.model is None and args.rmu_layer > args.layers:
        problems.append(f"--rmu-layer should be in [1, --layers = {args.layers}], got "
                        f"{args.rmu_layer}")  # fmt: skip
    if args.cosine_window is not None:
        first, last = args.cosine_window
        if not first <= last <= args.steps:
            problems.append(f"--cosine-window should be FIRST <= LAST <= --steps = {args.steps}, "
                            f"got {first} {last}")  # fmt: skip
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


def check_out(out: Path, create: bool = True) -> str | None:
    """Create ``out`` and write a file in it, before any training; the problem, or None. With
    ``create`` False nothing is made: ``out`` (or, while it does not exist, its nearest existing
    parent) is a folder that can be written to."""
    problem = (f"--out {str(out)!r} cannot be written ({{}}); choose a folder you can write "
               "to")  # fmt: skip
    if not create:
        where = out
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            return problem.format(f"{where} is not a folder")
        if not os.access(where, os.W_OK | os.X_OK):
            return problem.format(f"{where} is not writable")
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as error:
        return problem.format(error.strerror or error)
    return None


# --------------------------------------------------------------------------- one seed


def run_seed(args: argparse.Namespace, seed: int, *, bars: bool | None = None,
             prepared: loading.Prepared | None = None, cache_references: bool = True) -> dict:
    """Everything of one seed: its data and models, then every run. Returns the seed's record,
    its runs (without per-example values), their per-example values, and timings.
    ``prepared``: what :func:`loading.prepare` resolved (made here when None: a worker
    process). ``cache_references``: NPO's reference log-probabilities computed once per
    (seed, loss) and shared by its runs (``protocol.StepReferences``); False runs the
    reference model inside every step (the same numbers, bit for bit; a test compares them)."""
    wall, cpu = time.perf_counter(), time.process_time()
    show = not args.no_progress
    prepared = loading.prepare(args) if prepared is None else prepared
    data = loading.data_for_seed(args, prepared, seed)
    if prepared.target is not None:
        ready = given_seed(data, args, seed, prepared.target, prepared.retain_model,
                           prepared.cache)  # fmt: skip
    else:
        ready = prepare_seed(data, args, seed, progress=show, bar=bars)
    info = ready["info"]
    print(seed_line(info), flush=True)
    runs, per_example, timings = [], [], []
    references = StepReferences() if cache_references else None
    with Progress(len(args.runs), f"seed {seed}: unlearning runs", enabled=show,
                  bar=bars) as bar:  # fmt: skip
        for spec in args.runs:
            start = time.process_time()
            run = unlearn(ready["target"], data, ready["evaluator"], ready["reference"], spec,
                          seed, args, references)  # fmt: skip
            per_example.append(_take_per_example(run))
            timings.append({"seed": seed, "loss": spec.loss, "method": spec.method,
                            "gamma_scale": spec.gamma_scale, "alpha_scale": spec.alpha_scale,
                            "wall_seconds": run.pop("seconds"),
                            "cpu_seconds": round(time.process_time() - start, 2)})  # fmt: skip
            runs.append(run)
            bar.update(note=f"{spec.loss}/{spec.method} γ×{spec.gamma_scale:g} "
                       f"α×{spec.alpha_scale:g}")  # fmt: skip
    info["per_example"] = {key: info[key].pop("per_example") if info[key] else None
                           for key in ("retain_model", "target_model")}  # fmt: skip
    for key in ("target_training", "retain_training"):
        if info[key] is not None:
            info[key].pop("seconds")
    timing = {"seed": seed, "wall_seconds": round(time.perf_counter() - wall, 1),
              "cpu_seconds": round(time.process_time() - cpu, 1), "runs": timings}  # fmt: skip
    return {"info": info, "runs": runs, "per_example": per_example, "timings": timing}


def _take_per_example(run: dict) -> dict:
    out = {}
    for key in ("fixed", "early_stop"):
        if run.get(key) is not None:
            out[key] = run[key].pop("per_example")
    return out


def _seed_worker(args: argparse.Namespace, seed: int) -> dict:
    """A seed in its own process (``--jobs``): the same thread count as the parent's."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return run_seed(args, seed, bars=False)


def run_all(args: argparse.Namespace, prepared: loading.Prepared) -> list[dict]:
    """Every seed, in parallel processes with ``--jobs`` > 1; in seed order either way. Given
    checkpoints run in this process (loaded once, evaluated once for all seeds)."""
    jobs = min(args.jobs, len(args.seeds))
    if jobs <= 1 or prepared.target is not None:
        return [run_seed(args, seed, prepared=prepared) for seed in args.seeds]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    done = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(_seed_worker, args, seed): seed for seed in args.seeds}
        with Progress(len(args.seeds), "seeds done", enabled=not args.no_progress) as bar:
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                done[futures[future]] = future.result()
                bar.update(note=f"seed {futures[future]}")
    return [done[seed] for seed in args.seeds]


# --------------------------------------------------------------------------- the command


def _args_record(args: argparse.Namespace) -> dict:
    record = {k: v for k, v in vars(args).items() if k != "runs"}
    record["runs"] = [dataclasses.asdict(s) for s in args.runs]
    return record


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args, argv)
    except SourceError as error:  # data or a checkpoint that cannot be had: one line, exit 2
        print(f"python -m sago_kernels.unlearning.benchmark: error: {error}", file=sys.stderr,
              flush=True)  # fmt: skip
        raise SystemExit(2) from None


def _refuse(problem: str | None) -> None:
    if problem:
        print(f"python -m sago_kernels.unlearning.benchmark: error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def _main(args: argparse.Namespace, argv: list[str]) -> dict:
    if args.export_data is not None:
        from .export import export_data

        data = loading.data_for_seed(args, loading.prepare(args), args.seeds[0])
        files = export_data(data, Path(args.export_data), args.forget_percent)
        print(f"wrote {len(files)} files to {args.export_data} (seed {args.seeds[0]})")
        return {"export": [str(f) for f in files]}
    out = Path(args.out)
    _refuse(check_out(out, create=False))
    prepared = loading.prepare(args)  # everything that can fail on a file or the network
    _refuse(check_out(out))
    start, cpu = time.perf_counter(), time.process_time()
    backend, _ = dispatch.resolve_backend(args.backend, torch.device(args.device))
    meta = provenance.record(argv)
    n_seeds, n_runs = len(args.seeds), len(args.runs)
    print(
        f"benchmark: {n_seeds} seed{'s' * (n_seeds != 1)} × {n_runs} run"
        f"{'s' * (n_runs != 1)} ({len(args.losses)} loss{'es' * (len(args.losses) != 1)}, "
        f"{len(args.methods)} method{'s' * (len(args.methods) != 1)}, γ/α grid of "
        f"{len({(s.gamma_scale, s.alpha_scale) for s in args.runs})} points) on {args.device}; "
        f"combine backend {backend!r}; {torch.get_num_threads()} thread"
        f"{'s' * (torch.get_num_threads() != 1)} × {min(args.jobs, n_seeds)} process"
        f"{'es' * (min(args.jobs, n_seeds) != 1)}; CPU numerics "
        f"{'portable' if meta['numerics']['portable'] else 'native'}\n"
        f"results go to {out}/ (results.json, per_example.json, timings.json, tables.md"
        f"{', plots' if not args.no_plots else ''})",
        flush=True,
    )  # fmt: skip
    seeds = run_all(args, prepared)
    infos = [s["info"] for s in seeds]
    runs = [r for s in seeds for r in s["runs"]]
    window = tuple(args.cosine_window) if args.cosine_window else None
    results = {"meta": meta, "args": _args_record(args), "backend": backend, "seeds": infos,
               "runs": runs, "analysis": analyse(infos, runs, window)}  # fmt: skip
    per_example = {"seeds": [{"seed": s["info"]["seed"], **s["info"].pop("per_example")}
                             for s in seeds],
                   "runs": [p for s in seeds for p in s["per_example"]]}  # fmt: skip
    markdown = render(results)
    print("\n" + markdown)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "per_example.json").write_text(json.dumps(per_example) + "\n")
    (out / "tables.md").write_text(markdown)
    written = ["results.json", "per_example.json", "tables.md"]
    if not args.no_plots:
        from .plots import plot_all

        written += [p.name for p in plot_all(results, per_example, out)]
    total = {"wall_seconds": round(time.perf_counter() - start, 1),
             "cpu_seconds_main": round(time.process_time() - cpu, 1),
             "cpu_seconds_seeds": round(sum(s["timings"]["cpu_seconds"] for s in seeds), 1),
             "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
             "seeds": [s["timings"] for s in seeds]}  # fmt: skip
    (out / "timings.json").write_text(json.dumps(total, indent=1) + "\n")
    written.append("timings.json")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    print(f"total {total['wall_seconds']} s wall, {total['cpu_seconds_seeds']} s CPU in the "
          f"seeds' work (load average at the end {total['load_average']})")  # fmt: skip
    return results


def _reexec_portable(argv: list[str]) -> None:
    """Re-run this command in a process with the portable numerics' environment, unless it has
    it or ``--numerics native`` was asked for (MKL and ATen read it only at start)."""
    if "native" in [v for flag, v in zip(argv, argv[1:]) if flag == "--numerics"]:
        return
    if any(a.startswith("--numerics=native") for a in argv) or provenance.is_portable():
        return
    if {"-h", "--help"} & set(argv) or not provenance.x86():
        return
    env = {**os.environ, **provenance.PORTABLE_ENV}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "sago_kernels.unlearning.benchmark",
                               *argv], env)  # fmt: skip


if __name__ == "__main__":
    _reexec_portable(sys.argv[1:])
    main()
