"""Shared memory decided on elements (``_overlap.py``), checked against listing every byte."""

from __future__ import annotations

import random

import pytest
import torch

from sago_kernels import _overlap


def _bytes_of(t: torch.Tensor) -> set[int]:
    """Every byte address an element of ``t`` occupies (the brute-force truth)."""
    e = t.element_size()
    if t.numel() == 0:
        return set()
    index = torch.zeros((), dtype=torch.int64)
    for n, s in zip(t.shape, t.stride()):
        index = index[..., None] + torch.arange(n) * s
    starts = t.data_ptr() + e * index.reshape(-1)
    return {int(a) + k for a in starts.tolist() for k in range(e)}


def _element_starts(t: torch.Tensor) -> list[int]:
    index = torch.zeros((), dtype=torch.int64)
    for n, s in zip(t.shape, t.stride()):
        index = index[..., None] + torch.arange(n) * s
    return index.reshape(-1).tolist()


def _random_view(rng: random.Random, base: torch.Tensor) -> torch.Tensor:
    """A random strided view inside ``base`` (any ndim up to 3, strides 0..12, size-0 dims)."""
    while True:
        ndim = rng.randint(0, 3)
        sizes = [rng.choice([0, 1, 2, 3, 4, 5]) if rng.random() < 0.1 else rng.randint(1, 5)
                 for _ in range(ndim)]  # fmt: skip
        strides = [rng.choice([0, 1, 1, 2, 3, 5, 6, 10, 12]) for _ in range(ndim)]
        reach = sum((n - 1) * s for n, s in zip(sizes, strides) if n > 0)
        if reach < base.numel():
            offset = rng.randint(0, base.numel() - 1 - reach)
            return base.as_strided(sizes, strides, offset)


def test_random_views_agree_with_listing_every_byte():
    rng = random.Random(0)
    base = torch.zeros(64)
    for _ in range(3000):
        a, b = _random_view(rng, base), _random_view(rng, base)
        truth = bool(_bytes_of(a) & _bytes_of(b))
        assert _overlap.tensors_share_memory(a, b) == truth, (a.shape, a.stride(),
            a.storage_offset(), b.shape, b.stride(), b.storage_offset())  # fmt: skip
        starts = _element_starts(a)
        assert _overlap.has_internal_overlap(a) == (len(set(starts)) < len(starts))


def test_elements_that_straddle_each_other_count_as_shared():
    """Two float32 views of one buffer whose element grids are 2 bytes apart."""
    buffer = bytearray(64)
    a = torch.frombuffer(buffer, dtype=torch.float32, count=8)
    b = torch.frombuffer(buffer, dtype=torch.float32, offset=2, count=4)
    for x, y in ((a, b), (a[0::2], b), (a[0:1], b), (a[2:], b[1:2])):
        assert _overlap.tensors_share_memory(x, y) == bool(_bytes_of(x) & _bytes_of(y))
    assert not _overlap.tensors_share_memory(a[4:], b[:1])


def _structured_pairs():
    x = torch.zeros(200)
    grid = x[:120].view(12, 10)
    return [
        (x[0:50], x[50:100]),  # contiguous neighbours
        (x[0::2], x[1::2]),  # interleaved progressions
        (x[0:90:3], x[1:90:3]),
        (x[0:60:4], x[2:90:6]),  # progressions that meet (at 2·k·6 + 2 = 4·i)
        (grid[:, 0:3], grid[:, 3:6]),  # columns of a grid
        (grid[:, 0:3], grid[:, 2]),
        (grid[0::2, 1:], grid[1::2, :9]),
        (grid.t(), x[120:]),  # a transposed (dense) view
        (grid[:, 4:8], x[50:55]),  # a block against an interval
        (grid[3:5, 2:4], x[33:45]),
    ]


@pytest.mark.parametrize("pair", range(10))
def test_views_of_one_grid_need_no_element_listing(pair, monkeypatch):
    """The common shapes (intervals, progressions, slices of one grid) are decided by
    arithmetic: nothing in proportion to the tensors is allocated."""
    a, b = _structured_pairs()[pair]
    truth = bool(_bytes_of(a) & _bytes_of(b))

    def refuse(dims):
        raise AssertionError(f"listed the elements of {dims}")

    monkeypatch.setattr(_overlap, "_offsets", refuse)
    assert _overlap.tensors_share_memory(a, b) == truth
    assert _overlap.tensors_share_memory(b, a) == truth
    assert not _overlap.has_internal_overlap(a)


def test_intervals_meet_walks_both_lists():
    segments = [(0, 2), (4, 6), (9, 9), (12, 14)]
    assert not _overlap.intervals_meet(segments, 2)
    assert _overlap.intervals_meet(segments, 3)  # 1 -> 4
    assert _overlap.intervals_meet([(0, 8)], 2), "a segment meets itself shifted by less"
    assert _overlap.intervals_meet(segments, -8)  # 12 -> 4
    assert not _overlap.intervals_meet(segments, -10)
    assert _overlap.intervals_meet(segments, 0)
    assert not _overlap.intervals_meet([(3, 3)], 0), "empty segments hold no element"
    assert not _overlap.intervals_meet(segments, 21)
