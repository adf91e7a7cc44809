"""Every kernel the launcher launches binds and compiles for Hopper (sm_90), without a GPU.

The interpreter runs the kernels' semantics but neither the compiler nor compiled-mode launch
binding (it accepts launch options a GPU would reject). ``aot_sm90.py`` runs the launcher's own
calls, for every method, dtype, alignment and statistics setting, through both, with a stub
driver standing in for an H100/H200, and reports what each distinct kernel compiled to. Checked
here: what the speed design relies on (full tiles of 16-byte-aligned layouts use 16-byte vector
loads and stores, ``ld.global.v4`` / ``st.global.v4``) and that no kernel of the default launch
settings spills registers. It runs in a subprocess because compiling needs the kernels without
``TRITON_INTERPRET``. On a CUDA machine the other tests compile for the real device instead, so
this file is skipped there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HAS_CUDA

from sago_kernels.kernels.launch import DEFAULT_CONFIG

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="compiled for the real GPU by the other tests")

pytest.importorskip("triton")

# sum, sago, sago_prefer_retain, affine write, dots, GRU dots, GRU write
DOTS, MODES = {9, 10}, {0, 1, 2, 8, 9, 10, 11}


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("aot_sm90.py")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _default_settings(v: dict) -> bool:
    c = v["constexprs"]
    return c.get("BLOCK") in (DEFAULT_CONFIG.block, DEFAULT_CONFIG.stats_block) or (
        c.get("SEG_BLOCK") == DEFAULT_CONFIG.seg_block
        or c.get("ROWS") == DEFAULT_CONFIG.reduce_rows
    )


def _chunk_passes(compiled: dict, align: int) -> list[dict]:
    return [
        v
        for v in compiled["variants"]
        if v["kernel"] == "_chunk_pass_kernel"
        and v["constexprs"]["ALIGN"] == align
        and _default_settings(v)
    ]


def test_every_launch_compiles_and_covers_every_variant(compiled):
    kernels = {v["kernel"] for v in compiled["variants"]}
    assert kernels == {
        "_chunk_pass_kernel", "_segment_reduce_kernel", "_coefficients_kernel", "_geometry_kernel"
    }  # fmt: skip
    for align in (16, 1):
        seen = {(v["io"], v["constexprs"]["MODE"], v["constexprs"]["STATS"])
                for v in _chunk_passes(compiled, align)}  # fmt: skip
        for io in ("float32", "int16", "float16"):  # bf16 travels as int16 words
            assert {m for i, m, _ in seen if i == io} == MODES, (align, io, seen)
    assert compiled["launches"] > len(compiled["variants"])


def test_aligned_full_tiles_use_16_byte_vectors(compiled):
    passes = _chunk_passes(compiled, 16)
    assert passes
    for v in passes:
        assert v["ld_v4"], f"full tiles should load 16-byte vectors: {v}"
        if v["constexprs"]["MODE"] not in DOTS:
            assert v["st_v4"], f"full tiles should store 16-byte vectors: {v}"


def test_default_launch_settings_never_spill(compiled):
    default = [v for v in compiled["variants"] if _default_settings(v)]
    assert len(default) >= 2 * 3 * 12 + 5  # chunk passes (align x dtype x mode/stats) + small
    spilled = [v for v in default if "LOCAL:0" not in v["usage"] or "STACK:0" not in v["usage"]]
    assert not spilled, "register spills:\n" + "\n".join(map(str, spilled))
