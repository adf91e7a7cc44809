"""Per-rank memory and step time of Algorithm 1 on a DeepSpeed engine, against DeepSpeed's own
summed-loss step, two processes on a CPU (gloo).

    python bench/deepspeed_step.py --out OUT                       # every case, ~10 min on 2 cores
    python bench/deepspeed_step.py --table OUT/deepspeed_step.json # the markdown table of a run

A step, on a random ``LlamaForCausalLM`` in float32 handed to ``deepspeed.initialize`` (ZeRO stage
``--stages``; torch's AdamW, ``gradient_clipping`` 1.0), each rank with its own forget and retain
batch:

- ``summed``: DeepSpeed's own step: one ``engine.backward`` of forget + retain loss (gradient
  ascent on the forget batch, NLL on the retain batch: no two-task combine at all), then
  ``engine.step()``;
- ``synthesizer/<method>``: the forget loss's ``engine.backward`` inside ``synth.forget()``, the
  retain loss's inside ``synth.retain()``, ``synth.combine_()``, ``engine.step()``.

Each case runs in fresh processes (``torchrun``, this script with ``--case``), with
``MALLOC_MMAP_THRESHOLD_=65536`` so that the resident set follows the live tensors (as
``bench/step.py`` explains). Each rank records its resident set after ``deepspeed.initialize``
(the baseline: weights, DeepSpeed's partitions and buffers; AdamW's state comes at the first
step), takes ``--warmup`` then ``--steps`` timed steps, and reports its peak resident set
(``ru_maxrss``) and the growth over the baseline; the step's median wall and process CPU time
(one torch thread a rank), and the combine's. Also the exact bytes: the synthesizer's buffers
(``synth.memory_bytes``) and DeepSpeed's gradient partition. ``--out`` gets ``deepspeed_step.json``
(commit, command, machine, versions, load before and after, every rank's numbers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("summed", "synthesizer/sago", "synthesizer/pcgrad")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for deepspeed_step.json")
    p.add_argument("--table", type=Path, help="print the markdown table of this JSON, and exit")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=(1, 2, 3))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--hidden", type=int, default=512, help="model width")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--vocab", type=int, default=16000, help="vocabulary (untied head)")
    p.add_argument("--tokens", type=int, default=64, help="sequence length")
    p.add_argument("--batch", type=int, default=2, help="sequences per task and rank")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, under torchrun
    return p.parse_args(argv)


def rss_kib() -> int:
    """The current resident set, KiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_case(args: argparse.Namespace) -> None:
    """One case on this rank; rank 0 writes every rank's numbers to OUT/case-<case>.json."""
    import deepspeed
    import torch
    import torch.distributed as dist
    import transformers

    import sago_kernels as sk
    from sago_kernels.unlearning.losses import nll_loss

    stage, variant = args.case.split(":")
    stage = int(stage)
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(2.6875 * args.hidden),
        num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=args.tokens, tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    numel = sum(p.numel() for p in model.parameters())
    ds_config = {
        "train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage}, "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "steps_per_print": 10**9,
    }  # fmt: skip
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=ds_config
    )
    synth = None
    if variant != "summed":
        synth = sk.GradientSynthesizer(engine, method=variant.split("/")[1])
    if stage == 3:
        partition = sum(p.partition_numel() for p in engine.module.parameters()) * 4
    else:
        partition = sum(int(n) for n in engine.optimizer.partition_size) * 4
    g = torch.Generator().manual_seed(1 + rank)
    batches = [
        [torch.randint(0, args.vocab, (args.batch, args.tokens), generator=g) for _ in range(2)]
        for _ in range(args.warmup + args.steps)
    ]
    baseline = rss_kib()

    def loss(ids):
        return nll_loss(engine(input_ids=ids).logits, ids)

    steps, cpu_steps, combines, cpu_combines = [], [], [], []
    for k, (forget, retain) in enumerate(batches):
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        if synth is None:
            engine.backward(-loss(forget) + loss(retain))
            combine_wall = combine_cpu = 0.0
        else:
            with synth.forget():
                engine.backward(-loss(forget))
            with synth.retain():
                engine.backward(loss(retain))
            cw, cc = time.perf_counter(), time.process_time()
            synth.combine_()
            combine_wall, combine_cpu = time.perf_counter() - cw, time.process_time() - cc
        engine.step()
        if k >= args.warmup:
            steps.append(time.perf_counter() - wall)
            cpu_steps.append(time.process_time() - cpu)
            combines.append(combine_wall)
            cpu_combines.append(combine_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mine = {
        "rank": rank, "baseline_rss_kib": baseline, "peak_rss_kib": peak,
        "growth_kib": peak - baseline, "step_s": steps, "step_cpu_s": cpu_steps,
        "combine_s": combines, "combine_cpu_s": cpu_combines,
        "synth_bytes": 0 if synth is None else synth.memory_bytes,
        "in_place": bool(synth is not None and synth.engine.in_place),
        "deepspeed_partition_bytes": partition,
    }  # fmt: skip
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        case = {"stage": stage, "variant": variant, "params": numel, "world": world,
                "gradient_bytes": numel * 4, "ranks": everyone}  # fmt: skip
        (args.out / f"case-{stage}-{variant.replace('/', '-')}.json").write_text(json.dumps(case))


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}  # fmt: skip
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines()
             if line.startswith("Model name")), None,
        )  # fmt: skip
    except OSError:
        pass
    import deepspeed
    import torch
    import transformers

    info.update(torch=torch.__version__, deepspeed=deepspeed.__version__,
                transformers=transformers.__version__)  # fmt: skip
    return info


def run_all(args: argparse.Namespace, argv: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    record = {
        "command": "python bench/deepspeed_step.py " + " ".join(argv), "commit": commit,
        "machine": machine(), "load_before": os.getloadavg(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "table", "case")},
        "cases": [],
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    for stage in args.stages:
        for variant in args.variants:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node", "2", __file__, *argv, "--case",
                       f"{stage}:{variant}"]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"case {stage}:{variant} failed:\n{done.stderr[-4000:]}")
            path = args.out / f"case-{stage}-{variant.replace('/', '-')}.json"
            record["cases"].append(json.loads(path.read_text()))
            path.unlink()
            print(f"ZeRO-{stage} {variant}: done", flush=True)
    record["load_after"] = os.getloadavg()
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (args.out / "deepspeed_step.json").write_text(json.dumps(record, indent=1))
    print(table(record))


def table(record: dict) -> str:
    """The markdown table of a run: per case, both ranks' numbers (rank 0 / rank 1)."""
    mib = 1 / 1024

    def both(case, field, scale=1.0, digits=0):
        return " / ".join(f"{r[field] * scale:.{digits}f}" for r in case["ranks"])

    def median(case, field, scale=1000.0):
        return " / ".join(f"{statistics.median(r[field]) * scale:.0f}" for r in case["ranks"])

    floors = {c["stage"]: c for c in record["cases"] if c["variant"] == "summed"}
    lines = [
        "| ZeRO | variant | step ms, wall | step ms, CPU | combine ms, CPU | peak RSS MiB | "
        "growth MiB | vs summed, MiB (partitions) | synthesizer buffers MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in record["cases"]:
        floor = floors.get(case["stage"])
        extra = ""
        if floor is not None and case is not floor:
            diffs = [
                (r["peak_rss_kib"] - f["peak_rss_kib"]) / 1024
                for r, f in zip(case["ranks"], floor["ranks"])
            ]
            parts = [
                d * 2**20 / r["deepspeed_partition_bytes"] for d, r in zip(diffs, case["ranks"])
            ]
            extra = " / ".join(f"{d:+.0f} ({p:+.2f})" for d, p in zip(diffs, parts))
        combine = median(case, "combine_cpu_s") if case["variant"] != "summed" else ""
        in_place = " (in place)" if case["ranks"][0]["in_place"] else ""
        lines.append(
            f"| {case['stage']} | {case['variant']}{in_place} | {median(case, 'step_s')} | "
            f"{median(case, 'step_cpu_s')} | {combine} | {both(case, 'peak_rss_kib', mib)} | "
            f"{both(case, 'growth_kib', mib)} | {extra} | "
            f"{both(case, 'synth_bytes', 1 / 2**20, 1)} |"
        )
    case = record["cases"][0]
    lines.append("")
    lines.append(
        f"{case['params']:,} parameters (one gradient {case['gradient_bytes'] / 2**20:.1f} MiB; "
        f"a rank's partition {case['ranks'][0]['deepspeed_partition_bytes'] / 2**20:.1f} MiB at "
        f"ZeRO-{case['stage']}); {case['world']} ranks; rank 0 / rank 1 in each cell."
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
    elif args.case is not None:
        run_case(args)
    elif args.out is None:
        sys.exit("Pass --out FOLDER (or --table JSON).")
    else:
        run_all(args, argv)


if __name__ == "__main__":
    main()
