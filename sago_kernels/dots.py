"""Dot products summed in a fixed order: the bits of every reference dot, for any thread count.

The floor under the reference combine (``reference.py``) and the weightings' per-segment
reference (``weightings.affine_segment``): both need a segment's (f·r, r·r, f·f) summed the same
way, and neither may import the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BLOCK = 4096
"""Elements per block of a dot. ATen sums a tensor of fewer than 32768 elements (its
``GRAIN_SIZE``) on one thread, and a bigger reduction with more than one output is split over
threads by outputs, each output summed whole by one thread: so a block's sum, hence every bit of
a dot, is the same for any ``torch.get_num_threads()``."""

_CHUNK = 256 * _BLOCK
"""Elements multiplied at a time: bounds a dot's temporaries (one product row of 4 MB each)."""


def _block_sums(x: torch.Tensor) -> torch.Tensor:
    """``[k, n]`` -> ``[k, ceil(n / _BLOCK)]``: the sum of each block of ``_BLOCK`` elements."""
    full = x.shape[1] - x.shape[1] % _BLOCK
    parts = [x[:, :full].unflatten(1, (-1, _BLOCK)).sum(-1)] if full else []
    if full < x.shape[1]:
        parts.append(x[:, full:].sum(-1, keepdim=True))
    return torch.cat(parts, 1)


def fixed_order_dots(
    vectors: Sequence[torch.Tensor], pairs: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """``[len(pairs)]``: vectors[i]·vectors[j] for each pair ``(i, j)``, in the vectors' dtype.

    Why not ``torch.dot``: its summation order, hence its bits, change with
    ``torch.get_num_threads()``. Here the order depends on the length alone: products in the
    vectors' dtype (as ``torch.dot``), summed in that dtype within blocks of :data:`_BLOCK`
    elements, the block sums added in float64 over blocks of blocks, and the total rounded once.
    """
    dtype, device = vectors[0].dtype, vectors[0].device
    n = vectors[0].numel()
    if n == 0:
        return torch.zeros(len(pairs), dtype=dtype, device=device)
    if n <= _BLOCK:  # one block: fewer, larger ops for the many small segments of a model
        left = torch.stack([vectors[i] for i, _ in pairs])
        return (left * torch.stack([vectors[j] for _, j in pairs])).sum(-1)
    products = torch.empty((len(pairs), min(n, _CHUNK)), dtype=dtype, device=device)
    partials = []
    for lo in range(0, n, _CHUNK):  # chunks are whole blocks: the blocks do not depend on _CHUNK
        hi = min(lo + _CHUNK, n)
        p = products[:, : hi - lo]
        for q, (i, j) in enumerate(pairs):
            torch.mul(vectors[i][lo:hi], vectors[j][lo:hi], out=p[q])
        partials.append(_block_sums(p))
    sums = torch.cat(partials, 1).to(torch.float64)
    while sums.shape[1] > 1:
        sums = _block_sums(sums)
    return sums[:, 0].to(dtype)



Dots = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(f·r, r·r, f·f) of a whole segment, given when a rank holds only a shard of it."""


def segment_dots(r: torch.Tensor, f: torch.Tensor) -> Dots:
    """(f·r, r·r, f·f), each summed in the compute dtype, in a fixed order
    (:func:`fixed_order_dots`).

    Projection methods need all three finite, even where the formula uses two: r·r and f·f sum
    non-negative terms, so whether they overflow does not depend on the summation order, and when
    both are finite every partial sum of f·r is bounded by √(r·r · f·f) (Cauchy–Schwarz), so f·r
    cannot overflow in any order either. Testing f·r alone would depend on the order (float32
    [2e38, 2e38, −2e38, −2e38]·[1, 1, 1, 1] is inf, NaN or 0), and backends sum in different
    orders and widths; with this rule they all write the same segments as NaN.
    """
    d, n, m = fixed_order_dots([f, r], [(0, 1), (1, 1), (0, 0)]).unbind()
    return d, n, m
