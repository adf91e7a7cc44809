"""In-kernel helpers shared by the Triton kernels: chunk lookup, exact dtype I/O, element math.

Two facts shape this file:
- bfloat16 is moved as raw 16-bit words and converted with integer arithmetic. The conversion
  is exact (the load is a shift, the store rounds to nearest-even like ``torch.Tensor.to``), it is
  the same code on the GPU and under the Triton interpreter (whose own bf16 casts flush
  subnormals and truncate), and it costs a few integer ops per element in a memory-bound pass.
- Sign tests use the bits of the float32 value, never float comparisons or products, so neither
  underflow nor a flush-denormals mode can change a SAGO gate.
"""

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
BLUR = tl.constexpr(PROJECTION_BLUR)

NUM_SUMS = tl.constexpr(8)  # columns of a partial-sum row: fr, rr, ff, oo, or, of, 0, 0


@triton.jit
def locate_segment(seg_chunk_ptr, chunk, num_segments, SEARCH_STEPS: tl.constexpr):
    """Index j of the segment that owns ``chunk``: the last j with seg_chunk[j] <= chunk.

    ``seg_chunk`` holds each segment's first chunk (ascending; empty segments own none). A
    fixed number of halvings, ceil(log2(num_segments)), keeps the table O(segments).
    """
    lo = chunk * 0
    hi = lo + num_segments
    for _ in tl.static_range(SEARCH_STEPS):
        mid = (lo + hi) // 2
        go_right = tl.load(seg_chunk_ptr + mid) <= chunk
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    return lo


@triton.jit
def load_f32(ptr, offs, mask, MASKED: tl.constexpr, BF16_BITS: tl.constexpr):
    """Load elements as float32; bf16 buffers arrive as int16 words (exact widening)."""
    if MASKED:
        x = tl.load(ptr + offs, mask=mask, other=0)
    else:
        x = tl.load(ptr + offs)
    if BF16_BITS:
        return (x.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def store_f32(ptr, offs, x, mask, MASKED: tl.constexpr, BF16_BITS: tl.constexpr):
    """Round float32 once to the buffer dtype and store (bf16: nearest-even in integers)."""
    if BF16_BITS:
        u = x.to(tl.int32, bitcast=True)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        is_nan = (u & 0x7FFFFFFF) > 0x7F800000
        y = tl.where(is_nan, 0x7FC0, rounded).to(tl.int16)
    else:
        y = x.to(ptr.dtype.element_ty)
    if MASKED:
        tl.store(ptr + offs, y, mask=mask)
    else:
        tl.store(ptr + offs, y)


@triton.jit
def nan_like(x):
    """A float32 quiet NaN of ``x``'s shape (built from bits: a NaN constexpr breaks caching)."""
    return (x.to(tl.int32, bitcast=True) * 0 + 0x7FC00000).to(tl.float32, bitcast=True)


@triton.jit
def is_finite(x):
    """Not NaN and not ±Inf, from the exponent bits of a float32 tensor."""
    return (x.to(tl.int32, bitcast=True) & 0x7F800000) != 0x7F800000


@triton.jit
def in_conflict(f, r):
    """Both non-zero (±0 never conflicts) and of opposite sign; decided on bits."""
    fb = f.to(tl.int32, bitcast=True)
    rb = r.to(tl.int32, bitcast=True)
    return ((fb ^ rb) < 0) & ((fb & 0x7FFFFFFF) != 0) & ((rb & 0x7FFFFFFF) != 0)


@triton.jit
def combine_values(f, r, a, b, alpha, gamma, MODE: tl.constexpr):
    """g_final for one tile, in float32. ``a``, ``b`` are the segment's affine weights."""
    if MODE == MODE_SUM:
        out = gamma * f + alpha * r
    elif MODE == MODE_AFFINE:
        out = a * f + b * r
    else:
        if MODE == MODE_SAGO:
            kept = gamma * f
        else:
            kept = gamma * f + alpha * r
        out = tl.where(in_conflict(f, r), alpha * r, kept)
        out = tl.where(is_finite(f) & is_finite(r), out, nan_like(out))
    return out
