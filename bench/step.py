"""One whole Algorithm 1 step on a random Llama-style model: the synthesizer against its peers.

    python bench/step.py --device cuda --out step_out     # ~1B parameters, bf16 (the GPU check)
    python bench/step.py                                  # CPU: a tiny model, a smoke test

A step is: forget loss backward, retain loss backward, combine, AdamW (fused on CUDA). Three
ways to take it:

- ``synthesizer``: ``GradientSynthesizer`` (the calls of ``unlearning_step``, inlined to time the
  combine); autograd writes both gradients into two flat buffers and the fused combine turns the
  retain one into g_final in place.
- ``paper``: what the paper's public code does: each task's gradients cloned per parameter,
  then an eager per-parameter combine (boolean masks for SAGO, a ``.item()`` branch for PCGrad;
  ``peers.py``) assigned to ``.grad``.
- ``summed``: one backward of forget + retain loss (no two-task combine at all): the floor.

Each runs without and with gradient checkpointing (``--checkpointing``). Which peak is lower
depends on activations against gradients: the paper-style step's extra gradient copy (g_r cloned
after the second backward) only raises its peak when it outweighs the activations that backward
freed, as with checkpointing or small batches.

For each: the median step time over ``--steps`` timed steps after ``--warmup`` (CUDA events around
each step), the peak memory of the timed steps (``torch.cuda.max_memory_allocated``; weights,
AdamW state and activations included) and, for the synthesizer, the median time of its combine
alone and its share of the step. Every variant starts from the same weights (kept on the CPU, so
they are not in the peaks) and sees the same batches. Writes ``step.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
from peers import _paper_style_one

import sago_kernels as sk
from sago_kernels.unlearning.losses import run_loss

# ~1.0B parameters: 16 layers of width 2048 (MLP 5632), a 32000-token vocabulary, untied head
SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=16, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=512),
}  # fmt: skip


def build_model(size: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` from a config (nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **SIZES[size], max_position_embeddings=4096, tie_word_embeddings=False, use_cache=False
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(dtype).train()


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Gradient checkpointing on or off, by the name this transformers version uses."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def make_batches(vocab: int, batch: int, seq: int, device: torch.device, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


class Timer:
    """Wall time of a region: CUDA events on a GPU, ``perf_counter`` on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.seconds = time.perf_counter() - self.t0

    def result(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.seconds


def synthesizer_step(method: str, forget_loss: str):
    def setup(model):
        return sk.GradientSynthesizer(model, method=method, stats=False)

    def step(model, synth, opt, fb, rb, timers):
        with synth.forget():
            run_loss(forget_loss, model, fb).backward()
        with synth.retain():
            run_loss("nll", model, rb, forget=False).backward()
        with timers.new() as t:
            synth.combine_()
        timers.combine.append(t)
        opt.step()
        opt.zero_grad()

    return setup, step


def paper_step(method: str, forget_loss: str):
    def setup(model):
        return None

    def step(model, _, opt, fb, rb, timers):
        params = [p for p in model.parameters() if p.requires_grad]
        run_loss(forget_loss, model, fb).backward()
        g_f = [p.grad.clone() for p in params]  # the public code clones each task's gradients
        opt.zero_grad()
        run_loss("nll", model, rb, forget=False).backward()
        g_r = [p.grad.clone() for p in params]
        with timers.new() as t:
            for p, r, f in zip(params, g_r, g_f):
                p.grad = _paper_style_one(r, f, method, 1.0, 1.0, 1e-10)
        timers.combine.append(t)
        del g_f, g_r
        opt.step()
        opt.zero_grad()

    return setup, step


def summed_step(forget_loss: str):
    def setup(model):
        return None

    def step(model, _, opt, fb, rb, timers):
        loss = run_loss(forget_loss, model, fb) + run_loss("nll", model, rb, forget=False)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return setup, step


class Timers:
    def __init__(self, device: torch.device) -> None:
        self.device, self.combine = device, []

    def new(self) -> Timer:
        return Timer(self.device)


def measure(name, setup, step, model, init_state, batches, args, device) -> dict:
    """Reset the weights, build the variant and a fresh AdamW, warm up, time ``args.steps``
    (peak memory over the timed steps: weights, AdamW state, gradients and activations)."""
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), init_state):
            p.copy_(p0)
            p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state = setup(model)
    # fused on CUDA, as transformers' Trainer defaults to: the foreach one allocates a
    # gradient-sized temporary (the sqrt of exp_avg_sq) in every step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    timers = Timers(device)
    step_times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            timers.combine.clear()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
        fb, rb = batches[(2 * i) % len(batches)], batches[(2 * i + 1) % len(batches)]
        with Timer(device) as t:
            step(model, state, opt, fb, rb, timers)
        step_times.append(t)
    seconds = [t.result() for t in step_times[args.warmup :]]
    combine = [t.result() for t in timers.combine]
    row = {
        "variant": name,
        "step_ms": statistics.median(seconds) * 1e3,
        "step_ms_min": min(seconds) * 1e3,
        "step_ms_max": max(seconds) * 1e3,
        "combine_ms": statistics.median(combine) * 1e3 if combine else None,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    row["combine_share"] = row["combine_ms"] / row["step_ms"] if combine else None
    del state, opt
    return row


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.size, dtype, device)
    n_params = sum(p.numel() for p in model.parameters())
    init_state = [p.detach().cpu() for p in model.parameters()]
    batches = make_batches(model.config.vocab_size, args.batch, args.seq, device, 4)
    variants = [("summed", *summed_step(args.forget_loss))]
    for method in args.methods:
        variants.append((f"synthesizer/{method}", *synthesizer_step(method, args.forget_loss)))
        variants.append((f"paper/{method}", *paper_step(method, args.forget_loss)))
    print(
        f"Algorithm 1 step: Llama-style {n_params / 1e9:.2f}B parameters, {args.dtype}, "
        f"batch {args.batch}x{args.seq} tokens per task, forget loss {args.forget_loss}, "
        f"AdamW; median of {args.steps} steps after {args.warmup} warm-up",
        flush=True,
    )
    grad_gib = n_params * dtype.itemsize / 2**30
    print(f"(one gradient: {grad_gib:.2f} GiB)")
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "params": n_params, "grad_gib": grad_gib, "args": vars(args)}
    for checkpointing, (name, setup, step) in itertools.product(args.checkpointing, variants):
        set_checkpointing(model, checkpointing == "on")
        row = measure(name, setup, step, model, init_state, batches, args, device)
        row["checkpointing"] = checkpointing == "on"
        rows.append(row)
        name = name + (" (checkpointing)" if checkpointing == "on" else "")
        combine = (
            f"combine {row['combine_ms']:8.2f} ms ({100 * row['combine_share']:5.1f}% of step)"
            if row["combine_ms"] is not None
            else " " * 35
        )
        peak = f"peak {row['peak_gib']:6.2f} GiB" if row["peak_gib"] is not None else ""
        print(f"  {name:<44}step {row['step_ms']:9.2f} ms  {combine}  {peak}", flush=True)
        (out / "step.json").write_text(json.dumps(result, indent=1))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--size", default="1b" if cuda else "tiny", choices=list(SIZES))
    p.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    p.add_argument("--batch", type=int, default=4 if cuda else 2)
    p.add_argument("--seq", type=int, default=512 if cuda else 32)
    p.add_argument("--methods", nargs="+", default=["sago", "pcgrad"], choices=sk.methods())
    p.add_argument("--forget-loss", default="simnpo", choices=["ga", "simnpo"])
    p.add_argument(
        "--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"],
        help="gradient checkpointing settings to run each variant under",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="bench_out")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
