"""The one pass over the flat buffers: read g_r and g_f, optionally write g_final and sums.

Work is cut into *chunks*: each segment is split into chunks of ``chunk_elems`` elements (its
last chunk shorter), and one program handles one chunk, tile by tile. A chunk never crosses a
segment, so per-segment weights are two scalar loads and per-chunk partial sums belong to one
segment. Full tiles are loaded without a mask (vectorised: every chunk starts on an aligned
element); only a segment's last tile is masked. Nothing outside the segments is read or written.

Two facts shape the tile code:
- bfloat16 is moved as raw 16-bit words and converted with integer arithmetic. The conversion
  is exact (the load is a shift, the store rounds to nearest-even like ``torch.Tensor.to``), it is
  the same code on the GPU and under the Triton interpreter (whose own bf16 casts flush
  subnormals and truncate), and it costs a few integer ops per element in a memory-bound pass.
- Sign tests use the bits of the float32 value, never float comparisons or products, so neither
  underflow nor a flush-denormals mode can change a SAGO gate.

Partial sums are accumulated lane-wise in float32 across the chunk's tiles and reduced once per
chunk: a fixed order, so results are bitwise reproducible (no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tiles import (
    MODE_AFFINE,
    MODE_AFFINE_EMA,
    MODE_DOTS,
    MODE_DOTS_EMA,
    MODE_SAGO,
    MODE_SUM,
    NUM_SUMS,
    locate_segment,
)


@triton.jit
def _accumulate_tile(
    retain_ptr, forget_ptr, out_ptr, state_ptr, offs, mask, a, b, c, alpha, gamma, beta, keep,
    inv_scale,
    acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts,
    MODE: tl.constexpr, STATS: tl.constexpr, MASKED: tl.constexpr, BF16_BITS: tl.constexpr,
    SCALED: tl.constexpr,
):  # fmt: skip
    """One tile: load, combine, store, accumulate. Written flat on purpose: under the Triton
    interpreter every nested ``@triton.jit`` call costs milliseconds, and CI runs it there."""
    if MASKED:
        r = tl.load(retain_ptr + offs, mask=mask, other=0)
        f = tl.load(forget_ptr + offs, mask=mask, other=0)
    else:
        r = tl.load(retain_ptr + offs)
        f = tl.load(forget_ptr + offs)
    if BF16_BITS:  # exact widening of bf16 words
        r = (r.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        f = (f.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        r = r.to(tl.float32)
        f = f.to(tl.float32)
    if SCALED:  # a loss scaler's 1/scale, applied as the gradients are read
        r = r * inv_scale
        f = f * inv_scale
    if STATS:
        acc_fr += f * r
        acc_rr += r * r
        acc_ff += f * f
    m = r
    if MODE == MODE_DOTS_EMA or MODE == MODE_AFFINE_EMA:
        if MASKED:
            m = tl.load(state_ptr + offs, mask=mask, other=0)
        else:
            m = tl.load(state_ptr + offs)
        if BF16_BITS:
            m = (m.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            m = m.to(tl.float32)
        m = beta * r + keep * m
        if MODE == MODE_DOTS_EMA:
            acc_oo += m * m
            acc_or += f * m
    if MODE != MODE_DOTS and MODE != MODE_DOTS_EMA:
        rb = r.to(tl.int32, bitcast=True)
        fb = f.to(tl.int32, bitcast=True)
        # conflict: both non-zero and signs differ, on bits
        conflict = ((fb ^ rb) < 0) & ((fb & 0x7FFFFFFF) != 0) & ((rb & 0x7FFFFFFF) != 0)
        if MODE == MODE_SUM:
            out = gamma * f + alpha * r
        elif MODE == MODE_AFFINE:
            out = a * f + b * r
        elif MODE == MODE_AFFINE_EMA:
            out = a * f + b * r + c * m
        else:
            if MODE == MODE_SAGO:
                kept = gamma * f
            else:
                kept = gamma * f + alpha * r
            out = tl.where(conflict, alpha * r, kept)
            finite = ((fb & 0x7F800000) != 0x7F800000) & ((rb & 0x7F800000) != 0x7F800000)
            out = tl.where(finite, out, (fb * 0 + 0x7FC00000).to(tl.float32, bitcast=True))
        if BF16_BITS:  # round to nearest even, NaN stays NaN
            u = out.to(tl.int32, bitcast=True)
            rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
            y = tl.where((u & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded).to(tl.int16)
        else:
            y = out.to(out_ptr.dtype.element_ty)
        if MASKED:
            tl.store(out_ptr + offs, y, mask=mask)
        else:
            tl.store(out_ptr + offs, y)
        if MODE == MODE_AFFINE_EMA:  # m' into the state, unless the segment is NaN (c is NaN)
            if BF16_BITS:
                u = m.to(tl.int32, bitcast=True)
                rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
                ym = tl.where((u & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded).to(tl.int16)
            else:
                ym = m.to(state_ptr.dtype.element_ty)
            c_lanes = tl.where(mask, c, 0.0)  # a tensor: the interpreter cannot & a scalar
            tl.store(state_ptr + offs, ym, mask=mask & (c_lanes == c_lanes))
        if STATS:
            if MASKED:
                # Lanes past the segment loaded 0; keep a NaN weight from reaching the sums.
                out = tl.where(mask, out, 0.0)
            acc_oo += out * out
            acc_or += out * r
            acc_of += out * f
            acc_conflicts += conflict.to(tl.int32)
    return acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts


@triton.jit
def _chunk_pass_kernel(
    retain_ptr, forget_ptr, out_ptr, state_ptr,
    seg_start_ptr, seg_numel_ptr, seg_chunk_ptr, coef_ptr, partial_ptr, conflict_ptr,
    scale_ptr, num_segments, search_steps, chunk_elems, alpha, gamma, beta, keep,
    MODE: tl.constexpr, STATS: tl.constexpr, BF16_BITS: tl.constexpr,
    ALIGN: tl.constexpr, BLOCK: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    chunk = tl.program_id(0).to(tl.int64)
    seg = locate_segment(seg_chunk_ptr, chunk, num_segments, search_steps)
    first = (chunk - tl.load(seg_chunk_ptr + seg)) * chunk_elems  # chunk's offset in its segment
    n = tl.minimum(tl.load(seg_numel_ptr + seg) - first, chunk_elems)
    base = tl.multiple_of(tl.load(seg_start_ptr + seg) + first, ALIGN)

    c = alpha
    if MODE == MODE_AFFINE:
        a = tl.load(coef_ptr + 2 * seg)
        b = tl.load(coef_ptr + 2 * seg + 1)
    elif MODE == MODE_AFFINE_EMA:
        a = tl.load(coef_ptr + 3 * seg)
        b = tl.load(coef_ptr + 3 * seg + 1)
        c = tl.load(coef_ptr + 3 * seg + 2)
    else:
        a = alpha
        b = alpha
    inv_scale = alpha
    if SCALED:
        inv_scale = tl.load(scale_ptr)

    lanes = tl.arange(0, BLOCK)
    acc_fr = tl.zeros([BLOCK], tl.float32)
    acc_rr = tl.zeros([BLOCK], tl.float32)
    acc_ff = tl.zeros([BLOCK], tl.float32)
    acc_oo = tl.zeros([BLOCK], tl.float32)
    acc_or = tl.zeros([BLOCK], tl.float32)
    acc_of = tl.zeros([BLOCK], tl.float32)
    acc_conflicts = tl.zeros([BLOCK], tl.int32)

    n_full = n // BLOCK
    for i in range(0, n_full):
        offs = base + i * BLOCK + lanes
        acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts = _accumulate_tile(
            retain_ptr, forget_ptr, out_ptr, state_ptr, offs, lanes < BLOCK, a, b, c, alpha,
            gamma, beta, keep, inv_scale,
            acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts,
            MODE, STATS, False, BF16_BITS, SCALED,
        )  # fmt: skip
    tail = n - n_full * BLOCK
    if tail > 0:
        offs = base + n_full * BLOCK + lanes
        acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts = _accumulate_tile(
            retain_ptr, forget_ptr, out_ptr, state_ptr, offs, lanes < tail, a, b, c, alpha,
            gamma, beta, keep, inv_scale,
            acc_fr, acc_rr, acc_ff, acc_oo, acc_or, acc_of, acc_conflicts,
            MODE, STATS, True, BF16_BITS, SCALED,
        )  # fmt: skip

    if STATS:
        row = partial_ptr + chunk * NUM_SUMS
        tl.store(row + 0, tl.sum(acc_fr, axis=0))
        tl.store(row + 1, tl.sum(acc_rr, axis=0))
        tl.store(row + 2, tl.sum(acc_ff, axis=0))
        tl.store(row + 3, tl.sum(acc_oo, axis=0))
        tl.store(row + 4, tl.sum(acc_or, axis=0))
        tl.store(row + 5, tl.sum(acc_of, axis=0))
        tl.store(row + 6, 0.0)
        tl.store(row + 7, 0.0)
        tl.store(conflict_ptr + chunk, tl.sum(acc_conflicts, axis=0).to(tl.int64))
