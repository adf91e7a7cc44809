"""Sweep the Triton launch settings on one layout: the data to choose ``LaunchConfig``'s defaults.

    python bench/tune.py --device cuda                       # 7B Llama, bf16, sago and pcgrad
    python bench/tune.py --device cuda --blocks 4096 --warps 4 8 16 --chunks 4096 16384 65536

The defaults are a fixed table, not autotuned (autotuning an in-place kernel re-runs it on live
gradients), so they are chosen offline from this sweep: for every combination of tile size,
warps per program and chunk count it times the fused combine (``launch_config``) against a copy
of the same bytes, as ``run.py`` does, and prints the share of the copy's bandwidth. Each row is
printed as it is measured and ``tune.json`` is rewritten after it, so a run cut short keeps what
it measured. On a CPU it runs the interpreter: only a smoke test there.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from run import layout_for, median_seconds, minimal_bytes, random_buffer, same_bytes_copy

import sago_kernels as sk
from sago_kernels.kernels import LaunchConfig, launch_config


def sweep(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    layout = layout_for(args.layout, args.scale)
    rows: list[dict] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        g = torch.Generator(device=device).manual_seed(0)
        retain, forget = random_buffer(layout, dtype, g), random_buffer(layout, dtype, g)
        # the combine rewrites retain each call; timing it on its own output is what a
        # training loop does too (values stay finite: every method is a bounded mix of f and r)
        inputs = [(retain, forget)]
        size = f"{layout.segment_numel / 1e6:.1f}M elements, {layout.num_segments} segments"
        print(f"\n{args.layout} at 1/{args.scale} ({size}), {dtype_name}", flush=True)
        for method in args.methods:
            nbytes = minimal_bytes(layout, method, dtype.itemsize)
            copy = same_bytes_copy(nbytes, dtype, device)
            for block, warps, chunks in itertools.product(args.blocks, args.warps, args.chunks):
                per_thread = block // (32 * warps)
                if not args.per_thread[0] <= per_thread <= args.per_thread[1]:
                    continue  # too few elements a thread to vectorise, or too many registers
                config = LaunchConfig(block=block, num_warps=warps, target_chunks=chunks)

                def call(r: torch.Tensor, f: torch.Tensor) -> None:
                    sk.combine_(r, f, layout=layout, method=method, backend="triton")

                with launch_config(config):
                    seconds, ratio = median_seconds(call, inputs, args.reps, device, copy)
                rows.append({
                    "layout": args.layout, "scale": args.scale, "dtype": dtype_name,
                    "method": method, "block": block, "num_warps": warps,
                    "target_chunks": chunks, "ms": seconds * 1e3,
                    "gbps": nbytes / seconds / 1e9, "copy_share": 1 / ratio,
                })  # fmt: skip
                setting = f"block {block:>5}  warps {warps:>2}  chunks {chunks:>6}"
                share = f"{seconds * 1e3:>10.3f} ms {100 / ratio:>6.1f}% of copy"
                print(f"  {method:<19} {setting}{share}", flush=True)
                (out / "tune.json").write_text(json.dumps(rows, indent=1))
        del retain, forget
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--layout", default="llama7b", choices=["llama7b", "mistral7b", "many_tiny"])
    p.add_argument("--scale", type=int, default=1 if cuda else 256)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    p.add_argument("--methods", nargs="+", default=["sago", "pcgrad"], choices=sk.methods())
    p.add_argument("--blocks", nargs="+", type=int, default=[2048, 4096, 8192])
    p.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    p.add_argument("--chunks", nargs="+", type=int, default=[4096, 16384])
    p.add_argument(
        "--per-thread", nargs=2, type=int, default=[4, 32], metavar=("MIN", "MAX"),
        help="skip settings outside this range of tile elements per thread",
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="bench_out")
    return p.parse_args(argv)


if __name__ == "__main__":
    sweep(parse_args())
