"""The chunk plan: O(segments) tables whatever N, whole tiles, 32-bit-safe chunks."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS
from oracle import assert_output_matches, assert_stats_match, truth
from strategies import CONFIGS, fill_pair

import sago_kernels as sk
from sago_kernels.methods import METHODS
from sago_kernels.model_shapes import llama_shapes

pytest.importorskip("triton")
from sago_kernels.kernels import DEFAULT_CONFIG, LaunchConfig, chunk_plan, launch_config  # noqa: E402


def _layout_7b() -> sk.GradLayout:
    return sk.GradLayout.from_sizes([torch.Size(s).numel() for _, s in llama_shapes(1)])


def test_7b_layout_has_few_chunks_and_whole_tiles():
    layout = _layout_7b()
    assert 6.5e9 < layout.segment_numel < 7e9 and layout.num_segments == 291
    plan = chunk_plan(layout, torch.device("cpu"), DEFAULT_CONFIG)
    assert plan.chunk_elems % DEFAULT_CONFIG.block == 0
    assert plan.chunk_elems <= DEFAULT_CONFIG.max_chunk_elems
    assert plan.num_chunks <= DEFAULT_CONFIG.target_chunks + layout.num_segments
    assert plan.seg_chunk.tolist()[-1] == plan.num_chunks
    assert plan.search_steps == 9 and plan.align == 16
    starts = plan.seg_chunk.tolist()
    assert all(a <= b for a, b in zip(starts, starts[1:]))
    # cached: the same tables on the second call
    assert chunk_plan(layout, torch.device("cpu"), DEFAULT_CONFIG) is plan


def test_chunk_elems_bounds():
    cfg = LaunchConfig(block=1024, target_chunks=8, max_chunk_elems=1 << 14)
    assert cfg.chunk_elems(0) == 1024 and cfg.chunk_elems(5) == 1024
    assert cfg.chunk_elems(8 * 1024 * 3) == 3 * 1024
    assert cfg.chunk_elems(1 << 40) == 1 << 14  # capped: tile offsets and counts stay in int32


@pytest.mark.parametrize(
    "bad",
    [
        dict(block=1000),
        dict(block=8),
        dict(reduce_rows=3),
        dict(max_chunk_elems=1 << 31),
        dict(num_warps=6),
        dict(seg_warps=0),
        dict(seg_warps=64),
    ],
)
def test_launch_config_is_validated(bad):
    with pytest.raises(ValueError):
        LaunchConfig(**bad)


@pytest.mark.skipif("triton" not in BACKENDS, reason="the Triton backend is not available here")
@pytest.mark.parametrize("method", ["sago", "pcgrad_global"])
def test_many_tiny_segments(device, method):
    """120 segments of 0..20 elements: binary search depth 7, several segment blocks per loop."""
    g = torch.Generator().manual_seed(7)
    sizes = torch.randint(0, 21, (120,), generator=g).tolist()
    layout = sk.GradLayout.from_sizes(sizes, alignment=16)
    r, f = fill_pair(layout, torch.float32, 3, False, device)
    m = METHODS[method]
    want = truth(r, f, layout, m, 1.0, 0.5, 1e-10)
    with launch_config(CONFIGS[0]):
        out, stats = sk.combine_(
            r.clone(), f, layout=layout, method=method, gamma=0.5, stats=True, backend="triton"
        )
    assert_output_matches(out, want, layout, torch.float32, context=method)
    assert_stats_match(stats.table, r, f, out, layout, context=method)
