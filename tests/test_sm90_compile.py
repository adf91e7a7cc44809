"""Compile every kernel variant for Hopper (sm_90) ahead of time, without a GPU.

The interpreter runs the kernels' semantics but not the compiler. This compiles them with the
real Triton → PTX → cubin pipeline for an H100/H200 target and checks what the speed design
relies on: full tiles use 16-byte vector loads and stores (``ld.global.v4`` / ``st.global.v4``),
and no variant spills registers to local memory. Compilation needs the kernels without
``TRITON_INTERPRET``, so it runs in a subprocess (``aot_sm90.py``). On a CUDA machine the same
kernels are compiled for the real device by the other tests, so this file is skipped there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aot_sm90 import CHUNK_VARIANTS, DOTS, SMALL_VARIANTS, chunk_variant_id
from conftest import HAS_CUDA

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="compiled for the real GPU by the other tests")

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("aot_sm90.py")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "variant", CHUNK_VARIANTS, ids=[chunk_variant_id(*v) for v in CHUNK_VARIANTS]
)
def test_chunk_pass_compiles_vectorised_without_spills(compiled, variant):
    info = compiled[chunk_variant_id(*variant)]
    assert info["ld_v4"], "full tiles should load 16-byte vectors"
    if variant[2] != DOTS:
        assert info["st_v4"], "full tiles should store 16-byte vectors"
    assert "LOCAL:0" in info["usage"] and "STACK:0" in info["usage"], (
        f"register spills: {info['usage']}"
    )


@pytest.mark.parametrize("name", list(SMALL_VARIANTS))
def test_small_kernels_compile_without_spills(compiled, name):
    usage = compiled[name]["usage"]
    assert "LOCAL:0" in usage and "STACK:0" in usage, f"register spills: {usage}"
