"""combine_grads_: lists of tensors, zero-copy over flat buffers, correct otherwise."""

from __future__ import annotations

import pytest
import torch

import sago_kernels as sk
import sago_kernels.grads as grads_module


@pytest.mark.parametrize("method", [m for m in sk.METHODS if not sk.METHODS[m].needs_state])
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


@pytest.mark.parametrize("method", [m for m in sk.METHODS if not sk.METHODS[m].needs_state])
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


@pytest.mark.parametrize("role", ["retain", "forget"])
@pytest.mark.parametrize("kind", ["coo", "csr"])
def test_sparse_gradients_get_the_combines_error(role, kind):
    """As combine_ says for a sparse buffer (torch's own errors were "Cannot access data
    pointer", "share memory (expanded)" or a raw `is_contiguous` error)."""
    dense = [torch.ones(3, 2), torch.ones(4)]
    sparse = dense[0].to_sparse() if kind == "coo" else dense[0].to_sparse_csr()
    r, f = [d.clone() for d in dense], [d.clone() for d in dense]
    (r if role == "retain" else f)[0] = sparse
    with pytest.raises(TypeError, match=rf"`{role}_grads\[0\]` should be a dense .*to_dense"):
        sk.combine_grads_(r, f)
    assert all(t.to_dense().eq(1).all() for t in r)


# --------------------------------------------------------------------------- memory on elements


def _separate_copies(tensors):
    return [t.detach().clone() for t in tensors]


def _interleavings(device):
    """(retain views, forget views) of one storage that share no element."""
    x = (torch.arange(24.0, device=device) - 11) / 3
    grid = ((torch.arange(60.0, device=device) - 29) / 7).view(6, 10)
    return {
        # ascending contiguous views, same offsets: the flat path over overlapping spans
        "blocks": ([x[0:2], x[5:8]], [x[3:5], x[8:11]]),
        "odd_even": ([x[0::2]], [x[1::2]]),
        "grid_columns": ([grid[:, 0:3], grid[:, 7]], [grid[:, 3:6], grid[:, 6]]),
        "strided_rows": ([grid[0::2, 1:]], [grid[1::2, :9]]),
    }


@pytest.mark.parametrize("case", ["blocks", "odd_even", "grid_columns", "strided_rows"])
def test_views_that_interleave_without_sharing_an_element_are_accepted(
    backend, device, case, monkeypatch
):
    r, f = _interleavings(device)[case]
    r_copy, f_copy = _separate_copies(r), _separate_copies(f)
    f_before = _separate_copies(f)
    sk.combine_grads_(r_copy, f_copy, method="pcgrad", backend="reference")
    seen = []
    real = grads_module.combine_

    def spy(retain, forget, **kwargs):
        seen.append(retain.data_ptr())
        return real(retain, forget, **kwargs)

    monkeypatch.setattr(grads_module, "combine_", spy)
    sk.combine_grads_(r, f, method="pcgrad", backend=backend)
    if case == "blocks":  # same relative offsets: no gather, even though the spans overlap
        assert seen == [r[0].data_ptr()]
    for got, want in zip(r, r_copy):
        torch.testing.assert_close(got, want)
    for got, want in zip(f, f_before):
        assert torch.equal(got, want), "forget is never written"


def _sharing_cases(device):
    x = torch.arange(60.0, device=device)
    a, b = torch.ones(3, device=device), torch.ones(2, device=device)
    grid = torch.arange(60.0, device=device).view(6, 10)
    return {
        "same tensor in both lists": ([a, b], [torch.ones(3, device=device), a[1:]], "forget"),
        "strided views meet": ([x[0:30:2]], [x[3:48:3]], "forget"),  # at 6, 12, ...
        "grid column inside a block": (
            [grid[:, 0:3], grid[:, 9]],
            [grid[:, 4:7], grid[:, 2]],
            "forget",
        ),
        "flat views shifted by one": ([x[0:2], x[2:4]], [x[1:3], x[3:5]], "forget"),
        "retain twice": ([a, a], [torch.ones(3, device=device), x[:3]], "retain_grads"),
        "retain views overlap": ([x[0:4], x[3:6]], [x[10:14], x[14:17]], "retain_grads"),
        "expanded retain": ([b[:1].expand(3)], [a], "share memory: it is written"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "same tensor in both lists",
        "strided views meet",
        "grid column inside a block",
        "flat views shifted by one",
        "retain twice",
        "retain views overlap",
        "expanded retain",
    ],
)
def test_shared_memory_is_refused_before_writing(device, case):
    r, f, fragment = _sharing_cases(device)[case]
    storages = {t.untyped_storage().data_ptr(): t for t in r + f}
    before = {p: _storage_bytes(t) for p, t in storages.items()}
    with pytest.raises(ValueError, match=fragment):
        sk.combine_grads_(r, f, method="sum")
    assert all(torch.equal(_storage_bytes(storages[p]), v) for p, v in before.items())


def _storage_bytes(t):
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def test_negative_views(backend, device):
    """combine_grads_ gathers forget views with the negative bit (which resolves them) and refuses
    retain views with it (a resolved copy would take the write)."""
    layout = sk.GradLayout.from_sizes([3, 5], alignment=16)
    g = torch.Generator().manual_seed(4)
    r_buf, f_buf = (torch.randn(layout.numel, generator=g).to(device) for _ in range(2))
    expected = [t.clone() for t in layout.segment_views(r_buf)]
    sk.combine_grads_(expected, [-t for t in layout.segment_views(f_buf)], method="sum",
                      backend=backend)  # fmt: skip
    r_views = layout.segment_views(r_buf)
    sk.combine_grads_(r_views, [torch._neg_view(t) for t in layout.segment_views(f_buf)],
                      method="sum", backend=backend)  # fmt: skip
    for got, want in zip(r_views, expected):
        assert torch.equal(got, want)
    before = r_buf.clone()
    with pytest.raises(ValueError, match="resolve_neg"):
        sk.combine_grads_([torch._neg_view(t) for t in layout.segment_views(r_buf)],
                          layout.segment_views(f_buf), method="sum", backend=backend)  # fmt: skip
    assert torch.equal(r_buf, before)


@pytest.mark.parametrize("path", ["flat", "gather"])
def test_in_place_contract_holds_through_combine_grads(backend, device, path):
    layout = sk.GradLayout.from_sizes([3, 5], alignment=16)

    def lists():
        g = torch.Generator().manual_seed(5)
        r_buf, f_buf = (torch.randn(layout.numel, generator=g).to(device) for _ in range(2))
        if path == "flat":
            return r_buf, layout.segment_views(r_buf), layout.segment_views(f_buf)
        return r_buf, [v.clone() for v in layout.segment_views(r_buf)], layout.segment_views(f_buf)

    _, r, f = lists()
    versions = [t._version for t in r]
    sk.combine_grads_(r, f, method="sago", backend=backend)
    assert all(t._version > v for t, v in zip(r, versions)), "every retain tensor is counted"

    _, r, f = lists()
    x = torch.ones_like(r[0], requires_grad=True)
    y = (x * r[0]).sum()
    sk.combine_grads_(r, f, method="sago", backend=backend)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()

    _, r, f = lists()
    with torch.inference_mode():
        frozen = [t.clone() for t in r]
    before = [t.clone() for t in frozen]
    with pytest.raises(ValueError, match="inference_mode"):
        sk.combine_grads_(frozen, f, method="sago", backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(frozen, before))

    _, r, f = lists()
    leaf = r[1].detach().requires_grad_()
    before = [t.clone() for t in r]
    with pytest.raises(ValueError, match="require grad"):
        sk.combine_grads_([r[0], leaf], f, method="sago", backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(r, before))
