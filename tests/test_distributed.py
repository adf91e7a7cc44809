"""Multi-process tests on CPU with the gloo backend: sharded combines, DDP, FSDP2.

Each test starts ``world`` processes of ``tests/dist_worker.py`` (see its docstring for what
each scenario checks) and waits for them with a time limit; a rank's failure message is shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BACKENDS

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
TIMEOUT_S = 300


def run_ranks(scenario: str, world: int, tmp_path: Path, backends: list[str]) -> None:
    init = tmp_path / "rendezvous"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                scenario,
                "--rank",
                str(rank),
                "--world",
                str(world),
                "--init",
                str(init),
                "--backends",
                *backends,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )  # fmt: skip
        for rank in range(world)
    ]
    failures = []
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{scenario}: rank {rank} did not finish in {TIMEOUT_S} s")
        if proc.returncode != 0:
            failures.append(f"--- rank {rank} (exit {proc.returncode})\n{err[-3000:]}")
    assert not failures, "\n".join(failures)


def _cpu_backends() -> list[str]:
    """Backends that run on the workers' CPU buffers (Triton only under its interpreter)."""
    names = [b for b in ("reference", "native") if b in BACKENDS]
    if "triton" in BACKENDS and os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_combine_equals_unsharded(world, tmp_path):
    # Triton's interpreter at world size 2 only: it runs the same kernels on each rank's local
    # layout at any world size, and at 3 ranks it alone took half a minute of CI
    backends = _cpu_backends() if world == 2 else _cpu_backends()[:2]
    run_ranks("sharded", world, tmp_path, backends)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_step_equals_single_process_step(world, tmp_path):
    run_ranks("ddp", world, tmp_path, _cpu_backends()[-1:])


def test_fsdp2_unlearning_step_equals_single_process_step(tmp_path):
    pytest.importorskip("transformers")
    run_ranks("fsdp2", 2, tmp_path, _cpu_backends()[:1])


@pytest.mark.parametrize("world", [2, 3])
def test_synthesizer_under_fsdp2_equals_single_process_steps(world, tmp_path):
    pytest.importorskip("transformers")
    # the native backend (the interpreter's kernels would triple the time; the sharded
    # combine itself is tested on every backend above)
    run_ranks("fsdp2_synthesizer", world, tmp_path, _cpu_backends()[:2][-1:])


TRAINER_WORKER = Path(__file__).resolve().parent / "trainer_worker.py"


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_trainer_under_torchrun_equals_single_process_run(mode, tmp_path):
    """``UnlearningTrainer`` launched by torchrun (2 CPU processes, gloo): see
    tests/trainer_worker.py for what each rank checks."""
    pytest.importorskip("transformers")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(TRAINER_WORKER), mode, str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["steps"] == 2 and report["ddp_bucket_all_reduces"] == 0
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
