"""Small O(segments) kernels: per-segment sums of chunk partials, coefficients, geometry.

They read a few floats per chunk or segment, never the gradient buffers, and they sum in a fixed
order (rows in blocks, then a tree) so every run gives the same bits. Coefficients and statistics
are computed here, on the device: a combine never waits for the host.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tiles import BLUR, NUM_SUMS, is_finite, nan_like


@triton.jit
def _segment_reduce_kernel(
    partial_ptr, conflict_ptr, seg_chunk_ptr, seg_sum_ptr, seg_conflict_ptr,
    ROWS: tl.constexpr,
):  # fmt: skip
    """Program j sums the partial rows of segment j's chunks (in chunk order)."""
    seg = tl.program_id(0).to(tl.int64)
    lo = tl.load(seg_chunk_ptr + seg)
    hi = tl.load(seg_chunk_ptr + seg + 1)
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, NUM_SUMS)
    acc = tl.zeros([ROWS, NUM_SUMS], tl.float32)
    acc_conflicts = tl.zeros([ROWS], tl.int64)
    for first in range(lo, hi, ROWS):
        row = first + rows
        inside = row < hi
        acc += tl.load(
            partial_ptr + row[:, None] * NUM_SUMS + cols[None, :], mask=inside[:, None], other=0.0
        )
        acc_conflicts += tl.load(conflict_ptr + row, mask=inside, other=0)
    tl.store(seg_sum_ptr + seg * NUM_SUMS + cols, tl.sum(acc, axis=0))
    tl.store(seg_conflict_ptr + seg, tl.sum(acc_conflicts, axis=0))


@triton.jit
def _affine_weights(d, n, m, alpha, gamma, eps, PROJECTION: tl.constexpr):
    """(a, b) with g_final = a·f + b·r; NaN where the dots or weights are not finite.

    PCGrad: γ·(f − c·r) + α·r = γ·f + (α − γ·c)·r with c = d/(n+eps) if d < 0 else 0.
    BLUR:   γ·f + α·(r − c·f) = (γ − α·c)·f + α·r with c = d/(m+eps).
    """
    if PROJECTION == BLUR:
        c = d / (m + eps)
        a = gamma - alpha * c
        b = tl.zeros_like(c) + alpha
        ok = is_finite(d) & is_finite(m)
    else:
        c = tl.where(d < 0, d / (n + eps), 0.0)
        a = tl.zeros_like(c) + gamma
        b = alpha - gamma * c
        ok = is_finite(d) & is_finite(n)
    ok = ok & is_finite(a) & is_finite(b)
    return tl.where(ok, a, nan_like(a)), tl.where(ok, b, nan_like(b))


@triton.jit
def _coefficients_kernel(
    seg_sum_ptr, coef_ptr, num_segments, alpha, gamma, eps,
    PROJECTION: tl.constexpr, GLOBAL: tl.constexpr, SEG_BLOCK: tl.constexpr,
):  # fmt: skip
    """One program: per-segment (a_j, b_j); for global methods from the summed dots."""
    lanes = tl.arange(0, SEG_BLOCK)
    if GLOBAL:
        acc_fr = tl.zeros([SEG_BLOCK], tl.float32)
        acc_rr = tl.zeros([SEG_BLOCK], tl.float32)
        acc_ff = tl.zeros([SEG_BLOCK], tl.float32)
        for first in range(0, num_segments, SEG_BLOCK):
            seg = first + lanes
            inside = seg < num_segments
            acc_fr += tl.load(seg_sum_ptr + seg * NUM_SUMS + 0, mask=inside, other=0.0)
            acc_rr += tl.load(seg_sum_ptr + seg * NUM_SUMS + 1, mask=inside, other=0.0)
            acc_ff += tl.load(seg_sum_ptr + seg * NUM_SUMS + 2, mask=inside, other=0.0)
        a_all, b_all = _affine_weights(
            tl.sum(acc_fr, axis=0), tl.sum(acc_rr, axis=0), tl.sum(acc_ff, axis=0),
            alpha, gamma, eps, PROJECTION,
        )  # fmt: skip
    for first in range(0, num_segments, SEG_BLOCK):
        seg = first + lanes
        inside = seg < num_segments
        if GLOBAL:
            a = tl.zeros([SEG_BLOCK], tl.float32) + a_all
            b = tl.zeros([SEG_BLOCK], tl.float32) + b_all
        else:
            d = tl.load(seg_sum_ptr + seg * NUM_SUMS + 0, mask=inside, other=0.0)
            n = tl.load(seg_sum_ptr + seg * NUM_SUMS + 1, mask=inside, other=0.0)
            m = tl.load(seg_sum_ptr + seg * NUM_SUMS + 2, mask=inside, other=0.0)
            a, b = _affine_weights(d, n, m, alpha, gamma, eps, PROJECTION)
        tl.store(coef_ptr + 2 * seg, a, mask=inside)
        tl.store(coef_ptr + 2 * seg + 1, b, mask=inside)


@triton.jit
def _cosine(dot, norm_a, norm_b):
    den = norm_a * norm_b
    return tl.where(den == 0, 0.0, dot / den)


@triton.jit
def _store_geometry(row_ptr, fr, rr, ff, oo, o_r, o_f, conflicts, numel, mask):
    """The 8 FIELDS of stats.py for one block of rows (row stride 8)."""
    norm_r = tl.sqrt_rn(rr)
    norm_f = tl.sqrt_rn(ff)
    norm_out = tl.sqrt_rn(tl.where(oo < 0, 0.0, oo))
    fraction = tl.where(
        numel > 0, conflicts.to(tl.float64) / tl.maximum(numel, 1).to(tl.float64), 0.0
    )
    tl.store(row_ptr + 0, fr, mask=mask)
    tl.store(row_ptr + 1, norm_r, mask=mask)
    tl.store(row_ptr + 2, norm_f, mask=mask)
    tl.store(row_ptr + 3, norm_out, mask=mask)
    tl.store(row_ptr + 4, _cosine(fr, norm_r, norm_f), mask=mask)
    tl.store(row_ptr + 5, _cosine(o_r, norm_out, norm_r), mask=mask)
    tl.store(row_ptr + 6, _cosine(o_f, norm_out, norm_f), mask=mask)
    tl.store(row_ptr + 7, fraction.to(tl.float32), mask=mask)


@triton.jit
def _geometry_kernel(
    seg_sum_ptr, seg_conflict_ptr, seg_numel_ptr, table_ptr, num_segments,
    SEG_BLOCK: tl.constexpr,
):  # fmt: skip
    """One program: the ``[S + 1, 8]`` geometry table (segments, then the total row)."""
    lanes = tl.arange(0, SEG_BLOCK)
    tot_fr = tl.zeros([SEG_BLOCK], tl.float32)
    tot_rr = tl.zeros([SEG_BLOCK], tl.float32)
    tot_ff = tl.zeros([SEG_BLOCK], tl.float32)
    tot_oo = tl.zeros([SEG_BLOCK], tl.float32)
    tot_or = tl.zeros([SEG_BLOCK], tl.float32)
    tot_of = tl.zeros([SEG_BLOCK], tl.float32)
    tot_conflicts = tl.zeros([SEG_BLOCK], tl.int64)
    tot_numel = tl.zeros([SEG_BLOCK], tl.int64)
    for first in range(0, num_segments, SEG_BLOCK):
        seg = first + lanes
        inside = seg < num_segments
        row = seg_sum_ptr + seg * NUM_SUMS
        fr = tl.load(row + 0, mask=inside, other=0.0)
        rr = tl.load(row + 1, mask=inside, other=0.0)
        ff = tl.load(row + 2, mask=inside, other=0.0)
        oo = tl.load(row + 3, mask=inside, other=0.0)
        o_r = tl.load(row + 4, mask=inside, other=0.0)
        o_f = tl.load(row + 5, mask=inside, other=0.0)
        conflicts = tl.load(seg_conflict_ptr + seg, mask=inside, other=0)
        numel = tl.load(seg_numel_ptr + seg, mask=inside, other=0)
        _store_geometry(table_ptr + seg * 8, fr, rr, ff, oo, o_r, o_f, conflicts, numel, inside)
        tot_fr += fr
        tot_rr += rr
        tot_ff += ff
        tot_oo += oo
        tot_or += o_r
        tot_of += o_f
        tot_conflicts += conflicts
        tot_numel += numel
    _store_geometry(
        table_ptr + num_segments * 8,
        tl.sum(tot_fr, axis=0), tl.sum(tot_rr, axis=0), tl.sum(tot_ff, axis=0),
        tl.sum(tot_oo, axis=0), tl.sum(tot_or, axis=0), tl.sum(tot_of, axis=0),
        tl.sum(tot_conflicts, axis=0), tl.sum(tot_numel, axis=0), True,
    )  # fmt: skip
