"""The benchmark's peers compute the same g_final as the reference (else timing them is moot),
and the standalone benchmark runs end to end on a tiny layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sago_kernels as sk

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
from conftest import BACKENDS, DEVICE  # noqa: E402
from strategies import state_for  # noqa: E402
from peers import TORCHJD_METHODS, make_compiled, make_paper, make_torchjd  # noqa: E402


@pytest.mark.parametrize(
    "peer, method",
    [(peer, m) for m in sk.methods() if not sk.METHODS[m].weighting
     for peer in ("paper", "compiled") if not (peer == "compiled" and sk.METHODS[m].needs_state)],
    # fmt: skip
)
def test_peer_matches_the_reference(peer, method):
    layout = sk.GradLayout.from_sizes([300, 1, 0, 77, 128], alignment=16)
    g = torch.Generator().manual_seed(0)
    retain, forget = layout.new_buffer(), layout.new_buffer()
    for buf in (retain, forget):
        for v in layout.segment_views(buf):
            v.copy_(torch.randn(v.numel(), generator=g))
    state = state_for(method, retain, zero=True)  # a GRU peer starts from a zero average
    want = sk.combine_(retain.clone(), forget, layout=layout, method=method, backend="reference",
                       **state)  # fmt: skip
    fn = (
        make_paper(layout, method)
        if peer == "paper"
        else make_compiled(layout, method, retain.device)
    )
    got = retain.clone()
    fn(got, forget)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in TORCHJD_METHODS if m != "nash_mtl"])
def test_torchjd_peer_matches_the_fused_method(method):
    """The TorchJD peer computes what the method of the same name computes (Nash-MTL only agrees
    in a regime of TorchJD's iterations; tests/test_weightings.py covers it there)."""
    layout = sk.GradLayout.from_sizes([300, 1, 0, 77, 128], alignment=16)
    g = torch.Generator().manual_seed(1)
    retain, forget = layout.new_buffer(), layout.new_buffer()
    for r, f in zip(layout.segment_views(retain), layout.segment_views(forget)):
        r.copy_(torch.randn(r.numel(), generator=g))
        f.copy_(torch.randn(f.numel(), generator=g) - 0.5 * r)
    want = sk.combine_(retain.clone(), forget, layout=layout, method=method, backend="reference")
    got = retain.clone()
    make_torchjd(layout, method)(got, forget)
    for w, o, r, f in zip(*(layout.segment_views(t) for t in (want, got, retain, forget))):
        assert (w - o).norm() <= 5e-4 * (r.norm() + f.norm()) + 1e-12, method


def test_benchmark_script_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{BENCH.parent}{os.pathsep}{BENCH}"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(BENCH / "run.py"), "--device", "cpu", "--scale", "128",
           "--layouts", "llama7b",
           "--methods", "sago", "pcgrad", "--dtypes", "float32", "--reps", "2", "--sets", "2",
           "--peers", "reference", "paper", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["rows"]
    assert result["complete"] is True
    assert {(r["method"], r["peer"]) for r in rows} == {
        ("sago", "reference"), ("sago", "paper"), ("pcgrad", "reference"), ("pcgrad", "paper")
    }  # fmt: skip
    assert all(r["ms"] > 0 and r["gbps"] > 0 and r["extra_bytes"] >= 0 for r in rows)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the sweep runs the Triton kernels")
def test_launch_setting_sweep_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{BENCH.parent}{os.pathsep}{BENCH}"}
    cmd = [sys.executable, str(BENCH / "tune.py"), "--device", DEVICE.type, "--scale", "512",
           "--methods", "sago", "pcgrad", "--blocks", "1024", "--warps", "4", "8",
           "--chunks", "16", "--reps", "2", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "tune.json").read_text())
    assert [(r["method"], r["num_warps"]) for r in rows] == [
        ("sago", 4), ("sago", 8), ("pcgrad", 4), ("pcgrad", 8)
    ]  # fmt: skip
    assert all(r["ms"] > 0 and r["copy_share"] > 0 and r["block"] == 1024 for r in rows)


def test_copy_roofline_fits_beside_7b_float32_on_an_80gb_card(monkeypatch):
    """The copy's buffers are capped by free memory: 7B float32 gradients take 54 GB of 80."""
    from run import copy_cap_elems, layout_for

    numel = layout_for("llama7b", 1).segment_numel
    pair = 2 * numel * 4
    free = 80e9 - pair
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free), int(80e9)))
    cap = copy_cap_elems(numel, torch.float32, torch.device("cuda"))
    assert 0 < cap < numel and pair + 2 * cap * 4 <= 0.3 * free + pair
    assert copy_cap_elems(numel, torch.float32, torch.device("cpu")) == numel


def test_copy_bandwidth_counts_the_bytes_it_copied(monkeypatch):
    """Capped on CUDA, the copy's bandwidth is its own bytes over its own time."""
    import run

    monkeypatch.setattr(run, "copy_cap_elems", lambda numel, dtype, device: 1000)
    monkeypatch.setattr(run, "median_seconds", lambda *args, **kwargs: (1e-6, None))
    gbps = run.copy_gbps(10**6, torch.float32, torch.device("cpu"), reps=1)
    assert gbps == pytest.approx(2 * 1000 * 4 / 1e-6 / 1e9)


def _row(method, peer, dtype="bfloat16", share=0.95, speedup=1.0, extra=100_000):
    return {"layout": "llama7b", "method": method, "peer": peer, "dtype": dtype,
            "roofline_share": share, "speedup_of_fused": speedup, "extra_bytes": extra}  # fmt: skip


def test_target_verdicts_follow_the_numbers():
    from targets import evaluate

    methods = sk.methods()
    full = [_row(m, "fused", d) for m in methods for d in ("bfloat16", "float32")]
    full += [_row(m, "paper", d, speedup=25.0) for m in methods for d in ("bfloat16", "float32")]
    half = [_row(m, "fused") for m in methods] + [_row(m, "compiled", speedup=2.0) for m in methods]
    verdicts = {name: status for name, status, _ in evaluate(full, half)}
    assert set(verdicts.values()) == {"met"}, verdicts

    full[0] = _row(methods[0], "fused", share=0.85)  # one element-wise case at 85% of copy
    half = half[:6] + [_row(m, "compiled", speedup=1.2) for m in methods]  # projection 1.2x only
    half[1]["extra_bytes"] = 1000  # so the full-width call allocates more: grows with N
    verdicts = {name: (status, nums) for name, status, nums in evaluate(full, half)}
    assert verdicts["element-wise ≥ 90% of copy, bfloat16"][0] == "**not met**"
    assert "85.00" in verdicts["element-wise ≥ 90% of copy, bfloat16"][1]
    assert verdicts["projection ≥ 1.5× torch.compile (half width)"][0] == "**not met**"
    assert verdicts["element-wise no slower than torch.compile (half width)"][0] == "met"
    assert verdicts["extra memory O(segments)"][0] == "**not met**"

    empty = {name: status for name, status, _ in evaluate([], [])}
    assert set(empty.values()) == {"not measured"}


@pytest.mark.parametrize("method", ["sago", "pcgrad"])
def test_step_benchmark_variants_take_the_same_step(method):
    """bench/step.py's synthesizer (two buffers and one) and paper-style steps are one Algorithm
    1 step: from the same weights and batches they reach the same weights (else comparing their
    times is moot)."""
    import argparse

    import step

    cpu = torch.device("cpu")
    init = [p.detach().clone() for p in step.build_model("tiny", torch.float32, cpu).parameters()]
    args = argparse.Namespace(warmup=0, steps=1)
    after = {}
    makers = {"synth": step.synthesizer_step, "one_buffer": step.one_buffer_step,
              "paper": step.paper_step}  # fmt: skip
    for name, make in makers.items():
        model = step.build_model("tiny", torch.float32, cpu)  # fresh: no hooks of another
        batches = step.make_batches(model.config.vocab_size, 2, 16, cpu, 2)
        row = step.measure(name, *make(method, "simnpo"), model, init, batches, args, cpu)
        assert row["step_ms"] > 0 and row["combine_ms"] > 0 and 0 < row["combine_share"] < 1
        after[name] = [p.detach().clone() for p in model.parameters()]
    moved = [not torch.equal(a, b) for a, b in zip(after["synth"], init)]
    assert all(moved), "a parameter did not move"
    for name in ("one_buffer", "paper"):
        for a, b in zip(after["synth"], after[name]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_step_benchmark_measures_each_case_in_a_process_of_its_own(tmp_path):
    """bench/step.py on a CPU: every case of a tiny run reaches step.json, each measured in a
    fresh process (its peak resident set over its baseline), against the summed-loss floor, with
    every target of issue 15 judged."""
    env = {**os.environ, "PYTHONPATH": f"{BENCH.parent}{os.pathsep}{BENCH}"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(BENCH / "step.py"), "--device", "cpu", "--size", "tiny",
           "--methods", "sago", "--batch", "1", "--seq", "16", "--warmup", "1", "--steps", "1",
           "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "step.json").read_text())
    rows = result["rows"]
    assert [r["variant"] for r in rows] == [
        "summed", "synthesizer/sago", "one_buffer/sago", "paper/sago"
    ]  # fmt: skip
    assert len({r["pid"] for r in rows} | {os.getpid()}) == len(rows) + 1
    for r in rows:
        assert r["step_ms"] > 0 and r["threads"] == 1 and r["checkpointing"] is False
        assert 100 < r["baseline_rss_mib"] <= r["peak_rss_mib"], r
        assert r["growth_mib"] == pytest.approx(r["peak_rss_mib"] - r["baseline_rss_mib"])
        assert r["peak_bytes"] == pytest.approx(r["peak_rss_mib"] * 2**20)
        assert (r["combine_ms"] is None) == (r["variant"] == "summed")
    assert rows[0]["peak_minus_floor_grads"] == 0
    grad = result["grad_bytes"]
    for r in rows[1:]:
        want = (r["peak_bytes"] - rows[0]["peak_bytes"]) / grad
        assert r["peak_minus_floor_grads"] == pytest.approx(want)
    assert len(result["targets"]) == 6
    assert {t["status"] for t in result["targets"]} <= {"met", "not met", "reported"}


def test_step_verdicts_follow_the_numbers():
    from targets import step_verdicts

    def row(variant, peak, share=None, ckpt=False):
        return {"variant": variant, "peak_gib": peak, "combine_share": share,
                "checkpointing": ckpt}  # fmt: skip

    rows = [
        row("summed", 8.0),
        row("synthesizer/sago", 10.0, 0.01),
        row("paper/sago", 12.5),
        row("synthesizer/sago", 9.0, 0.03, True),
        row("paper/sago", 9.5, ckpt=True),
    ]
    verdicts = step_verdicts({"rows": rows, "grad_gib": 2.0})
    assert [(name.split(",")[-1].strip(), status) for name, status, _ in verdicts] == [
        ("combine ≤ 2% of the Algorithm 1 step (~1B Llama)", "**not met**"),
        ("no checkpointing", "met"),
        ("gradient checkpointing", "**not met**"),
    ]
    assert "3.00%" in verdicts[0][2] and "2.50 GiB lower" in verdicts[1][2]
    assert {status for _, status, _ in step_verdicts(None)} == {"not measured"}


def test_one_buffer_verdicts_follow_the_numbers():
    """Issue 22's step targets, from step.py rows: the one-buffer peak over the summed floor in
    gradients, and the synthesizer's step time over the floor's."""
    from targets import one_buffer_verdicts

    def row(variant, step_ms, over=None, ckpt=False):
        return {"variant": variant, "step_ms": step_ms, "peak_minus_floor_grads": over,
                "checkpointing": ckpt}  # fmt: skip

    rows = [row("summed", 100.0, 0.0), row("one_buffer/sago", 108.0, 0.05),
            row("synthesizer/sago", 125.0, 1.0), row("summed", 150.0, 0.0, True),
            row("one_buffer/sago", 160.0, 0.2, True)]  # fmt: skip
    verdicts = {name: (status, nums) for name, status, nums in one_buffer_verdicts({"rows": rows})}
    assert verdicts["one-buffer peak ≤ summed floor + 0.10 gradient, no checkpointing"][0] == "met"
    ckpt = verdicts["one-buffer peak ≤ summed floor + 0.10 gradient, checkpointing"]
    assert ckpt[0] == "**not met**" and "+0.200" in ckpt[1]
    step = verdicts["synthesizer step ≤ 1.10× the summed floor (no checkpointing)"]
    assert step[0] == "**not met**" and "1.25×" in step[1] and "1.08×" in step[1]
    assert one_buffer_verdicts(None) == []
