"""DeepSpeed ZeRO 1/2/3 under GradientSynthesizer and UnlearningTrainer (two gloo ranks on CPU),
and what the DeepSpeed engine refuses at construction.

The multi-process tests launch ``tests/deepspeed_worker.py`` (the synthesizer in a loop: every
stage, sago/pcgrad/gru, accumulation, the collectives, the refusals that need an engine) and
``tests/trainer_worker.py deepspeed`` (UnlearningTrainer with ``TrainingArguments(deepspeed=...)``
at ZeRO-2 and ZeRO-3, a resumed run); see their docstrings. ``accelerate launch`` with a DeepSpeed
config runs in tests/test_recipes.py (python/deepspeed_run.py --trainer).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

deepspeed = pytest.importorskip("deepspeed")

from sago_kernels.synthesis import deepspeed as adapter  # noqa: E402

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 600


def _torchrun(script: str, *args: str) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(TESTS / script), *args,
    ]  # fmt: skip
    root = str(TESTS.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]


def test_synthesizer_on_zero_1_2_3_equals_single_process_steps(tmp_path):
    _torchrun("deepspeed_worker.py", str(tmp_path))
    for rank in range(2):
        runs = json.loads((tmp_path / f"rank{rank}.json").read_text())["runs"]
        assert {(r["stage"], r["method"], r["granularity"]) for r in runs} == {
            (stage, method, "parameter")
            for stage in (1, 2, 3)
            for method in ("sago", "pcgrad", "gru")
        } | {(3, "pcgrad", "module")}
        assert [r["in_place"] for r in runs] == [r["stage"] == 3 and r["granularity"] ==
                                                 "parameter" for r in runs]  # fmt: skip
        for r in runs:  # after the first step: the dots (projections) and two statistics sums
            projection = r["method"] != "sago"
            assert r["combine_collectives"][1] == {"all_reduce": int(projection) + 2}


def test_trainer_under_deepspeed_equals_single_process_run_and_resumes(tmp_path):
    pytest.importorskip("transformers")
    _torchrun("trainer_worker.py", "deepspeed", str(tmp_path))
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for stage in ("zero2", "zero3"):
            assert report[stage]["steps"] == 2 and report[stage]["engine"] == "deepspeed"
            assert report[stage]["distributed_type"] == "DistributedType.DEEPSPEED"
        assert report["zero3"]["resumed_max_abs_diff"] <= 1e-6


# --------------------------------------------------------------------------- refusals


class DeepSpeedZeroOptimizer:  # the names the adapter reads, as DeepSpeed 0.19.8 has them
    def __init__(self, **fields):
        self.cpu_offload, self.zenflow = False, False
        self.real_dp_process_group = [object()]
        self.averaged_gradients = {}
        self.finalize_gradient_accumulation_boundary = lambda: None
        self.__dict__.update(fields)


class DeepSpeedZeroOptimizer_Stage3(DeepSpeedZeroOptimizer):  # noqa: N801
    def __init__(self, **fields):
        self.offload_optimizer = self.offload_param = False
        self.grad_partitions_flat_buffer, self.fp16_groups, self.dp_process_group = 0, [], 0
        self.__dict__.update(fields)


def _engine(stage=2, fp16=False, managed=True, mpu=None, optimizer=None, cls="DeepSpeedEngine"):
    if optimizer is None:
        optimizer = DeepSpeedZeroOptimizer_Stage3() if stage == 3 else DeepSpeedZeroOptimizer()
    engine = type(cls, (), {})()
    engine.zero_optimization_stage = lambda: stage
    engine.fp16_enabled = lambda: fp16
    engine.managed_gradient_accumulation = lambda: managed
    engine.mpu, engine.optimizer = mpu, optimizer
    return engine


@pytest.mark.parametrize(
    "engine, match",
    [
        (_engine(stage=0), "ZeRO stage 1, 2 or 3"),
        (_engine(cls="PipelineEngine"), "pipeline parallelism"),
        (_engine(mpu=object()), "model \\(tensor\\) parallelism"),
        (_engine(fp16=True), "fp16 \\(loss scaling\\).*Use bf16 or fp32"),
        (_engine(managed=False), "managed_gradient_accumulation"),
        (_engine(optimizer=types.SimpleNamespace()), "SimpleNamespace optimizer wrapper"),
        (_engine(optimizer=DeepSpeedZeroOptimizer(cpu_offload=True)), "offload.*Remove"),
        (_engine(optimizer=DeepSpeedZeroOptimizer(zenflow=True)), "ZenFlow"),
        (_engine(optimizer=DeepSpeedZeroOptimizer(real_dp_process_group=[1, 2])), "several"),
        (_engine(stage=3, optimizer=DeepSpeedZeroOptimizer()), "ZeRO-3 with the"),
        (_engine(stage=3, optimizer=DeepSpeedZeroOptimizer_Stage3(offload_param=True)),
         "ZeRO-3 with optimizer or parameter offload"),
        (_engine(stage=3, optimizer=DeepSpeedZeroOptimizer_Stage3(offload_optimizer=True)),
         "ZeRO-3 with optimizer or parameter offload"),
    ],
)  # fmt: skip
def test_what_hides_or_changes_the_partitions_is_refused_with_the_alternative(engine, match):
    problem = adapter._unsupported(engine)
    assert problem is not None
    assert re.search(match, problem), problem


def test_a_deepspeed_without_the_partitions_where_they_were_read_is_refused():
    optimizer = DeepSpeedZeroOptimizer()
    del optimizer.finalize_gradient_accumulation_boundary
    problem = adapter._unsupported(_engine(optimizer=optimizer))
    assert "lacks ['finalize_gradient_accumulation_boundary']" in problem
    assert adapter.TESTED in problem and deepspeed.__version__ in problem


def test_a_supported_engine_passes():
    assert adapter._unsupported(_engine(stage=1)) is None
    assert adapter._unsupported(_engine(stage=2)) is None
    assert adapter._unsupported(_engine(stage=3)) is None
