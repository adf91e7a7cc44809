"""The fused combine on a synthetic model's gradients: every method, its statistics and cost.

    python bench/geometry_demo.py                 # CPU, reference backend, a scaled-down 7B layout
    python bench/geometry_demo.py --device cuda     # the Triton kernels
    python bench/geometry_demo.py --scale 1 --dtype bfloat16 --device cuda   # the full 7B layout

It builds the parameter shapes of a Llama-style model (scaled down by ``--scale``), fills the
retain and forget buffers with gradients that partly conflict (as an unlearning step's do), and
runs each method once, printing the paper's gradient geometry (Table 3) per method plus the
launches and bytes each call moves.
"""

from __future__ import annotations

import argparse
import time

import torch

from sago_kernels import METHODS, GradLayout, combine_, methods
from sago_kernels.dispatch import resolve_backend
from sago_kernels.model_shapes import llama_shapes


def synthetic_gradients(layout: GradLayout, dtype: torch.dtype, device: str, seed: int = 0):
    """Retain and forget gradients with a shared component (rho = -0.3: mostly conflicting)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    shared = torch.randn(layout.segment_numel, generator=g)
    own_r = torch.randn(layout.segment_numel, generator=g)
    own_f = torch.randn(layout.segment_numel, generator=g)
    retain, forget = layout.new_buffer(dtype, device), layout.new_buffer(dtype, device)
    cursor = 0
    for s, rv, fv in zip(
        layout.segments, layout.segment_views(retain), layout.segment_views(forget)
    ):
        sl = slice(cursor, cursor + s.numel)
        rv.copy_(own_r[sl] + 0.5 * shared[sl])
        fv.copy_(own_f[sl] - 0.8 * shared[sl])
        cursor += s.numel
    return retain, forget


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--scale", type=int, default=16, help="divide the 7B widths by this (1 = full)"
    )
    parser.add_argument(
        "--granularity", default="parameter", choices=["parameter", "module", "global"]
    )
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--backend", default=None, choices=["triton", "reference"])
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    named = [(name, torch.empty(shape, device="meta")) for name, shape in llama_shapes(args.scale)]
    layout = GradLayout.from_params(named, granularity=args.granularity)
    retain, forget = synthetic_gradients(layout, dtype, args.device)
    backend, _ = resolve_backend(args.backend, retain.device)
    n = layout.segment_numel
    print(
        f"layout: {layout.num_segments} segments, {n / 1e6:.1f}M elements ({args.dtype}, "
        f"{args.granularity}), device {args.device}, backend {backend}"
    )
    header = (
        f"{'method':<20}{'ms':>9}{'min GB':>10}{'cos(f,r)':>10}"
        f"{'cos(out,f)':>11}{'cos(out,r)':>11}{'conflict':>10}"
    )
    print(header)
    print("-" * len(header))
    for method in methods():
        m = METHODS[method]
        work = retain.clone()
        # GRU keeps a moving average of g_r: a zero one (its first step) for the warm-up and run
        state = torch.zeros_like(retain) if m.needs_state else None
        combine_(
            work, forget, layout=layout, method=method, alpha=args.alpha, gamma=args.gamma,
            stats=True, backend=args.backend, state=state,
        )  # fmt: skip  (warm-up: compile, cache tables)
        work.copy_(retain)
        if state is not None:
            state.zero_()
        if retain.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, stats = combine_(work, forget, layout=layout, method=method, alpha=args.alpha,
                            gamma=args.gamma, stats=True, backend=args.backend,
                            state=state)  # fmt: skip
        if retain.is_cuda:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - start) * 1e3
        passes = 8 if m.needs_state else 5 if m.is_projection else 3
        gb = passes * n * retain.element_size() / 1e9
        t = stats.to_dict()
        print(
            f"{method:<20}{ms:>9.2f}{gb:>10.3f}{t['cos_fr']:>10.3f}{t['cos_out_f']:>11.3f}"
            f"{t['cos_out_r']:>11.3f}{t['conflict_fraction']:>10.3f}"
        )
    print(
        "\nmin GB: the bytes a fused call must move (3N, 5N or, for GRU, 8N elements); "
        "cos(out,r) >= 0: the "
        "update does not work against the retain gradient (paper Table 3)."
    )


if __name__ == "__main__":
    main()
