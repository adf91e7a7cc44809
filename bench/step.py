"""One whole Algorithm 1 step on a random Llama-style model: the synthesizer against its peers.

    python bench/step.py --device cuda --out step_out     # ~1B parameters, bf16 (the GPU check)
    python bench/step.py                                  # CPU: ~100M parameters, float32
    python bench/step.py --size tiny --steps 2            # CPU: a smoke test, seconds
    python bench/step.py --suite reference --methods sago # NPO's reference forms (issue 29)
    python bench/step.py --report OUT/step.json           # saved runs as markdown tables

A step is: forget loss backward, retain loss backward, combine, AdamW (fused). Four ways to
take it (``--variants``), for each of ``--methods``:

- ``summed``: one backward of forget + retain loss (no two-task combine at all): the floor.
- ``synthesizer/<method>``: ``GradientSynthesizer`` in its default two-buffer mode (the calls of
  ``unlearning_step``, inlined to time the combine); autograd writes both gradients into two flat
  buffers and the fused combine turns the retain one into g_final in place.
- ``one_buffer/<method>``: the same with ``buffers=1``: g_f in the one flat buffer, each
  parameter combined by a post-accumulate-grad hook as soon as its g_r exists (the transient g_r
  then freed); ``combine_()`` finishes the rest.
- ``paper/<method>``: what the paper's public code does: each task's gradients cloned per
  parameter, then an eager per-parameter combine (boolean masks for SAGO, a ``.item()`` branch
  for PCGrad; ``peers.py``) assigned to ``.grad``.

Each runs under each ``--checkpointing`` setting (a GPU: without and with; a CPU: without).
Which peak is lower depends on activations against gradients: the paper-style step's extra
gradient copy (g_r cloned after the second backward) only raises its peak when it outweighs the
activations that backward freed, as with checkpointing or small batches.

Time: the median step time over ``--steps`` timed steps after ``--warmup`` (CUDA events around
each step on a GPU, ``perf_counter`` on a CPU), and the median per-step time of the combine alone
with its share of the step: ``combine_()`` for two buffers; for one buffer the hooks' calls of
``synth._combine_slot`` (wrapped on the instance) plus ``combine_()``; the eager loop for the
paper style. On a CPU the same regions are also timed in process CPU time (``process_time``:
with one torch thread, the time this process ran, which other jobs on a shared machine do not
stretch; with more threads, their sum), reported beside the wall times; the targets are judged
on the wall times.

Memory, on a GPU: the peak of the timed steps (``torch.cuda.max_memory_allocated``; weights,
AdamW state, gradients and activations), all variants in this process; every variant starts from
the same weights (kept on the CPU, so they are not in the peaks) and sees the same batches.

Memory, on a CPU: each case runs in a fresh subprocess (``step.py --case NAME``) that builds the
model (seeded: the same weights in every case) and the same batches, records its resident set
then (the baseline), takes the warm-up and timed steps, and reports the process's peak resident
set (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux) and the growth over the baseline. The
subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536``, so glibc serves every block of 64 KiB or
more with its own mmap and returns it to the OS when freed: the resident set then follows the
live tensors, and fragmentation of the heap does not inflate the peaks (it also makes large
allocations fault in fresh pages, in every variant alike). Linux only.

``--suite reference`` (issue 29) runs NPO + SAGO in one-buffer mode with each form of NPO's
reference (``npo_copy``: a frozen full copy run forward every step; ``npo_cache``: a
``CachedReference``, log p_ref(x) per example computed once in setup), and under LoRA
(``lora_npo_copy``, ``lora_npo_off``: the base with the adapters off), against plain
fine-tuning (``finetune``, ``lora_finetune``: one task, one backward, the same model, batches
and optimizer), and judges peak ≤ 1.05 × the floor for the forms that hold no second model.

Each case is also given against the ``summed`` floor in units of one gradient (N · itemsize),
and the targets of issue 15 are judged from the numbers: one-buffer peak ≤ floor + 0.1 gradient,
two-buffer peak ≤ floor + 1.1 gradients, combine ≤ 2% of the step in both modes, one-buffer
step time ≤ 1.05 × two-buffer. Writes ``step.json`` to ``--out`` (rewritten after each case).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from peers import _paper_style_one

import sago_kernels as sk
from sago_kernels.dispatch import resolve_backend
from sago_kernels.unlearning.losses import run_loss

SIZES = {
    # ~1.0B parameters: 16 layers of width 2048 (MLP 5632), a 32000-token vocabulary, untied head
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
               num_attention_heads=16, num_key_value_heads=16, vocab_size=32000),
    # 100,449,920 parameters: 12 layers of width 640 (MLP 1728, 10 heads of 64), the same
    # vocabulary, untied head (the two 20.5M-element embedding tables are 41% of the model)
    "100m": dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=12,
                 num_attention_heads=10, num_key_value_heads=10, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=512),
}  # fmt: skip
KINDS = ("summed", "synthesizer", "one_buffer", "paper")
REFERENCE_KINDS = (
    "finetune", "npo_copy", "npo_cache", "lora_finetune", "lora_npo_copy", "lora_npo_off",
)  # fmt: skip
"""``--suite reference`` (issue 29): NPO + SAGO in one-buffer mode with each form of reference,
against plain fine-tuning (one task, one backward) on the same model, batches and optimizer;
and the same under LoRA against LoRA fine-tuning."""
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                            "down_proj"])  # fmt: skip
# the child's allocator setting (see the module docstring)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


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
    """``n`` batches; ``index`` numbers every example (a cached reference reads it)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for k in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
        index = torch.arange(k * batch, (k + 1) * batch, device=device)
        out.append({"input_ids": ids, "labels": ids.clone(), "index": index})
    return out


class Timer:
    """Wall time of a region: CUDA events on a GPU, ``perf_counter`` on a CPU (and there the
    process's CPU time, ``cpu_seconds``)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> Timer:
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.cpu_seconds = time.process_time() - self.c0
            self.seconds = time.perf_counter() - self.t0

    def result(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        return self.seconds


class Timers:
    """The combine's timed regions, grouped by step: one a step for two buffers and the paper
    style, one per hook call plus ``combine_()`` for one buffer."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.steps = device, []

    def begin_step(self) -> None:
        self.steps.append([])

    def new(self) -> Timer:
        t = Timer(self.device)
        self.steps[-1].append(t)
        return t

    def per_step(self, cpu: bool = False) -> list[float] | None:
        """Seconds of combine in each step (``cpu``: process CPU seconds, CPU runs only); None
        for a variant that never combines."""
        if not any(self.steps):
            return None
        if cpu:
            return [sum(t.cpu_seconds for t in regions) for regions in self.steps]
        return [sum(t.result() for t in regions) for regions in self.steps]


# A variant is (setup, step): setup(model, timers, batches) -> state, once per variant;
# step(model, state, opt, forget_batch, retain_batch, timers), once per step.
Variant = tuple[Callable, Callable]


def synthesizer_step(method: str, forget_loss: str) -> Variant:
    def setup(model, timers, batches):
        return sk.GradientSynthesizer(model, method=method, stats=False)

    def step(model, synth, opt, fb, rb, timers):
        with synth.forget():
            run_loss(forget_loss, model, fb).backward()
        with synth.retain():
            run_loss("nll", model, rb, forget=False).backward()
        with timers.new():
            synth.combine_()
        opt.step()
        opt.zero_grad()

    return setup, step


def one_buffer_step(method: str, forget_loss: str) -> Variant:
    def setup(model, timers, batches):
        synth = sk.GradientSynthesizer(model, method=method, stats=False, buffers=1)
        state = SimpleNamespace(synth=synth, finishing=False)
        combine_slot = synth._combine_slot  # the per-parameter combine the hooks call

        def timed_combine_slot(*args, **kwargs):
            if state.finishing:  # a leftover combined by combine_(), whose time counts it
                return combine_slot(*args, **kwargs)
            with timers.new():
                return combine_slot(*args, **kwargs)

        synth._combine_slot = timed_combine_slot
        return state

    def step(model, state, opt, fb, rb, timers):
        synth = state.synth
        with synth.forget():
            run_loss(forget_loss, model, fb).backward()
        with synth.retain():  # the hooks combine each parameter as its g_r arrives
            run_loss("nll", model, rb, forget=False).backward()
        state.finishing = True
        try:
            with timers.new():
                synth.combine_()
        finally:
            state.finishing = False
        opt.step()
        opt.zero_grad()

    return setup, step


def paper_step(method: str, forget_loss: str) -> Variant:
    def setup(model, timers, batches):
        return None

    def step(model, _, opt, fb, rb, timers):
        params = [p for p in model.parameters() if p.requires_grad]
        run_loss(forget_loss, model, fb).backward()
        g_f = [p.grad.clone() for p in params]  # the public code clones each task's gradients
        opt.zero_grad()
        run_loss("nll", model, rb, forget=False).backward()
        g_r = [p.grad.clone() for p in params]
        with timers.new():
            for p, r, f in zip(params, g_r, g_f):
                p.grad = _paper_style_one(r, f, method, 1.0, 1.0, 1e-10)
        del g_f, g_r
        opt.step()
        opt.zero_grad()

    return setup, step


def summed_step(forget_loss: str) -> Variant:
    def setup(model, timers, batches):
        return None

    def step(model, _, opt, fb, rb, timers):
        loss = run_loss(forget_loss, model, fb) + run_loss("nll", model, rb, forget=False)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return setup, step


def finetune_step(lora: bool) -> Variant:
    """Plain fine-tuning, the floor of issue 29: one task (the retain NLL), one backward."""

    def setup(model, timers, batches):
        if lora:
            _wrap_lora(model)

    def step(model, _, opt, fb, rb, timers):
        run_loss("nll", model, rb, forget=False).backward()
        opt.step()
        opt.zero_grad()

    return setup, step


def _wrap_lora(model: torch.nn.Module):
    """peft's LoRA on every linear map of the blocks (the base frozen), in place; returns the
    ``PeftModel`` (the base model's forward runs the adapters, which peft injected)."""
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(**LORA))


def npo_reference_step(method: str, reference: str, lora: bool) -> Variant:
    """NPO + ``method`` in one-buffer mode, the reference held as ``reference``: ``"copy"``, a
    frozen full copy run forward every step (what the Trainer took until issue 29); ``"cache"``,
    NPO's log p_ref(x) per forget example, computed once in setup; ``"off"``, the LoRA base
    with the adapters switched off."""
    from sago_kernels.unlearning.references import AdaptersOff, CachedReference

    def setup(model, timers, batches):
        import copy

        ref = copy.deepcopy(model).eval().requires_grad_(False) if reference == "copy" else None
        peft_model = _wrap_lora(model) if lora else None
        if reference == "cache":
            size = sum(b["index"].numel() for b in batches)
            ref = CachedReference.compute(model, batches, size=size)
        elif reference == "off":
            ref = AdaptersOff(peft_model)
        synth = sk.GradientSynthesizer(model, method=method, stats=False, buffers=1)
        return SimpleNamespace(synth=synth, ref=ref)

    def step(model, state, opt, fb, rb, timers):
        synth = state.synth
        with synth.forget():
            run_loss("npo", model, fb, ref_model=state.ref).backward()
        with synth.retain():
            run_loss("nll", model, rb, forget=False).backward()
        with timers.new():
            synth.combine_()
        opt.step()
        opt.zero_grad()

    return setup, step


def variants(
    methods: list[str], forget_loss: str, kinds=KINDS, suite: str = "combine"
) -> dict[str, Variant]:
    """Every case by name, in the order they run: the floor first, then per method."""
    if suite == "reference":
        out: dict[str, Variant] = {}
        for lora in (False, True):
            tag = "lora_" if lora else ""
            if f"{tag}finetune" in kinds:
                out[f"{tag}finetune"] = finetune_step(lora)
            for method in methods:
                for reference in ("copy", "off") if lora else ("copy", "cache"):
                    kind = f"{tag}npo_{reference}"
                    if kind in kinds:
                        out[f"{kind}/{method}"] = npo_reference_step(method, reference, lora)
        return out
    out = {"summed": summed_step(forget_loss)} if "summed" in kinds else {}
    makers = {"synthesizer": synthesizer_step, "one_buffer": one_buffer_step, "paper": paper_step}
    for method in methods:
        for kind in KINDS[1:]:
            if kind in kinds:
                out[f"{kind}/{method}"] = makers[kind](method, forget_loss)
    return out


def measure(name, setup, step, model, init_state, batches, args, device) -> dict:
    """Reset the weights to ``init_state`` (unless None: a fresh model), build the variant and a
    fresh AdamW, warm up, time ``args.steps`` (on CUDA, the peak memory over the timed steps:
    weights, AdamW state, gradients and activations)."""
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), init_state or []):
            p.copy_(p0)
    for p in model.parameters():
        p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timers = Timers(device)
    state = setup(model, timers, batches)
    # fused, as transformers' Trainer defaults to on CUDA: the foreach AdamW allocates a
    # gradient-sized temporary (the sqrt of exp_avg_sq) in every step, and on a CPU the
    # for-loop one a parameter-sized one per parameter
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    step_times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            timers.steps.clear()
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
        timers.begin_step()
        fb, rb = batches[(2 * i) % len(batches)], batches[(2 * i + 1) % len(batches)]
        with Timer(device) as t:
            step(model, state, opt, fb, rb, timers)
        step_times.append(t)
    seconds = [t.result() for t in step_times[args.warmup :]]
    combine = timers.per_step()
    row = {
        "variant": name,
        "step_ms": statistics.median(seconds) * 1e3,
        "step_ms_min": min(seconds) * 1e3,
        "step_ms_max": max(seconds) * 1e3,
        "combine_ms": statistics.median(combine) * 1e3 if combine else None,
        "peak_gib": None,
    }
    row["combine_share"] = row["combine_ms"] / row["step_ms"] if combine else None
    if device.type == "cpu":
        cpu = [t.cpu_seconds for t in step_times[args.warmup :]]
        combine_cpu = timers.per_step(cpu=True)
        row["step_cpu_ms"] = statistics.median(cpu) * 1e3
        row["combine_cpu_ms"] = statistics.median(combine_cpu) * 1e3 if combine else None
        row["combine_cpu_share"] = row["combine_cpu_ms"] / row["step_cpu_ms"] if combine else None
    if device.type == "cuda":
        row["peak_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_gib"] = row["peak_bytes"] / 2**30
    del state, opt
    return row


# ---------------------------------------------------------------- CPU: a subprocess per case
def rss_bytes() -> int:
    """The resident set now (Linux: ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(args: argparse.Namespace) -> dict:
    """In the child: one case on a fresh model, its time and its process's memory."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.size, getattr(torch, args.dtype), device)
    set_checkpointing(model, args.checkpointing == ["on"])
    batches = make_batches(model.config.vocab_size, args.batch, args.seq, device, 4)
    (setup, step) = variants(args.methods, args.forget_loss, args.variants, args.suite)[args.case]
    gc.collect()
    baseline, peak_before = rss_bytes(), peak_rss_bytes()
    row = measure(args.case, setup, step, model, None, batches, args, device)
    peak = peak_rss_bytes()
    row.update(
        peak_bytes=peak,
        peak_rss_mib=peak / 2**20,
        baseline_rss_mib=baseline / 2**20,
        growth_mib=(peak - baseline) / 2**20,
        # the peak before the first step (building the model): were it the overall peak, the
        # step's own peak would be hidden; it is reported so that can be seen
        peak_before_steps_mib=peak_before / 2**20,
        threads=torch.get_num_threads(),
        pid=os.getpid(),
    )
    return row


def child_argv(args: argparse.Namespace, case: str, checkpointing: str, out: str) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--case", case, "--case-json", out,
        "--device", args.device, "--size", args.size, "--dtype", args.dtype,
        "--batch", str(args.batch), "--seq", str(args.seq), "--methods", *args.methods,
        "--forget-loss", args.forget_loss, "--checkpointing", checkpointing,
        "--suite", args.suite, "--variants", *args.variants,
        "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
    ]  # fmt: skip


def run_in_subprocess(args: argparse.Namespace, case: str, checkpointing: str) -> dict:
    env = {**os.environ, **CHILD_ENV, "OMP_NUM_THREADS": str(args.threads)}
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        done = subprocess.run(child_argv(args, case, checkpointing, str(out)), env=env)
        if done.returncode != 0 or not out.exists():
            return {"variant": case, "error": f"the case's process exited with {done.returncode}"}
        return json.loads(out.read_text())


# ---------------------------------------------------------------- against the floor; targets
def add_floor_differences(rows: list[dict], grad_bytes: int) -> None:
    """Each row's peak (and on a CPU its growth) minus the summed-loss floor's of the same
    checkpointing setting, in units of one gradient (N · itemsize)."""
    for row in rows:
        floor = _find(rows, "summed", row["checkpointing"])
        if floor is None or "peak_bytes" not in row or "peak_bytes" not in floor:
            continue
        row["peak_minus_floor_grads"] = (row["peak_bytes"] - floor["peak_bytes"]) / grad_bytes
        if "growth_mib" in row:
            growth = (row["growth_mib"] - floor["growth_mib"]) * 2**20
            row["growth_minus_floor_grads"] = growth / grad_bytes


def _find(rows: list[dict], variant: str, checkpointing: bool) -> dict | None:
    for r in rows:
        if r["variant"] == variant and r["checkpointing"] == checkpointing and "error" not in r:
            return r
    return None


def reference_targets(rows: list[dict], methods: list[str]) -> list[dict]:
    """Issue 29's targets: NPO + ``method`` in one-buffer mode with the cached reference at
    ≤ 1.05× plain fine-tuning's peak memory, and with the adapter-off base under LoRA at ≤ 1.05×
    LoRA fine-tuning's; every reference form's peak and step time against its floor beside."""
    out = []
    for ckpt in sorted({r["checkpointing"] for r in rows}):
        tag = " (checkpointing)" if ckpt else ""
        for lora in ("", "lora_"):
            floor = _find(rows, f"{lora}finetune", ckpt)
            for m in methods:
                for kind in ("copy", "off") if lora else ("copy", "cache"):
                    row = _find(rows, f"{lora}npo_{kind}/{m}", ckpt)
                    judged = kind == ("off" if lora else "cache")
                    what = f"{'LoRA ' if lora else ''}NPO + {m} (one buffer), reference {kind}"
                    if row is None or floor is None or "peak_bytes" not in row:
                        out.append({"target": what + tag, "status": "not measured",
                                    "numbers": ""})  # fmt: skip
                        continue
                    ratio = row["peak_bytes"] / floor["peak_bytes"]
                    floor_name = "LoRA fine-tuning" if lora else "fine-tuning"
                    numbers = (
                        f"peak {ratio:.3f}× {floor_name} ({row['peak_bytes'] / 2**20:.0f} vs "
                        f"{floor['peak_bytes'] / 2**20:.0f} MiB); step "
                        f"{row['step_ms'] / floor['step_ms']:.2f}× ({row['step_ms']:.0f} vs "
                        f"{floor['step_ms']:.0f} ms)"
                    )
                    status = ("met" if ratio <= 1.05 else "not met") if judged else "reported"
                    label = f"{what}: peak ≤ 1.05 × {floor_name}" if judged else what
                    out.append({"target": label + tag, "status": status, "numbers": numbers})
    return out


def step_targets(rows: list[dict], methods: list[str]) -> list[dict]:
    """The targets of issue 15, judged from the rows: (target, status, numbers) per method and
    checkpointing setting. "not measured" where a row is missing."""
    out = []
    if any(r["variant"].endswith("finetune") for r in rows):
        return reference_targets(rows, methods)

    def add(target, ok, numbers):
        status = "not measured" if ok is None else ("met" if ok else "not met")
        out.append({"target": target, "status": status, "numbers": numbers})

    for ckpt in sorted({r["checkpointing"] for r in rows}):
        tag = " (checkpointing)" if ckpt else ""
        for m in methods:
            one, two = _find(rows, f"one_buffer/{m}", ckpt), _find(rows, f"synthesizer/{m}", ckpt)
            paper = _find(rows, f"paper/{m}", ckpt)
            for row, label, limit in ((one, "one-buffer", 0.10), (two, "two-buffer", 1.10)):
                d = row.get("peak_minus_floor_grads") if row else None
                add(f"{label} {m} peak ≤ floor + {limit:.2f} gradient{'s' * (limit > 1)}{tag}",
                    None if d is None else d <= limit,
                    "" if d is None else f"floor {d:+.3f} gradients")  # fmt: skip
            for row, label in ((two, "two-buffer"), (one, "one-buffer")):
                share = row.get("combine_share") if row else None
                numbers = "" if share is None else (
                    f"{100 * share:.2f}% ({row['combine_ms']:.1f} of {row['step_ms']:.0f} ms)")
                if share is not None and row.get("combine_cpu_share") is not None:
                    numbers += f"; in CPU time {100 * row['combine_cpu_share']:.2f}%"
                add(f"{label} {m} combine ≤ 2% of the step{tag}",
                    None if share is None else share <= 0.02, numbers)  # fmt: skip
            ratio = one["step_ms"] / two["step_ms"] if one and two else None
            numbers = "" if ratio is None else (
                f"{ratio:.3f}× ({one['step_ms']:.0f} vs {two['step_ms']:.0f} ms)")
            if ratio is not None and one.get("step_cpu_ms") and two.get("step_cpu_ms"):
                numbers += f"; in CPU time {one['step_cpu_ms'] / two['step_cpu_ms']:.3f}×"
            add(f"one-buffer {m} step ≤ 1.05 × two-buffer{tag}",
                None if ratio is None else ratio <= 1.05, numbers)  # fmt: skip
            d = paper.get("peak_minus_floor_grads") if paper else None
            out.append({
                "target": f"paper-style {m} extra peak{tag}",
                "status": "reported" if d is not None else "not measured",
                "numbers": "" if d is None else f"floor {d:+.3f} gradients",
            })  # fmt: skip
    return out


# ---------------------------------------------------------------- the run
def machine() -> dict:
    """What a result needs beside its numbers: date, commit, command, versions, CPU (and GPU)."""
    here = Path(__file__).resolve().parent
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                          text=True)  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    info = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "commit": (done.stdout.strip() or "unknown") + (" (modified)" if dirty else ""),
        "command": "python bench/step.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "cpu": platform.processor(),
    }  # fmt: skip
    try:
        import transformers

        info["transformers"] = transformers.__version__
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except (ImportError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _mib(row: dict, key: str) -> str:
    return f"{row[key]:8.0f}" if row.get(key) is not None else " " * 8


def format_row(row: dict) -> str:
    name = row["variant"] + (" (checkpointing)" if row["checkpointing"] else "")
    if "error" in row:
        return f"  {name:<36}{row['error']}"
    combine = (
        f"combine {row['combine_ms']:8.2f} ms ({100 * row['combine_share']:5.1f}%)"
        if row["combine_ms"] is not None
        else " " * 31
    )
    spread = f"({row['step_ms_min']:.0f}–{row['step_ms_max']:.0f})"
    if row.get("step_cpu_ms") is not None:
        cpu_share = row["combine_cpu_share"]
        cpu_share = f", {100 * cpu_share:.1f}%" if cpu_share is not None else ""
        spread += f" [CPU {row['step_cpu_ms']:.0f}{cpu_share}]"
    if row.get("peak_rss_mib") is not None:
        memory = f"peak RSS {_mib(row, 'peak_rss_mib')} MiB, growth {_mib(row, 'growth_mib')} MiB"
    else:
        memory = f"peak {row['peak_gib']:6.2f} GiB" if row["peak_gib"] is not None else ""
    d = row.get("peak_minus_floor_grads")
    floor = f"  floor {d:+.3f} grad" if d is not None and row["variant"] != "summed" else ""
    return f"  {name:<30}step {row['step_ms']:8.1f} ms {spread:<30} {combine}  {memory}{floor}"


def report(paths: list[str]) -> str:
    """Markdown of saved runs (``step.json``): each case's numbers, then its targets, under the
    run's command, commit, machine and load. What ``bench/RESULTS.md`` shows of a step run."""
    out = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        m = result["machine"]
        load = "–".join(f"{result[k][0]:.1f}" for k in ("load_before", "load_after") if k in result)
        out += [
            f"`{m.get('command', 'python bench/step.py')}` at commit {m.get('commit', 'unknown')}, "
            f"{m['date']}; {m['cpu']}, {m['cpus']} cores, load {load}; torch {m['torch']}, "
            f"{result['params']:,} parameters, one gradient "
            f"{result['grad_bytes'] / 2**20:.0f} MiB.",
            "",
            "| case | checkpointing | step ms (CPU ms) | peak RSS MiB | growth MiB |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["rows"]:
            if "error" in r:
                out.append(f"| {r['variant']} | {r['checkpointing']} | {r['error']} | | |")
                continue
            cpu = f" ({r['step_cpu_ms']:.0f})" if r.get("step_cpu_ms") is not None else ""
            peak = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") is not None else (
                f"{r['peak_gib'] * 1024:.0f} (CUDA)" if r.get("peak_gib") is not None else "")
            growth = f"{r['growth_mib']:.0f}" if r.get("growth_mib") is not None else ""
            out.append(f"| {r['variant']} | {'on' if r['checkpointing'] else 'off'} | "
                       f"{r['step_ms']:.0f}{cpu} | {peak} | {growth} |")  # fmt: skip
        out += ["", "| target | status | numbers |", "| --- | --- | --- |"]
        out += [f"| {t['target']} | {t['status']} | {t['numbers']} |" for t in result["targets"]]
        out.append("")
    return "\n".join(out)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    in_process = device.type == "cuda"
    # the parent of a CPU run needs only the shapes: a model on the meta device
    model = build_model(args.size, dtype, device if in_process else torch.device("meta"))
    n_params = sum(p.numel() for p in model.parameters())
    grad_bytes = n_params * dtype.itemsize
    cases = variants(args.methods, args.forget_loss, args.variants, args.suite)
    if in_process:
        init_state = [p.detach().cpu() for p in model.parameters()]
        batches = make_batches(model.config.vocab_size, args.batch, args.seq, device, 4)
    else:
        del model
    backend = resolve_backend(None, device)[0]
    threads = f", {args.threads} torch threads" if not in_process else ""
    print(
        f"Algorithm 1 step: Llama-style {n_params:,} parameters ({args.size}), {args.dtype}, "
        f"batch {args.batch}x{args.seq} tokens per task, forget loss "
        f"{'npo' if args.suite == 'reference' else args.forget_loss}, "
        f"fused AdamW, combine backend {backend}{threads}; median of {args.steps} steps after "
        f"{args.warmup} warm-up" + ("" if in_process else "; each case in a fresh process"),
        flush=True,
    )
    print(f"(one gradient: {grad_bytes / 2**20:.1f} MiB)", flush=True)
    rows: list[dict] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "rows": rows, "params": n_params, "grad_bytes": grad_bytes,
        "grad_gib": grad_bytes / 2**30, "backend": backend, "machine": machine(),
        "load_before": os.getloadavg(), "args": vars(args),
    }  # fmt: skip
    for checkpointing in args.checkpointing:
        if in_process:
            set_checkpointing(model, checkpointing == "on")
        for name, (setup, step) in cases.items():
            if in_process:
                row = measure(name, setup, step, model, init_state, batches, args, device)
            else:
                row = run_in_subprocess(args, name, checkpointing)
            row["checkpointing"] = checkpointing == "on"
            rows.append(row)
            add_floor_differences(rows, grad_bytes)
            result["targets"] = step_targets(rows, args.methods)
            result["load_after"] = os.getloadavg()
            print(format_row(row), flush=True)
            (out / "step.json").write_text(json.dumps(result, indent=1))
    print("\n| target | status | numbers |\n| --- | --- | --- |")
    for t in result["targets"]:
        print(f"| {t['target']} | {t['status']} | {t['numbers']} |")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--size", default=None, choices=list(SIZES),
                   help="model size (default: 1b on a GPU, 100m on a CPU)")  # fmt: skip
    p.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    p.add_argument("--batch", type=int, default=4 if cuda else 2)
    p.add_argument("--seq", type=int, default=512 if cuda else 64)
    p.add_argument("--methods", nargs="+", default=["sago", "pcgrad"], choices=sk.methods())
    p.add_argument("--suite", default="combine", choices=["combine", "reference"],
                   help="combine: the synthesizer against its peers (issue 15); reference: NPO "
                   "with each form of reference against plain fine-tuning (issue 29)")
    p.add_argument("--variants", nargs="+", default=None, choices=KINDS + REFERENCE_KINDS,
                   help="which kinds of step to run (default: all of the suite's)")  # fmt: skip
    p.add_argument("--forget-loss", default="simnpo", choices=["ga", "simnpo"])
    p.add_argument(
        "--checkpointing", nargs="+", default=None, choices=["off", "on"],
        help="gradient checkpointing settings to run each variant under (default: off and on "
        "on a GPU, off on a CPU)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=3 if cuda else 2)
    p.add_argument("--steps", type=int, default=10 if cuda else 6)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads in each CPU case (default: this process's count)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--report", nargs="+", metavar="STEP_JSON",
                   help="print saved runs (step.json) as markdown tables, and run nothing")
    p.add_argument("--case", help="internal: run this one case here and write --case-json")
    p.add_argument("--case-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    on_gpu = torch.device(args.device).type == "cuda"
    if args.size is None:
        args.size = "1b" if on_gpu else "100m"
    if args.variants is None:
        args.variants = list(REFERENCE_KINDS if args.suite == "reference" else KINDS)
    if args.checkpointing is None:
        args.checkpointing = ["off", "on"] if on_gpu else ["off"]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.report:
        print(report(arguments.report))
    elif arguments.case:
        Path(arguments.case_json).write_text(json.dumps(run_case(arguments)))
    else:
        run(arguments)
