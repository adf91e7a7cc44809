"""64-bit indexing: segments that start beyond, and straddle, element 2**31.

The buffers are allocated but never filled (pages are only touched where the test and the
kernel read or write), so this runs in a few hundred MB on a CPU and 2 x 4.3 GB on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS
from oracle import truth

import sago_kernels as sk
from sago_kernels.methods import METHODS

N = 2**31 + 8192
SEGMENTS = [(0, 3), (2**31 - 1024, 1500), (2**31 + 1024, 2000)]  # the middle one straddles 2**31


@pytest.mark.parametrize("backend", ["triton", "native"])
@pytest.mark.parametrize("method", ["sago", "pcgrad", "blur"])
def test_segments_past_2_31_are_indexed_correctly(backend, device, method):
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available here")
    try:
        retain = torch.empty(N, dtype=torch.bfloat16, device=device)
        forget = torch.empty(N, dtype=torch.bfloat16, device=device)
    except RuntimeError as exc:  # pragma: no cover - only on a machine that cannot map 8.6 GB
        pytest.fail(f"could not allocate the 2**31-element buffers: {exc}")
    layout = sk.GradLayout([s for s, _ in SEGMENTS], [n for _, n in SEGMENTS], N, alignment=16)
    g = torch.Generator().manual_seed(1)
    windows = [(s - 16, s + n + 16) for s, n in SEGMENTS]
    windows[0] = (0, 3 + 16)
    for lo, hi in windows:  # values in segments and NaN sentinels 16 elements either side
        for buf in (retain, forget):
            buf[lo:hi] = float("nan")
    for s, n in SEGMENTS:
        for buf in (retain, forget):
            buf[s : s + n] = torch.randn(n, generator=g).to(torch.bfloat16).to(device)
    forget_before = [forget[lo:hi].clone() for lo, hi in windows]
    compact = sk.GradLayout.from_sizes([n for _, n in SEGMENTS], alignment=1)
    r_small = torch.cat([retain[s : s + n] for s, n in SEGMENTS])
    f_small = torch.cat([forget[s : s + n] for s, n in SEGMENTS])

    out, stats = sk.combine_(
        retain, forget, layout=layout, method=method, stats=True, backend=backend
    )

    m = METHODS[method]
    want = truth(r_small, f_small, compact, m, 1.0, 1.0, 1e-10).out
    got = torch.cat([out[s : s + n] for s, n in SEGMENTS])
    torch.testing.assert_close(
        got.float().cpu(), want.to(torch.bfloat16).float().cpu(), rtol=2**-7, atol=1e-6
    )
    for (lo, hi), (s, n), old in zip(windows, SEGMENTS, forget_before):
        edge = torch.cat([out[lo:s], out[s + n : hi]])
        assert torch.isnan(edge).all(), "an element next to a segment was written"
        assert torch.equal(forget[lo:hi].view(torch.int16), old.view(torch.int16)), "forget changed"
    assert torch.isfinite(stats.table).all(), "a NaN sentinel outside the segments was read"
    assert stats.per_segment.dot_fr.shape == (3,)
