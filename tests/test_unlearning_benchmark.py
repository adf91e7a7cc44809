"""The offline TOFU-style benchmark (``sago_kernels.unlearning.benchmark``): refusals before any
training, and a tiny end-to-end run whose JSON recomputes its own metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("faker")
pytest.importorskip("rouge_score")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


def _run(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}
    return subprocess.run(
        [sys.executable, "-m", "sago_kernels.unlearning.benchmark", *flags],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "sagoo"], "--methods: unknown ['sagoo']"),
        (["--losses", "gaa"], "--losses: unknown ['gaa']"),
        (["--steps", "0"], "--steps should be >= 1"),
        (["--seeds", "1", "1"], "--seeds should be distinct"),
        (["--width", "30"], "--width should be a multiple of 4"),
        (["--rmu-layer", "9"], "--rmu-layer should be in"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_trained(flags, message):
    done = _run(*flags, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "seed 0" not in done.stdout + done.stderr, "refused only after pre-training"


def test_cuda_without_a_device_is_a_clear_refusal():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run("--device", "cuda", timeout=120)
    assert done.returncode == 2
    assert "no CUDA device is available" in done.stderr and "Traceback" not in done.stderr


def test_help_names_every_flag():
    done = _run("--help", timeout=120)
    assert done.returncode == 0
    for flag in ("--quick", "--losses", "--methods", "--seeds", "--steps", "--device", "--out",
                 "--forget-percent", "--backend"):  # fmt: skip
        assert flag in done.stdout


def test_a_tiny_run_writes_everything_needed_to_recompute_its_metrics(tmp_path):
    from scipy.stats import ks_2samp
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "out"
    done = _run(
        "--seeds", "0", "1", "--losses", "ga", "npo", "--methods", "sum", "sago",
        "--authors", "10", "--qa-per-author", "2", "--world-facts", "8", "--steps", "4",
        "--pretrain-epochs", "10", "--eval-retain", "8", "--width", "32", "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "combine backend" in done.stdout
    assert "matched forgetting" in done.stdout and "fixed step budget" in done.stdout
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2
    assert (out / "forget_quality_vs_utility.png").exists()
    assert (out / "forget_curves.png").exists()
    seeds = {s["seed"]: s for s in result["seeds"]}
    for run in result["runs"]:
        reference = seeds[run["seed"]]["retain_model"]
        for protocol in ("matched", "fixed"):
            cell = run["protocols"][protocol]
            metrics, per_example = cell["metrics"], cell["per_example"]
            # forget quality: the KS p-value of the two stored truth-ratio samples
            want = ks_2samp(
                per_example["truth_ratio_forget"],
                reference["per_example"]["truth_ratio_forget"],
            ).pvalue
            assert metrics["forget_quality"] == pytest.approx(want, rel=1e-9, abs=1e-300)
            # MIA: the AUC of the stored scores with their membership (forget = member)
            for kind, scores in per_example["mia_scores"].items():
                labels = [1] * len(scores["forget"]) + [0] * len(scores["holdout"])
                auc = roc_auc_score(labels, scores["forget"] + scores["holdout"])
                assert metrics[f"mia_auc_{kind}"] == pytest.approx(auc)
        # matched forgetting is the first step at the retain-only model's count, not later
        matched = run["protocols"]["matched"]
        target = reference["memorised_forget_tokens"]
        hits = {c["step"]: c["forget_tokens_memorised"] for c in run["curve"]}
        if matched["reached"]:
            assert hits[matched["steps"]] <= target
            assert all(hits[s] > target for s in range(1, matched["steps"]))
        else:
            assert all(hits[s] > target for s in range(1, run["protocols"]["fixed"]["steps"] + 1))
    summary = {(e["loss"], e["method"], e["protocol"]): e for e in result["summary"]}
    assert len(summary) == 2 * 2 * 2
    cell = summary[("ga", "sum", "fixed")]
    values = [r["protocols"]["fixed"]["metrics"]["model_utility"]
              for r in result["runs"] if r["loss"] == "ga" and r["method"] == "sum"]  # fmt: skip
    assert cell["seeds"] == 2
    assert cell["model_utility"] == pytest.approx(sum(values) / 2)
