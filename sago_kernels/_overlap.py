"""Whether tensors share memory, decided on their elements (strides included), not their spans.

A view's elements sit at ``offset + Σ i_k·stride_k``. Two views can have overlapping byte spans
and still share no element (``x[0::2]`` and ``x[1::2]``; columns 0-2 and 3-5 of a matrix), so a
span test refuses valid input; here it is only the first, O(1), step. The exact tests, cheapest
first, on index sets in element units (size-1 and stride-0 dimensions dropped, the rest sorted by
stride and merged where they tile each other):

1. spans disjoint: nothing shared;
2. one set is an interval (a contiguous, transposed or otherwise dense view): does the other set
   hit it? Its outer slices that lie inside the interval are hits, so only the two slices at the
   interval's ends need a closer look (a recursion of depth ``ndim``);
3. two arithmetic progressions: ``i·s − j·t = c`` within bounds, by the extended Euclid algorithm;
4. the same outermost stride ``S`` in both, each one's inner part narrower than ``S`` (slices of
   one row-major grid): only two row shifts can meet; recurse on the rows;
5. anything else (a strided view against a slice of a grid of another width, say): the element
   offsets of both are listed and compared, memory in proportion to the two views. Gradient views
   are contiguous or slices of one grid, so this is for odd hand-made views only.

Nothing here allocates in proportion to the tensors except step 5.
"""

from __future__ import annotations

import torch

Dims = tuple[tuple[int, int], ...]
"""An index set: ``(size, stride)`` pairs, outermost (largest stride) first; sizes > 1,
strides > 0. The set is ``{Σ i_k·stride_k : 0 <= i_k < size_k}``; ``()`` is the set ``{0}``."""


def index_dims(t: torch.Tensor) -> Dims:
    """The index set of ``t``'s elements relative to ``t.data_ptr()`` (repeated elements once)."""
    dims = sorted(
        ((n, s) for n, s in zip(t.shape, t.stride()) if n > 1 and s != 0),
        key=lambda d: d[1],
        reverse=True,
    )
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == n * s:  # the outer dimension steps over this one exactly
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    return tuple(merged)


def _span(dims: Dims) -> int:
    return sum((n - 1) * s for n, s in dims)


def _is_interval(dims: Dims) -> bool:
    return not dims or (len(dims) == 1 and dims[0][1] == 1)


def _offsets(dims: Dims) -> torch.Tensor:
    """Every index of the set (int64, CPU): step 5 only."""
    offsets = torch.zeros(1, dtype=torch.int64)
    for n, s in dims:
        offsets = (offsets[:, None] + torch.arange(n, dtype=torch.int64) * s).reshape(-1)
    return offsets


def _hits(dims: Dims, lo: int, hi: int) -> bool:
    """Whether the set has an index in ``[lo, hi]``."""
    lo, hi = max(lo, 0), min(hi, _span(dims))
    if lo > hi:
        return False
    if _is_interval(dims):
        return True
    (n, s), inner = dims[0], dims[1:]
    width = _span(inner)
    if width >= s:  # outer slices interleave: no slice order to use
        offsets = _offsets(dims)
        return bool(((offsets >= lo) & (offsets <= hi)).any())
    first = max(0, -((width - lo) // s))  # first slice ending at or after lo
    last = min(n - 1, hi // s)  # last slice starting at or before hi
    if first > last:
        return False
    if last - first >= 2:  # a slice strictly between them lies inside [lo, hi]
        return True
    return any(_hits(inner, lo - i * s, hi - i * s) for i in {first, last})


def _extended_gcd(a: int, b: int) -> tuple[int, int, int]:
    """``(g, x, y)`` with ``a·x + b·y = g = gcd(a, b)``."""
    x0, y0, x1, y1 = 1, 0, 0, 1
    while b:
        q, a, b = a // b, b, a % b
        x0, x1 = x1, x0 - q * x1
        y0, y1 = y1, y0 - q * y1
    return a, x0, y0


def _progressions_meet(a: tuple[int, int], b: tuple[int, int], c: int) -> bool:
    """Whether ``i·s − j·t = c`` for some ``0 <= i < n_a``, ``0 <= j < n_b``."""
    (na, s), (nb, t) = a, b
    g, x, y = _extended_gcd(s, t)
    if c % g:
        return False
    i0, j0 = x * (c // g), -y * (c // g)  # one solution; the rest: i0 + k·t/g, j0 + k·s/g
    ts, ss = t // g, s // g
    k_lo = max(-(i0 // ts), -(j0 // ss))  # ceil((0 - i0)/ts), ceil((0 - j0)/ss)
    k_hi = min((na - 1 - i0) // ts, (nb - 1 - j0) // ss)
    return k_lo <= k_hi


def sets_meet(a: Dims, b: Dims, c: int) -> bool:
    """Whether the index sets ``a`` and ``b + c`` share an index (exact)."""
    if c > _span(a) or c + _span(b) < 0:
        return False
    if _is_interval(a):
        return _hits(b, -c, _span(a) - c)
    if _is_interval(b):
        return _hits(a, c, c + _span(b))
    if len(a) == 1 and len(b) == 1:
        return _progressions_meet(a[0], b[0], c)
    (na, s), (nb, t) = a[0], b[0]
    if s == t and _span(a[1:]) < s and _span(b[1:]) < s:
        # i·S + a' = j·S + b' + c with a', b' inside one row: only i − j = q or q + 1 can meet
        q, rem = divmod(c, s)
        return any(
            -(nb - 1) <= q + m <= na - 1 and sets_meet(a[1:], b[1:], rem - m * s) for m in (0, 1)
        )
    return bool(torch.isin(_offsets(a), _offsets(b) + c).any())


def index_shifts(address_a: int, address_b: int, itemsize: int) -> tuple[int, ...]:
    """Shifts ``c`` (in elements) such that an element of ``a`` at index ``i`` and one of ``b`` at
    index ``j`` share a byte exactly when ``i = j + c``: one shift when the two start on the same
    element grid, two (the elements straddle) otherwise."""
    delta, rest = divmod(address_b - address_a, itemsize)
    return (delta,) if rest == 0 else (delta, delta + 1)


def tensors_share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether an element of ``a`` and one of ``b`` (same device and itemsize) share a byte."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    da, db = index_dims(a), index_dims(b)
    e = a.element_size()
    pa, pb = a.data_ptr(), b.data_ptr()
    if pa + (_span(da) + 1) * e <= pb or pb + (_span(db) + 1) * e <= pa:
        return False
    return any(sets_meet(da, db, c) for c in index_shifts(pa, pb, e))


def has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` are one memory location (an in-place write would write it
    twice): a stride-0 dimension, or strides that fold elements onto each other."""
    if t.numel() == 0:
        return False
    dims = [(n, s) for n, s in zip(t.shape, t.stride()) if n > 1]
    if any(s == 0 for _, s in dims):
        return True
    width = 0
    for n, s in sorted(dims, key=lambda d: d[1]):
        if s <= width:  # this dimension may land inside the ones below it: list and count
            offsets = _offsets(tuple(sorted(dims, key=lambda d: d[1], reverse=True)))
            return bool(torch.unique(offsets).numel() < offsets.numel())
        width += (n - 1) * s
    return False


def intervals_meet(intervals: list[tuple[int, int]], c: int) -> bool:
    """Whether the union of ``[start, end)`` intervals (ascending, disjoint) meets itself shifted
    by ``c``: two linear walks."""
    if c == 0:
        return any(start < end for start, end in intervals)
    shifted = [(start + c, end + c) for start, end in intervals]
    i = j = 0
    while i < len(intervals) and j < len(shifted):
        (a0, a1), (b0, b1) = intervals[i], shifted[j]
        if a0 < b1 and b0 < a1 and a0 < a1 and b0 < b1:
            return True
        if a1 <= b1:
            i += 1
        else:
            j += 1
    return False
