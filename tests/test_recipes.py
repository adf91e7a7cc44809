"""The recipes in python/ run, with tiny settings, and the demo is the benchmark's preset."""

from __future__ import annotations

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


def test_the_demo_is_the_benchmarks_quick_preset(tmp_path):
    """``python -m sago_kernels.unlearning.demo`` runs the benchmark with ``--quick`` unless a
    preset is given, passing every other flag through (the benchmark's own tests run it)."""
    from sago_kernels.unlearning.demo import demo_argv

    assert demo_argv([]) == ["--quick"]
    assert demo_argv(["--seeds", "3"]) == ["--quick", "--seeds", "3"]
    assert demo_argv(["--paper", "--jobs", "1"]) == ["--paper", "--jobs", "1"]
    assert demo_argv(["--quick"]) == ["--quick"]
    out = _run(["-m", "sago_kernels.unlearning.demo", "--help"], tmp_path)
    assert "python -m sago_kernels.unlearning.benchmark" in out and "--quick" in out


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
