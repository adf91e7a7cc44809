"""Fuzz every method × dtype × backend against the independent float64 oracle (oracle.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from oracle import assert_output_matches, assert_stats_match, bits, segment_mask, truth
from strategies import CONFIGS, DTYPES, EPS, SEEDS, WEIGHTS, configured, fill_pair, layouts

import sago_kernels as sk
from sago_kernels.methods import METHODS


def _run(backend, config, *args, **kwargs):
    with configured(backend, config):
        return sk.combine_(*args, backend=backend, **kwargs)


# GRU has its own oracle with its state: tests/test_gru.py
@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].needs_state])
@given(
    layout=layouts(),
    dtype=st.sampled_from(DTYPES),
    seed=SEEDS,
    specials=st.booleans(),
    alpha=WEIGHTS,
    gamma=WEIGHTS,
    eps=EPS,
    config=st.sampled_from(CONFIGS),
    use_out=st.booleans(),
)
def test_combine_matches_float64_reference(
    backend, device, method, layout, dtype, seed, specials, alpha, gamma, eps, config, use_out
):
    m = METHODS[method]
    retain, forget = fill_pair(layout, dtype, seed, specials, device)
    want = truth(retain, forget, layout, m, alpha, gamma, eps)
    retain_before, forget_before = retain.clone(), forget.clone()
    out = torch.full_like(retain, 7.0) if use_out else None

    written, stats = _run(
        backend, config, retain, forget, layout=layout, method=method,
        alpha=alpha, gamma=gamma, eps=eps, out=out, stats=True,
    )  # fmt: skip

    context = f"{backend}/{method}/{dtype}/{layout}"
    assert written is (out if use_out else retain)
    assert_output_matches(written, want, layout, dtype, context=context)
    outside = ~segment_mask(layout, device)
    # nothing outside the segments is written; forget is never written
    assert torch.equal(bits(written)[outside], bits(out if use_out else retain_before)[outside])
    assert torch.equal(bits(forget), bits(forget_before))
    if use_out:
        assert torch.equal(bits(retain), bits(retain_before)), "out= must leave retain as is"
    if not specials:
        assert_stats_match(stats.table, retain_before, forget, written, layout, context=context)
    else:
        # a non-finite element shows in its segment's statistics
        for j, s in enumerate(layout.segments):
            if (
                not torch.isfinite(retain_before[s.start : s.end]).all()
                or not torch.isfinite(forget[s.start : s.end]).all()
            ):
                assert not torch.isfinite(stats.per_segment.dot_fr[j]), context
