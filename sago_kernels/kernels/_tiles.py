"""Constants and small in-kernel helpers shared by the Triton kernels."""

from __future__ import annotations

import triton
import triton.language as tl

from ..methods import GATE_SAGO, GATE_SAGO_PREFER_RETAIN, GATE_SUM, PROJECTION_BLUR

# Modes of the chunk pass (``tl.constexpr``): the three gates, then the projection passes.
MODE_SUM = tl.constexpr(GATE_SUM)
MODE_SAGO = tl.constexpr(GATE_SAGO)
MODE_SAGO_PREFER_RETAIN = tl.constexpr(GATE_SAGO_PREFER_RETAIN)
MODE_AFFINE = tl.constexpr(8)  # out = a_j·f + b_j·r with per-segment (a_j, b_j)
MODE_DOTS = tl.constexpr(9)  # read-only: per-chunk f·r, r·r, f·f
# GRU (gru.py), with the state m: m' = beta·r + keep·m, recomputed in both passes
MODE_DOTS_EMA = tl.constexpr(10)  # read-only: f·r, r·r, f·f, and f·m' (column 4), m'·m' (3)
MODE_AFFINE_EMA = tl.constexpr(11)  # out = a_j·f + b_j·r + c_j·m'; m' into the state
BLUR = tl.constexpr(PROJECTION_BLUR)

NUM_SUMS = tl.constexpr(8)  # columns of a partial-sum row: fr, rr, ff, oo, or, of, 0, 0


@triton.jit
def locate_segment(seg_chunk_ptr, chunk, num_segments, search_steps):
    """Index j of the segment that owns ``chunk``: the last j with seg_chunk[j] <= chunk.

    ``seg_chunk`` holds each segment's first chunk (ascending; empty segments own none).
    ``search_steps`` = ceil(log2(num_segments)) halvings keep the table O(segments). It is a
    runtime bound, not a constexpr, so layouts of any size share one compiled kernel.
    """
    lo = chunk * 0
    hi = lo + num_segments
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(seg_chunk_ptr + mid) <= chunk
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    return lo


@triton.jit
def nan_like(x):
    """A float32 quiet NaN of ``x``'s shape (built from bits: a NaN constexpr breaks caching)."""
    return (x.to(tl.int32, bitcast=True) * 0 + 0x7FC00000).to(tl.float32, bitcast=True)


@triton.jit
def is_finite(x):
    """Not NaN and not ±Inf, from the exponent bits of a float32 tensor."""
    return (x.to(tl.int32, bitcast=True) & 0x7F800000) != 0x7F800000
