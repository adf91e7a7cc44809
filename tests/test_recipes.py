"""The demo (the README's main job) and the recipes in python/ run, with tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TRITON_INTERPRET", None)  # CPU tensors: the native backend, as a user gets it
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_demo_runs_and_saves_its_numbers(tmp_path):
    out = _run(
        ["-m", "sago_kernels.unlearning.demo", "--entities", "12", "--pretrain-epochs", "2", "--steps", "3",
         "--eval-every", "1", "--losses", "ga", "npo", "--methods", "sum", "sago", "--out", "res"],
        tmp_path,
    )  # fmt: skip
    assert "Accuracy after unlearning" in out and "Gradient geometry" in out
    data = json.loads((tmp_path / "res" / "results.json").read_text())
    assert [(r["loss"], r["method"]) for r in data["results"]] == [
        ("ga", "sum"), ("ga", "sago"), ("npo", "sum"), ("npo", "sago")
    ]  # fmt: skip
    first = data["results"][0]
    assert first["steps"] <= 3 and first["curve"][0]["step"] == 0
    # the target is judged on counts of facts, saved beside the accuracy (issue 17)
    assert first["forget_total"] == 4 * round(12 * 0.1) and 0 <= first["forget_correct"] <= 4
    assert first["forget_acc"] == first["forget_correct"] / first["forget_total"]
    assert set(first["geometry"]) == {"cos_fr", "cos_out_f", "cos_out_r", "conflict_fraction"}
    assert (tmp_path / "res" / "unlearning_curves.png").stat().st_size > 1000


def test_demo_over_seeds_saves_each_seed_and_the_summary(tmp_path):
    out = _run(
        ["-m", "sago_kernels.unlearning.demo", "--entities", "12", "--pretrain-epochs", "2", "--steps", "2",
         "--losses", "ga", "--methods", "sum", "sago", "--seeds", "3", "4", "--out", "res"],
        tmp_path,
    )  # fmt: skip
    assert "Mean ± std over 2 seeds (3 4)" in out
    per_seed = [json.loads((tmp_path / "res" / f"seed_{s}" / "results.json").read_text())
                for s in (3, 4)]  # fmt: skip
    assert [p["args"]["seed"] for p in per_seed] == [3, 4]
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    cell = summary["summary"][0]
    assert (cell["loss"], cell["method"], cell["seeds"]) == ("ga", "sum", 2)
    assert cell["retain_acc"]["values"] == [p["results"][0]["retain_acc"] for p in per_seed]
    assert set(summary["seconds_per_seed"]) == {"3", "4"}


def test_plain_loop_recipe(tmp_path):
    out = _run([str(ROOT / "python" / "plain_loop.py"), "--entities", "10",
                "--pretrain-epochs", "2",
                "--steps", "25"], tmp_path)  # fmt: skip
    assert "before:" in out and "after:" in out and "cos(out,r)" in out


def test_trainer_recipe(tmp_path):
    out = _run([str(ROOT / "python" / "trainer_run.py"), "--entities", "10",
                "--pretrain-epochs", "2",
                "--epochs", "10"], tmp_path)  # fmt: skip
    assert "before:" in out and "after:" in out and "forget_loss" in out


def test_lora_recipe(tmp_path):
    pytest.importorskip("peft")
    out = _run([str(ROOT / "python" / "lora_run.py"), "--entities", "10",
                "--pretrain-epochs", "2",
                "--epochs", "10"], tmp_path)  # fmt: skip
    assert "before:" in out and "forget_loss" in out and "adapter tensors" in out
    assert "base weights untouched during unlearning: True" in out
    after = out.split("after:  ")[1].split("\n")[0]
    assert out.split("merged: ")[1].startswith(after)  # merging changes no prediction


def test_ddp_recipe(tmp_path):
    out = _run([str(ROOT / "python" / "ddp_run.py"), "--world", "2", "--steps", "40"], tmp_path)
    before = float(out.split("before: forget-class accuracy ")[1].split(",")[0])
    after = float(out.split("after:  forget-class accuracy ")[1].split(",")[0])
    assert after < before, out


def test_fsdp_recipe(tmp_path):
    out = _run([str(ROOT / "python" / "fsdp_run.py"), "--entities", "10",
                "--pretrain-epochs", "60", "--steps", "20"], tmp_path)  # fmt: skip
    assert "FSDP2: True" in out, out
    before = float(out.split("before: {'forget': ")[1].split(",")[0])
    after = float(out.split("after:  {'forget': ")[1].split(",")[0])
    assert after < before, out


def test_deepspeed_recipe_under_accelerate_launch(tmp_path):
    """UnlearningTrainer under ``accelerate launch`` with a DeepSpeed config (ZeRO-3, two CPU
    processes): accelerate's DeepSpeed plugin, not TrainingArguments(deepspeed=...), which
    tests/test_deepspeed.py runs under torchrun."""
    pytest.importorskip("deepspeed")
    launch = ["-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--use_deepspeed",
              "--zero_stage", "3"]  # fmt: skip
    recipe = [str(ROOT / "python" / "deepspeed_run.py"), "--trainer", "--entities", "10",
              "--pretrain-epochs", "60", "--steps", "10"]  # fmt: skip
    out = _run(launch + recipe, tmp_path)
    assert "ZeRO-3 under UnlearningTrainer" in out and "engine: deepspeed" in out, out
    before = float(out.split("before: {'forget': ")[1].split(",")[0])
    after = float(out.split("after:  {'forget': ")[1].split(",")[0])
    assert after < before, out
