"""Benchmark every combine method against every peer and the copy roofline, on one card.

    python bench/run.py                                  # CPU: scaled-down layouts, seconds
    python bench/run.py --device cuda --scale 1 --out bench_out     # the 7B layouts on a GPU
    python bench/run.py --layouts flat --flat 10000000 100000000 --peers native reference
                                                         # the native backend's CPU targets
    python bench/run.py --scale 8 --layouts llama7b --peers native native_stats
                                                         # its cost of the statistics (issue 30)

For each layout × method × dtype × peer (see peers.py): the median time over several calls that
rotate through distinct input buffers (so caches do not flatter), the effective bandwidth from
the minimal bytes (element-wise 3·N·itemsize, projection 5·N·itemsize), that bandwidth as a share
of a copy of the same bytes timed right after each call (the median of the per-call ratios, so
drifting bandwidth on a shared machine cancels out), the speed-up of the fused call over each peer,
kernel launches per call (CUDA, from the profiler) and the extra memory each peer allocates
beyond the two input buffers (CUDA: peak allocated; CPU: bytes allocated, from the profiler).
On a CPU, ``native_stats`` is the native call with ``stats=True``: its row's ``stats_cost`` is
its time relative to a copy over the plain native call's (what asking for the gradient geometry
costs). The JSON records the commit, the command, the CPU model and flags, the native build's
instruction set and the load average before and after.
Prints a table; writes ``results.json`` and ``bandwidth.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop chatter
# Peers that run out of memory beside 7B buffers leave the caching allocator fragmented; growable
# segments let the next peer use the space (seen on an H200: per-parameter peers then OOM'd too).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
import torch  # noqa: E402
from peers import (
    TORCHJD_METHODS,
    make_compiled,
    make_fused,
    make_paper,
    make_reference,
    make_torchjd,
)

import sago_kernels as sk
from sago_kernels.methods import METHODS
from sago_kernels.model_shapes import llama_shapes, many_tiny_shapes, mistral_shapes

LAYOUTS = {
    "llama7b": llama_shapes,
    "mistral7b": mistral_shapes,
    "many_tiny": lambda scale: many_tiny_shapes(4000 // max(1, scale // 4) if scale > 1 else 4000),
}


def make_native_stats(layout: sk.GradLayout, method: str):
    """The native combine asking for the gradient geometry (``stats=True``), as the synthesizer
    does every step unless ``stats=False``; a GRU method holds its own moving average."""
    states: dict[torch.dtype, torch.Tensor] = {}

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        extra = {}
        if METHODS[method].needs_state:
            if retain.dtype not in states:  # allocated once, outside every later call
                states[retain.dtype] = torch.zeros_like(retain)
            extra["state"] = states[retain.dtype]
        sk.combine_(retain, forget, layout=layout, method=method, backend="native", stats=True,
                    **extra)  # fmt: skip

    return run


def layout_for(name: str, scale: int) -> sk.GradLayout:
    if name.startswith("flat_"):  # one segment of N elements: --flat N
        return sk.GradLayout.from_sizes([int(name[5:])])
    shapes = LAYOUTS[name](scale)
    return sk.GradLayout.from_sizes(
        [torch.Size(s).numel() for _, s in shapes], names=[n for n, _ in shapes]
    )


def random_buffer(layout: sk.GradLayout, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """A gradient buffer of standard normal segments, drawn on ``g``'s device (a CPU generator
    would spend minutes on 7B-element buffers) one segment at a time (no N-element float32
    temporary beside two 7B float32 buffers)."""
    buf = layout.new_buffer(dtype, g.device)
    for v in layout.segment_views(buf):
        v.copy_(torch.randn(v.numel(), generator=g, device=g.device))
    return buf


def minimal_bytes(layout: sk.GradLayout, method: str, itemsize: int) -> int:
    passes = 8 if METHODS[method].needs_state else 5 if METHODS[method].is_projection else 3
    return passes * layout.segment_numel * itemsize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""CPU timings: wall time, or the process's CPU time (all its threads; with ``--threads 1`` the
call's own work, which other jobs on a shared machine do not stretch, while they do stretch the
wall time of a call whose threads wait for a core)."""


def _timed(fn, args, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = clock()
    fn(*args)
    return clock() - t


def median_seconds(
    fn, inputs, reps: int, device: torch.device, copy=None, clock=time.perf_counter
) -> tuple[float, float | None]:
    """Median of ``reps`` calls, rotating through ``inputs``; warm-up excluded. A peer slower
    than half a second a call gets 3 calls (its median is still far from the fused one's).

    With ``copy`` (a no-argument callable copying the same bytes, see :func:`same_bytes_copy`),
    each call is followed by one copy and the second value is the median of the per-call ratios
    time / copy time: on a shared machine whose bandwidth drifts between calls, a ratio of
    neighbours is what stays meaningful.
    """
    for r, f in inputs[:2]:
        t = _timed(fn, (r, f), device, clock)
        if copy is not None:
            copy()
    if t > 0.5:
        reps = min(reps, 3)
    times, ratios = [], []
    for i in range(reps):
        times.append(_timed(fn, inputs[i % len(inputs)], device, clock))
        if copy is not None:
            ratios.append(times[-1] / _timed(copy, (), device, clock))
    return statistics.median(times), (statistics.median(ratios) if ratios else None)


def copy_cap_elems(numel: int, dtype: torch.dtype, device: torch.device) -> int:
    """Elements per copy buffer: ``numel``, but on CUDA at most an eighth of the free memory
    each (beside two 7B-element float32 buffers an 80 GB card has no room for two more; a copy
    of a few GB already runs at the copy's full bandwidth)."""
    if device.type != "cuda":
        return numel
    return max(1, min(numel, torch.cuda.mem_get_info(device)[0] // 8 // dtype.itemsize))


def same_bytes_copy(nbytes: int, dtype: torch.dtype, device: torch.device):
    """A callable that copies ``nbytes`` in all (reads half, writes half). On CUDA the buffers
    are capped by :func:`copy_cap_elems`: the copy is then repeated, the last time partly,
    until ``nbytes`` have moved."""
    elems = max(1, nbytes // 2 // dtype.itemsize)
    size = copy_cap_elems(elems, dtype, device)
    src = torch.ones(size, dtype=dtype, device=device)
    dst = torch.empty_like(src).fill_(0)
    whole, rest = divmod(elems, size)

    def run() -> None:
        for _ in range(whole):
            dst.copy_(src)
        if rest:
            dst[:rest].copy_(src[:rest])

    return run


def copy_gbps(
    numel: int, dtype: torch.dtype, device: torch.device, reps: int, clock=time.perf_counter
) -> float:
    """Bandwidth of a plain device copy of the same element count (read N + write N; on CUDA
    of at most :func:`copy_cap_elems` elements, whose bandwidth is the same)."""
    src = torch.randn(copy_cap_elems(numel, dtype, device), device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda a, b: a.copy_(b), [(dst, src)], reps, device, clock=clock)[0]
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def launches_and_memory(
    fn, r: torch.Tensor, f: torch.Tensor, device: torch.device
) -> tuple[int | None, int]:
    """(kernel launches per call or None on CPU, extra bytes the call allocates)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(r, f)
            torch.cuda.synchronize()
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        return kernels, torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(r, f)
    allocated = sum(max(e.cpu_memory_usage, 0) for e in prof.events())
    return None, allocated


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))


def run(args: argparse.Namespace, out: Path | None = None) -> dict:
    """Every case; with ``out``, ``results.json`` is rewritten after each method (marked
    ``"complete": false`` until the end), so a run cut short by a time limit keeps its rows."""
    device = torch.device(args.device)
    dtypes = [getattr(torch, d) for d in args.dtypes]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    rows = []
    result = {"rows": rows, "environment": environment(device), "args": vars(args)}
    fused_backend = None if device.type == "cuda" else "triton"
    layout_names = [n for n in args.layouts if n != "flat"]
    if "flat" in args.layouts:
        layout_names += [f"flat_{n}" for n in args.flat]
    for layout_name in layout_names:
        layout = layout_for(layout_name, args.scale)
        for dtype in dtypes:
            g = torch.Generator(device=device).manual_seed(0)
            inputs = []
            pair_bytes = 2 * layout.numel * dtype.itemsize
            sets = args.sets
            if device.type == "cuda":  # keep half the card free for the peers' temporaries
                sets = max(1, min(sets, int(0.5 * torch.cuda.mem_get_info()[0] // pair_bytes)))
                if pair_bytes >= 2**30:  # far beyond any L2: rotating buffers changes nothing
                    sets = 1
            for _ in range(sets):
                inputs.append(tuple(random_buffer(layout, dtype, g) for _ in range(2)))
            roof = copy_gbps(layout.segment_numel, dtype, device, args.reps, clock)
            print(
                f"\n{layout_name} ({layout.num_segments} segments, "
                f"{layout.segment_numel / 1e6:.1f}M elements), "
                f"{str(dtype).replace('torch.', '')}, copy {roof:.1f} GB/s",
                flush=True,
            )
            for method in args.methods:
                peers = {}
                if (device.type == "cuda" or args.interpret) and "fused" in args.peers:
                    peers["fused"] = (make_fused(layout, method, fused_backend), 0.0)
                native_here = device.type == "cpu" and "native" in sk.backends()
                if native_here and "native" in args.peers:
                    peers["native"] = (make_fused(layout, method, "native"), 0.0)
                if native_here and "native_stats" in args.peers:
                    peers["native_stats"] = (make_native_stats(layout, method), 0.0)
                if "reference" in args.peers:
                    peers["reference"] = (make_reference(layout, method), 0.0)
                if "paper" in args.peers and not METHODS[method].weighting:
                    peers["paper"] = (make_paper(layout, method), 0.0)
                if "torchjd" in args.peers and method in TORCHJD_METHODS:
                    peers["torchjd"] = (make_torchjd(layout, method), 0.0)
                stateful = METHODS[method].needs_state
                if "compiled" in args.peers and not (METHODS[method].weighting or stateful):
                    peer = make_compiled(layout, method, device)
                    start = time.perf_counter()
                    try:
                        peer(inputs[0][0].clone(), inputs[0][1])
                        _sync(device)
                        peers["compiled"] = (peer, time.perf_counter() - start)
                    except Exception as exc:  # report, do not hide, a compile that fails here
                        print(f"  compiled peer failed: {type(exc).__name__}: {exc}"[:200])
                times = {}
                nbytes = minimal_bytes(layout, method, dtype.itemsize)
                copy = same_bytes_copy(nbytes, dtype, device)
                for name, (fn, compile_s) in list(peers.items()):
                    try:
                        seconds, copy_ratio = median_seconds(
                            fn, inputs, args.reps, device, copy, clock
                        )
                        launches, extra = launches_and_memory(fn, *inputs[0], device)
                    except torch.OutOfMemoryError:
                        seconds = None
                    if seconds is None:  # out of the except block: its traceback is gone
                        print(
                            f"  {method:<19}{name:<10} out of memory (its temporaries do not fit)"
                        )
                        rows.append({"layout": layout_name,
                                     "dtype": str(dtype).replace("torch.", ""),
                                     "method": method, "peer": name, "oom": True})  # fmt: skip
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    gbps = nbytes / seconds / 1e9
                    times[name] = seconds
                    rows.append({
                        "layout": layout_name, "segments": layout.num_segments,
                        "numel": layout.segment_numel,
                        "dtype": str(dtype).replace("torch.", ""), "method": method, "peer": name,
                        "ms": seconds * 1e3, "gbps": gbps, "roofline_share": 1 / copy_ratio,
                        "copy_time_ratio": copy_ratio, "copy_gbps": roof,
                        "launches": launches, "extra_bytes": extra,
                        "compile_s": round(compile_s, 2) or None,
                    })  # fmt: skip
                    if name.startswith("native"):
                        rows[-1]["isa"] = native_isa()
                mine = (
                    {r["peer"]: r for r in rows[-len(peers) :] if not r.get("oom")} if peers else {}
                )
                plain, with_stats = mine.get("native"), mine.get("native_stats")
                if plain and with_stats:
                    with_stats["stats_cost"] = (
                        with_stats["copy_time_ratio"] / plain["copy_time_ratio"]
                    )
                lead = next((p for p in ("fused", "native") if p in times), next(iter(times), None))
                done = [r for r in rows[-len(peers) :] if not r.get("oom")] if lead else []
                for row in done:
                    row["speedup_of_" + lead] = row["ms"] / (times[lead] * 1e3)
                    print(
                        f"  {method:<19}{row['peer']:<10}{row['ms']:>10.3f} ms"
                        f"{row['gbps']:>9.1f} GB/s"
                        f"{100 * row['roofline_share']:>6.0f}% of copy"
                        f" (x{row['copy_time_ratio']:>5.2f} its time)"
                        f"  {lead} speed-up x{row['speedup_of_' + lead]:>7.2f}"
                        f"  launches {row['launches'] if row['launches'] is not None else '-':>4}"
                        f"  extra {row['extra_bytes'] / 1e6:>9.2f} MB",
                        flush=True,
                    )
                if out is not None:  # a time limit can cut a slow peer's compile short
                    save({**result, "complete": False}, out)
    result["environment"]["load_after"] = list(os.getloadavg())
    return {**result, "complete": True}


def native_isa() -> str | None:
    """The instruction set the native combine runs with (``SAGO_NATIVE_ISA`` caps it)."""
    from sago_kernels import native

    return native.isa() if native.available() else None


def _cpu() -> dict:
    """The CPU's model and the flags that decide the native build's speed (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")
    return {"cpu_model": fields.get("model name"), "cpu_flags": [f for f in wanted if f in flags]}


def _commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        command = ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return done.stdout.strip() or None


def environment(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "commit": _commit(), "command": [Path(sys.executable).name, *sys.argv],
        "cpu_count": os.cpu_count(), "load_before": list(os.getloadavg()),
        **_cpu(),
    }  # fmt: skip
    if device.type == "cpu":
        info["native_isa"] = native_isa()
        info["SAGO_NATIVE_ISA"] = os.environ.get("SAGO_NATIVE_ISA")
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in result["rows"] if not r.get("oom")]
    keys = sorted({(r["layout"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, (layout, dtype) in zip(axes[0], keys):
        sub = [r for r in rows if r["layout"] == layout and r["dtype"] == dtype]
        methods = list(dict.fromkeys(r["method"] for r in sub))
        peers = list(dict.fromkeys(r["peer"] for r in sub))
        width = 0.8 / len(peers)
        for i, peer in enumerate(peers):
            vals = [
                next((r["gbps"] for r in sub if r["method"] == m and r["peer"] == peer), 0)
                for m in methods
            ]
            ax.bar([x + i * width for x in range(len(methods))], vals, width, label=peer)
        ax.axhline(sub[0]["copy_gbps"], color="k", ls="--", lw=1, label="copy")
        ax.set_xticks(
            [x + 0.4 - width / 2 for x in range(len(methods))], methods, rotation=30, fontsize=8
        )
        ax.set_title(f"{layout} {dtype}", fontsize=9)
        ax.set_ylabel("effective GB/s (minimal bytes)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--scale", type=int, default=1 if cuda else 16, help="divide model widths by this"
    )
    p.add_argument(
        "--layouts",
        nargs="+",
        default=list(LAYOUTS),
        choices=[*LAYOUTS, "flat"],
        help="model layouts; 'flat' adds one single-segment layout per --flat size",
    )
    p.add_argument("--flat", nargs="+", type=int, default=[10**7], help="elements of 'flat'")
    p.add_argument("--methods", nargs="+", default=sk.methods(), choices=sk.methods())
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
    )
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--clock",
        default="wall",
        choices=list(CLOCKS),
        help="CPU timings: wall time or the process's CPU time (see CLOCKS)",
    )
    p.add_argument("--sets", type=int, default=3, help="distinct input buffers to rotate through")
    p.add_argument(
        "--peers",
        nargs="+",
        default=["fused", "native", "native_stats", "reference", "paper", "compiled"],
        choices=["fused", "native", "native_stats", "reference", "paper", "compiled", "torchjd"],
    )
    p.add_argument(
        "--interpret",
        action="store_true",
        help="include the fused kernels on CPU (Triton interpreter: slow)",
    )
    p.add_argument("--out", default="bench_out")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    result = run(args, out)
    save(result, out)
    plot(result, out / "bandwidth.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'bandwidth.png'}")
    return result


if __name__ == "__main__":
    main()
