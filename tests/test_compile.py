"""The combine inside torch.compile (custom ops, no graph break) and inside CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA
from strategies import fill_pair

import sago_kernels as sk
from sago_kernels import ops

LAYOUT = sk.GradLayout.from_sizes([100, 0, 3, 50], alignment=16)
OPS = [torch.ops.sago_kernels.combine_.default, torch.ops.sago_kernels.combine_out.default]


def _weights(alpha=1.0, gamma=0.5, eps=1e-10):
    return torch.tensor([alpha, gamma, eps], dtype=torch.float64)


@pytest.mark.parametrize("stats", [False, True])
@pytest.mark.parametrize("method", ["sago", "pcgrad"])
@pytest.mark.parametrize("op", OPS, ids=["inplace", "out"])
def test_opcheck(backend, device, op, method, stats):
    r, f = fill_pair(LAYOUT, torch.float32, 1, False, device)
    common = (LAYOUT.key, method, _weights(), stats, backend)
    args = (r, f, *common) if op is OPS[0] else (r, f, torch.zeros_like(r), *common)
    torch.library.opcheck(op, args)


def _step(r, f, alpha, gamma, out=None):
    """A compiled training step's shape: arithmetic around the combine, stats consumed."""
    g = r * 1.0
    written, stats = sk.combine_(
        g, f, layout=LAYOUT, method="pcgrad", alpha=alpha, gamma=gamma, out=out, stats=True
    )
    return written * 2.0, stats.total.cos_out_r


@pytest.mark.parametrize("use_out", [False, True])
def test_compiled_step_has_no_graph_break_and_matches_eager(device, use_out):
    torch._dynamo.reset()
    r, f = fill_pair(LAYOUT, torch.float32, 2, False, device)
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager")
    for alpha in (1.0, 0.5):
        out_c = torch.zeros_like(r) if use_out else None
        out_e = torch.zeros_like(r) if use_out else None
        got, cos = compiled(r, f, alpha, 2 * alpha, out_c)
        want, cos_want = _step(r, f, alpha, 2 * alpha, out_e)
        # (the NaN sentinels between segments stay NaN in both)
        torch.testing.assert_close(got, want, equal_nan=True)
        torch.testing.assert_close(cos, cos_want)
        if use_out:
            torch.testing.assert_close(out_c, out_e, equal_nan=True)


def test_changing_alpha_and_gamma_does_not_keep_recompiling(device):
    """Python floats: dynamo compiles once, then once more marking them dynamic, then never."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    r, f = fill_pair(LAYOUT, torch.float32, 3, False, device)
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager")
    for alpha in (1.0, 0.5, 0.25, 3.0, 0.7):
        got, _ = compiled(r, f, alpha, alpha / 2)
        torch.testing.assert_close(got, _step(r, f, alpha, alpha / 2)[0], equal_nan=True)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_inductor_compiles_around_the_op(device):
    torch._dynamo.reset()
    r, f = fill_pair(LAYOUT, torch.float32, 4, False, device)
    got, _ = torch.compile(_step, fullgraph=True)(r, f, 1.0, 0.5)
    torch.testing.assert_close(got, _step(r, f, 1.0, 0.5)[0], equal_nan=True)


def test_what_is_not_supported_under_compile_says_so(device):
    torch._dynamo.reset()
    r, f = fill_pair(LAYOUT, torch.float32, 5, False, device)

    def into_forget(r, f):
        return sk.combine_(r, f, layout=LAYOUT, out=f)

    with pytest.raises(Exception, match="out=forget"):
        torch.compile(into_forget, fullgraph=True, backend="aot_eager")(r, f.clone())


def test_whole_buffer_key_is_not_a_layout(device):
    r = torch.tensor([1.0, -2.0], device=device)
    table = ops.combine_inplace(r, torch.tensor([-1.0, -1.0], device=device), ops.WHOLE_BUFFER,
                                "sago", _weights(gamma=1.0), False, "reference")  # fmt: skip
    assert r.tolist() == [1.0, -1.0] and table.numel() == 0


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["sago", "pcgrad", "blur"])
def test_cuda_graph_capture_and_replay(method):
    layout = sk.GradLayout.from_sizes([4096, 3, 100_000, 0, 77], alignment=64)
    retain = layout.new_buffer(torch.bfloat16, "cuda")
    forget = layout.new_buffer(torch.bfloat16, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)

    def refill():
        retain.copy_(torch.randn(layout.numel, device="cuda", generator=g))
        forget.copy_(torch.randn(layout.numel, device="cuda", generator=g))

    refill()
    sk.combine_(retain.clone(), forget, layout=layout, method=method, stats=True)  # warm up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, stats = sk.combine_(retain, forget, layout=layout, method=method, stats=True)
    for _ in range(2):
        refill()
        r_before = retain.clone()
        graph.replay()
        torch.cuda.synchronize()
        want, want_stats = sk.combine_(r_before, forget, layout=layout, method=method, stats=True)
        assert torch.equal(retain.view(torch.int16), want.view(torch.int16))
        assert torch.equal(stats.table, want_stats.table)
