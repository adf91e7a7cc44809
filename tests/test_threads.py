"""Bits that must not depend on ``torch.get_num_threads()``: the reference and native backends.

A reduction left to torch's threads (``torch.dot`` and its BLAS call) sums in an order that
follows the thread count, so these inputs are large enough that torch splits work over threads:
a segment of 300 000 elements (more than ATen's 32768-element grain and BLAS thresholds) and,
for the statistics' totals, a layout of 6000 segments. The Triton backend does not use CPU
threads (its determinism is checked run to run in ``test_properties.py``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import BACKENDS
from oracle import bits
from strategies import fill_pair, state_for

import sago_kernels as sk

LARGE = sk.GradLayout.from_sizes([300_000, 4099, 0, 1, 65_536, 77], alignment=16)
MANY = sk.GradLayout.from_sizes([(7 * j) % 50 for j in range(6000)], alignment=1)
THREADS = (1, 2, 3)


def _bits_per_thread_count(backend, layout, method, dtype):
    r, f = fill_pair(layout, dtype, 5, False, "cpu")
    threads_before = torch.get_num_threads()
    results = {}
    try:
        for threads in THREADS:
            torch.set_num_threads(threads)
            out, stats = sk.combine_(
                r.clone(), f, layout=layout, method=method, alpha=0.75, gamma=1.5, stats=True,
                backend=backend, **state_for(method, r),
            )  # fmt: skip
            results[threads] = (bits(out).clone(), stats.table.view(torch.int32).clone())
    finally:
        torch.set_num_threads(threads_before)
    return results


def _assert_same_bits(results):
    out_1, table_1 = results[THREADS[0]]
    for threads, (out, table) in results.items():
        assert torch.equal(out, out_1), f"g_final differs with {threads} threads"
        assert torch.equal(table, table_1), f"statistics differ with {threads} threads"


CPU_BACKENDS = [b for b in ("reference", "native") if b in BACKENDS]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_large_segments_give_the_same_bits_for_any_thread_count(backend, method, dtype):
    _assert_same_bits(_bits_per_thread_count(backend, LARGE, method, dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_many_segments_give_the_same_statistics_for_any_thread_count(backend):
    _assert_same_bits(_bits_per_thread_count(backend, MANY, "pcgrad", torch.float32))
