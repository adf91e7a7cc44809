"""combine_grads_: lists of tensors, zero-copy over flat buffers, correct otherwise."""

from __future__ import annotations

import pytest
import torch

import sago_kernels as sk
import sago_kernels.grads as grads_module


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_views_of_flat_buffers_take_the_flat_path_without_copies(
    backend, device, method, monkeypatch
):
    shapes = [(3, 5), (7,), (2, 2, 2), (1,)]
    layout = sk.GradLayout.from_sizes([torch.Size(s).numel() for s in shapes], alignment=16)
    layout = sk.GradLayout(
        layout.starts,
        layout.numels,
        layout.numel,
        alignment=16,
        params=[sk.ParamSlot(s, shp) for s, shp in zip(layout.starts, shapes)],
    )
    g = torch.Generator().manual_seed(0)
    r_buf, f_buf = (torch.randn(layout.numel, generator=g).to(device) for _ in range(2))
    for buf in (r_buf, f_buf):  # padding is zero, as new_buffer makes it
        mask = torch.ones(layout.numel, dtype=torch.bool)
        for s in layout.segments:
            mask[s.start : s.end] = False
        buf[mask.to(device)] = 0
    expected = sk.combine_(r_buf.clone(), f_buf, layout=layout, method=method, backend=backend)

    seen = []
    real = grads_module.combine_

    def spy(retain, forget, **kwargs):
        seen.append((retain.data_ptr(), forget.data_ptr(), retain.numel()))
        return real(retain, forget, **kwargs)

    monkeypatch.setattr(grads_module, "combine_", spy)
    r_views, f_views = layout.views(r_buf), layout.views(f_buf)
    result = sk.combine_grads_(r_views, f_views, method=method, backend=backend)
    assert result is not None and all(a is b for a, b in zip(result, r_views))
    assert seen == [(r_buf.data_ptr(), f_buf.data_ptr(), layout.numels[-1] + layout.starts[-1])]
    for got, want in zip(r_views, layout.views(expected)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("method", list(sk.METHODS))
def test_separate_tensors_fall_back_correctly(backend, device, method):
    g = torch.Generator().manual_seed(1)
    r = [
        torch.randn(4, 3, generator=g).to(device).t(),
        torch.randn(5, generator=g).to(device),
    ]  # non-contiguous
    f = [torch.randn(3, 4, generator=g).to(device), torch.randn(5, generator=g).to(device)]
    # The layout the fallback gathers into (padded starts). Compiled, the statistics' reduction
    # order follows the kernel variant (vector loads for aligned starts, scalar ones otherwise),
    # so only the same layout gives the same bits (seen on an H200: alignment=1 differed).
    layout = sk.GradLayout.from_sizes([12, 5])
    flat_r, flat_f = layout.new_buffer(device=device), layout.new_buffer(device=device)
    for view, t in zip(layout.segment_views(flat_r), r):
        view.copy_(t.reshape(-1))
    for view, t in zip(layout.segment_views(flat_f), f):
        view.copy_(t.reshape(-1))
    expected, stats_flat = sk.combine_(
        flat_r, flat_f, layout=layout, method=method, stats=True, backend=backend
    )
    expected = layout.segment_views(expected)
    out, stats = sk.combine_grads_(r, f, method=method, stats=True, backend=backend)
    assert out[0] is r[0] and out[0].shape == (3, 4)
    assert torch.equal(r[0].reshape(-1), expected[0]) and torch.equal(r[1], expected[1])
    assert torch.equal(stats.table, stats_flat.table)


def test_bad_lists_raise_before_writing(device):
    r = [torch.ones(3, device=device), torch.ones(2, device=device)]
    f = [torch.ones(3, device=device), torch.ones(4, device=device)]
    with pytest.raises(ValueError, match="shape"):
        sk.combine_grads_(r, f)
    with pytest.raises(ValueError, match="equal length"):
        sk.combine_grads_(r, f[:1])
    with pytest.raises(TypeError, match="dtype"):
        sk.combine_grads_([r[0], r[1].double()], [f[0], torch.ones(2, device=device)])
    with pytest.raises(ValueError, match="method"):
        sk.combine_grads_(r[:1], f[:1], method="nope")
    assert all(t.eq(1).all() for t in r)
