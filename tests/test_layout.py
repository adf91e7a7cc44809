"""GradLayout: packing, alignment, granularities, views, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sago_kernels as sk


def test_from_sizes_pads_starts_and_end():
    layout = sk.GradLayout.from_sizes([10, 0, 3, 16], alignment=16)
    assert layout.starts == (0, 16, 16, 32)
    assert layout.numels == (10, 0, 3, 16)
    assert layout.numel == 48 and layout.segment_numel == 29
    assert layout.start_alignment == 16
    assert sk.GradLayout.from_sizes([3, 5], alignment=1).starts == (0, 3)
    assert sk.GradLayout.from_sizes([3, 5], alignment=1).start_alignment == 1


def test_default_alignment_and_buffers():
    layout = sk.GradLayout.from_sizes([3, 5])
    assert layout.starts == (0, sk.DEFAULT_ALIGNMENT)
    buf = layout.new_buffer(dtype=torch.bfloat16)
    assert buf.dtype == torch.bfloat16 and buf.numel() == layout.numel and not buf.any()
    views = layout.views(buf)
    views[1].fill_(2.0)
    assert buf[sk.DEFAULT_ALIGNMENT : sk.DEFAULT_ALIGNMENT + 5].eq(2).all() and buf.sum() == 10


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.block = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        self.head = nn.Linear(3, 7, bias=False)
        self.head.weight = nn.Parameter(torch.randn(7, 3))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_granularities_of_a_module():
    model = _Tiny()
    per_param = sk.GradLayout.from_module(model)
    assert per_param.num_segments == 6  # emb.w, lin.w, lin.b, ln.w, ln.b, head.w (frozen skipped)
    assert [p.shape for p in per_param.params][:3] == [(7, 4), (3, 4), (3,)]
    per_module = sk.GradLayout.from_module(model, granularity="module")
    assert [s.name for s in per_module.segments] == ["emb", "block.0", "block.1", "head"]
    assert per_module.numels == (28, 15, 6, 21)
    # parameters of one module are packed back to back inside its segment
    lin_w, lin_b = per_module.params[1], per_module.params[2]
    assert lin_b.offset == lin_w.offset + 12
    glob = sk.GradLayout.from_module(model, granularity="global")
    assert glob.num_segments == 1 and glob.segment_numel == 70
    with_frozen = sk.GradLayout.from_module(model, trainable_only=False)
    assert with_frozen.num_segments == 8


def test_views_share_memory_and_shapes():
    model = _Tiny()
    layout = sk.GradLayout.from_module(model, granularity="module")
    buf = layout.new_buffer()
    views = layout.views(buf)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [tuple(v.shape) for v in views] == [tuple(p.shape) for p in trainable]
    lo, hi = buf.data_ptr(), buf.data_ptr() + buf.numel() * 4
    assert all(lo <= v.data_ptr() < hi for v in views)
    with pytest.raises(ValueError, match="elements"):
        layout.views(torch.zeros(3))


def test_from_params_dedups_tied_and_needs_names_for_modules():
    w = nn.Parameter(torch.zeros(4, 2))
    assert sk.GradLayout.from_params([w, w]).num_segments == 1
    with pytest.raises(ValueError, match="named_parameters"):
        sk.GradLayout.from_params([w], granularity="module")
    with pytest.raises(ValueError, match="granularity"):
        sk.GradLayout.from_params([w], granularity="layer")
    with pytest.raises(ValueError, match="empty"):
        sk.GradLayout.from_params([])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(starts=[0, 4], numels=[5, 1], numel=10), "non-overlapping"),
        (dict(starts=[0, 6], numels=[5, 1], numel=10, alignment=4), "multiple"),
        (dict(starts=[0], numels=[11], numel=10), "past"),
        (dict(starts=[0], numels=[1, 2], numel=10), "one entry per segment"),
        (dict(starts=[], numels=[], numel=10), "at least one segment"),
        (dict(starts=[0], numels=[-1], numel=10), ">= 0"),
        (dict(starts=[0], numels=[1], numel=10, alignment=0), "alignment"),
    ],
)
def test_explicit_layout_is_validated(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        sk.GradLayout(**kwargs)


def test_layout_identity():
    a = sk.GradLayout.from_sizes([3, 4])
    assert a == sk.GradLayout.from_sizes([3, 4]) and hash(a) == hash(
        sk.GradLayout.from_sizes([3, 4])
    )
    assert a != sk.GradLayout.from_sizes([4, 3])
    assert "num_segments=2" in repr(a)
