"""Small CPU cases of the benchmarks for ``pytest bench/ --benchmark-only`` (pytest-benchmark).

The fused Triton call needs a GPU (or the interpreter, far too slow to time), so on a CPU these
time the native backend (when built) and the peers on a scaled-down Llama layout; on a CUDA
machine the fused call joins them. ``test_step_speed`` times one whole Algorithm 1 step of each
``bench/step.py`` variant on its tiny Llama (no memory: that needs a process per case).
The standalone ``bench/run.py`` and ``bench/step.py`` are the full benchmarks.
"""

from __future__ import annotations

import itertools
import statistics

import pytest
import step
import torch
from peers import make_compiled, make_fused, make_paper, make_reference
from run import layout_for

import sago_kernels as sk

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LAYOUT = layout_for("llama7b", 64 if DEVICE.type == "cpu" else 4)
PEERS = ["reference", "paper", "compiled"] + (["fused"] if DEVICE.type == "cuda" else [])
if DEVICE.type == "cpu" and "native" in sk.backends():
    PEERS.append("native")


def _make(peer: str, method: str):
    if peer == "fused":
        return make_fused(LAYOUT, method)
    if peer == "native":
        return make_fused(LAYOUT, method, backend="native")
    if peer == "reference":
        return make_reference(LAYOUT, method)
    if peer == "paper":
        return make_paper(LAYOUT, method)
    return make_compiled(LAYOUT, method, DEVICE)


# the paper-style and compiled peers exist for the six methods they were written for
CASES = [
    (peer, method)
    for method in sk.methods()
    for peer in PEERS
    if not (sk.METHODS[method].weighting and peer in ("paper", "compiled"))
]


@pytest.mark.parametrize(("peer", "method"), CASES)
def test_combine_speed(benchmark, peer, method):
    g = torch.Generator().manual_seed(0)
    retain, forget = LAYOUT.new_buffer(device=DEVICE), LAYOUT.new_buffer(device=DEVICE)
    for buf in (retain, forget):
        for v in LAYOUT.segment_views(buf):
            v.copy_(torch.randn(v.numel(), generator=g))
    fn = _make(peer, method)
    fn(retain.clone(), forget)  # compile / warm up outside the timing

    def call():
        fn(retain, forget)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(
        peer=peer, method=method, numel=LAYOUT.segment_numel, device=str(DEVICE)
    )
    benchmark(call)


STEP_METHODS = ["sago", "pcgrad"]


CASES = [
    (suite, case)
    for suite, kinds in (("combine", step.KINDS), ("reference", step.REFERENCE_KINDS))
    for case in step.variants(STEP_METHODS, "simnpo", kinds, suite)
]


@pytest.mark.parametrize("suite, case", CASES)
def test_step_speed(benchmark, suite, case):
    # a fresh model per case: a variant's synthesizer (and any hooks it keeps) stays with it
    model = step.build_model("tiny", torch.float32, DEVICE)
    batches = step.make_batches(model.config.vocab_size, 2, 32, DEVICE, 4)
    kinds = step.KINDS if suite == "combine" else step.REFERENCE_KINDS
    setup, take_step = step.variants(STEP_METHODS, "simnpo", kinds, suite)[case]
    timers = step.Timers(DEVICE)
    state = setup(model, timers, batches)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    counter = itertools.count()

    def call():
        i = next(counter)
        timers.begin_step()
        take_step(model, state, opt, batches[2 * i % 4], batches[(2 * i + 1) % 4], timers)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    call()  # the first step allocates AdamW's state: outside the timing
    timers.steps.clear()
    benchmark(call)
    combine = timers.per_step()
    benchmark.extra_info.update(
        case=case, size="tiny", device=str(DEVICE),
        combine_ms=statistics.median(combine) * 1e3 if combine else None,
    )  # fmt: skip
