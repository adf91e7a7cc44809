"""A combine never waits for the device: no host reads of tensor values, no sync on CUDA."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import HAS_CUDA
from strategies import state_for

import sago_kernels as sk

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextlib.contextmanager
def forbid_host_reads(monkeypatch):
    """Any Python-side read of a tensor's value raises (what a data-dependent branch needs)."""

    def boom(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host inside a combine")

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, boom)
        yield


class _RecordingKernel:
    """Stands in for a Triton kernel: records launches, runs nothing (the interpreter itself
    reads tensors on the host, so the real kernels cannot run under ``forbid_host_reads``)."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.name, grid))


LAUNCHES = {  # (method kind, stats) -> launches, as documented in kernels/launch.py
    ("element", False): 1, ("element", True): 3, ("projection", False): 4, ("projection", True): 6,
    ("weighting", False): 3, ("weighting", True): 5,  # weights from torch ops, not a kernel
}  # fmt: skip


@pytest.mark.parametrize("stats", [False, True])
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_combine_reads_no_tensor_values_on_the_host(backend, device, method, stats, monkeypatch):
    layout = sk.GradLayout.from_sizes([40, 0, 7, 90], alignment=16)
    r, f = torch.randn(layout.numel, device=device), torch.randn(layout.numel, device=device)
    state = state_for(method, r)
    sk.combine_(
        r.clone(), f, layout=layout, method=method, stats=stats, backend=backend, **state
    )  # caches the plan
    log = []
    if backend == "triton" and not HAS_CUDA:
        from sago_kernels.kernels import launch

        for name in (
            "_chunk_pass_kernel",
            "_segment_reduce_kernel",
            "_coefficients_kernel",
            "_geometry_kernel",
        ):
            monkeypatch.setattr(launch, name, _RecordingKernel(name, log))
    with forbid_host_reads(monkeypatch):
        sk.combine_(r, f, layout=layout, method=method, stats=stats, backend=backend, **state)
    if log:
        m = sk.METHODS[method]
        # weightings and GRU: their weights come from torch ops, not a kernel
        torch_weights = m.weighting is not None or m.needs_state
        kind = "weighting" if torch_weights else "projection" if m.is_projection else "element"
        assert len(log) == LAUNCHES[(kind, stats)], log


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("method", list(sk.METHODS))
def test_cuda_combine_never_synchronises(method):
    layout = sk.GradLayout.from_sizes([4096, 3, 100_000, 0, 77], alignment=64)
    r = torch.randn(layout.numel, device="cuda", dtype=torch.bfloat16)
    f = torch.randn(layout.numel, device="cuda", dtype=torch.bfloat16)
    state = state_for(method, r)
    sk.combine_(r.clone(), f, layout=layout, method=method, stats=True, **state)  # compile, plan
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, stats = sk.combine_(r, f, layout=layout, method=method, stats=True, **state)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(stats.table).all()
