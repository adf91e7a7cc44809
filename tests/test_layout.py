"""GradLayout: packing, alignment, granularities, views, validation."""

from __future__ import annotations

import contextlib

import numpy as np
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


# --------------------------------------------------------------------------- input validation
# Sizes, offsets and shapes count elements: a float is never rounded, a bool or a string never
# read as a number, and every error names the parameter it is about and what was found.


@contextlib.contextmanager
def _raises(error, *fragments):
    """``pytest.raises(error)``, then check that the message holds each literal fragment."""
    with pytest.raises(error) as info:
        yield info
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@pytest.mark.parametrize(
    "sizes, error, fragments",
    [
        ([2.7], TypeError, ("Parameter `sizes[0]` should be an int >= 0", "Round it yourself")),
        ([3, 2.0], TypeError, ("Parameter `sizes[1]`", "Found `sizes[1] = 2.0`")),
        (["5"], TypeError, ("Parameter `sizes[0]`", "of type str")),
        ([True], TypeError, ("Parameter `sizes[0]`", "of type bool")),
        ([float("inf")], TypeError, ("Parameter `sizes[0]`", "Found `sizes[0] = inf`")),
        ([float("nan")], TypeError, ("Parameter `sizes[0]`",)),
        ([torch.tensor(2.0)], TypeError, ("Parameter `sizes[0]`",)),
        ([torch.tensor(True)], TypeError, ("Parameter `sizes[0]`",)),
        ([torch.tensor([3, 4])], TypeError, ("Parameter `sizes[0]`",)),
        ([np.float32(3.0)], TypeError, ("Parameter `sizes[0]`",)),
        ([np.True_], TypeError, ("Parameter `sizes[0]`",)),
        ([4, -1], ValueError, ("Parameter `sizes[1]` should be an int >= 0", "`sizes[1] = -1`")),
        ([2**63], ValueError, ("Parameter `sizes[0]` should fit in int64",)),
        ([2**62, 2**62], ValueError, ("Parameter `sizes` should add up",)),
        (5, TypeError, ("Parameter `sizes` should be an iterable", "Found `sizes = 5`")),
        ("35", TypeError, ("Parameter `sizes` should be an iterable",)),
        (torch.zeros(2, 2, dtype=torch.int64), TypeError, ("`sizes.shape = (2, 2)`",)),
        ([], ValueError, ("Parameter `sizes` should list at least one segment",)),
    ],
)
def test_from_sizes_refuses_what_is_not_a_count(sizes, error, fragments):
    with _raises(error, *fragments):
        sk.GradLayout.from_sizes(sizes)


def test_integer_scalars_count_as_ints():
    layout = sk.GradLayout.from_sizes(
        [np.int64(3), torch.tensor(5), np.uint8(2)], alignment=np.int32(16)
    )
    assert layout.numels == (3, 5, 2) and layout.alignment == 16
    assert all(type(n) is int for n in (*layout.starts, *layout.numels, layout.numel))
    assert sk.GradLayout.from_sizes(np.array([3, 4])) == sk.GradLayout.from_sizes([3, 4])
    assert sk.GradLayout.from_sizes(torch.tensor([3, 4])) == sk.GradLayout.from_sizes([3, 4])
    assert sk.GradLayout.from_sizes(n for n in (3, 4)) == sk.GradLayout.from_sizes([3, 4])
    slot = sk.ParamSlot(np.int64(2), torch.Size([2, 3]))
    assert slot == sk.ParamSlot(2, (2, 3)) and type(slot.shape) is tuple and slot.numel == 6


@pytest.mark.parametrize(
    "alignment, error",
    [(1.5, TypeError), (16.0, TypeError), (True, TypeError), ("64", TypeError), (0, ValueError),
     (-64, ValueError)],
)  # fmt: skip
def test_alignment_is_a_positive_int_everywhere(alignment, error):
    w = torch.nn.Parameter(torch.zeros(3))
    for build in (
        lambda: sk.GradLayout.from_sizes([3], alignment=alignment),
        lambda: sk.GradLayout.from_params([w], alignment=alignment),
        lambda: sk.GradLayout([0], [3], 3, alignment=alignment),
    ):
        with _raises(error, "Parameter `alignment` should be an int >= 1", "Found `alignment"):
            build()


@pytest.mark.parametrize(
    "build, error, fragments",
    [
        (lambda: sk.ParamSlot(0, (-2, -2)), ValueError, ("`ParamSlot.shape[0]`", "= -2")),
        (lambda: sk.ParamSlot(0, (3, 2.5)), TypeError, ("`ParamSlot.shape[1]`",)),
        (lambda: sk.ParamSlot(0, 5), TypeError, ("`ParamSlot.shape` should be a tuple", "(n,)")),
        (lambda: sk.ParamSlot(0, "ab"), TypeError, ("`ParamSlot.shape`",)),
        (lambda: sk.ParamSlot(1.0, (2,)), TypeError, ("`ParamSlot.offset`",)),
        (lambda: sk.ParamSlot(-1, (2,)), ValueError, ("`ParamSlot.offset`",)),
        (lambda: sk.ParamSlot(0, (2,), name=3), TypeError, ("`ParamSlot.name`",)),
        (lambda: sk.ParamSlot(2**62, (2**62,)), ValueError, ("2**63",)),
        (lambda: sk.Segment(-1, 3), ValueError, ("`Segment.start`",)),
        (lambda: sk.Segment(0, 2.0), TypeError, ("`Segment.numel`",)),
        (lambda: sk.Segment(0, 1, name=b"x"), TypeError, ("`Segment.name`",)),
    ],
)
def test_slots_and_segments_hold_only_counts(build, error, fragments):
    with _raises(error, *fragments):
        build()


@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        (dict(starts=[0.5], numels=[3], numel=10), TypeError, ("`starts[0]`",)),
        (dict(starts=[0], numels=["3"], numel=10), TypeError, ("`numels[0]`",)),
        (dict(starts=[-4], numels=[3], numel=10), ValueError, ("`starts[0]`", ">= 0")),
        (dict(starts=[0], numels=[3], numel=10.0), TypeError, ("`numel`", "10.0")),
        (dict(starts=[0], numels=[3], numel=-1), ValueError, ("`numel`",)),
        (dict(starts=0, numels=[3], numel=10), TypeError, ("`starts` should be an iterable",)),
        (dict(starts=[0, 4], numels=[3, 3], numel=6), ValueError, ("`numel`", "ends at element 7")),
        (dict(starts=[4, 0], numels=[3, 3], numel=8), ValueError, ("`starts[1] = 0`", "sort")),
        (dict(starts=[0], numels=[3], numel=3, names="a"), TypeError, ("`names`",)),
        (dict(starts=[0], numels=[3], numel=3, names=[1]), TypeError, ("`names[0]`",)),
        (dict(starts=[0], numels=[3], numel=3, names=["a", "b"]), ValueError,
         ("`names` should have one entry per segment (1)", "`len(names) = 2`")),
    ],
)  # fmt: skip
def test_explicit_layout_refuses_junk(kwargs, error, fragments):
    with _raises(error, *fragments):
        sk.GradLayout(**kwargs)


def test_from_sizes_names_are_checked():
    with _raises(ValueError, "`names` should have one entry per segment (2)"):
        sk.GradLayout.from_sizes([3, 4], names=["only one"])
    with _raises(TypeError, "`names`"):
        sk.GradLayout.from_sizes([3, 4], names="ab")  # a string is not a list of two names
    assert [s.name for s in sk.GradLayout.from_sizes([3, 4], names=["a", None]).segments] == [
        "a",
        None,
    ]


@pytest.mark.parametrize(
    "params, error, fragments",
    [
        ([sk.ParamSlot(4, (7,))], ValueError, ("`params[0]` should fit", "ends at 11")),
        ([sk.ParamSlot(12, (0,))], ValueError, ("`params[0]` should fit",)),
        ([sk.ParamSlot(0, (5,))], ValueError, ("`params[0]` should lie inside the segments",
                                               "element 3")),
        ([sk.ParamSlot(0, (3,)), sk.ParamSlot(2, (1,))], ValueError,
         ("should not share elements", "`params[0]", "`params[1]")),
        ([sk.ParamSlot(5, (1,)), sk.ParamSlot(4, (3,))], ValueError,
         ("should not share elements",)),
        ([(0, (3,))], TypeError, ("`params[0]` of type tuple",)),
        (sk.ParamSlot(0, (3,)), TypeError, ("`params` should be a sequence of ParamSlot",)),
    ],
)  # fmt: skip
def test_explicit_param_slots_lie_in_segments_without_overlap(params, error, fragments):
    # segments [0, 3) and [4, 7) of a 10-element buffer; element 3 is padding
    with _raises(error, *fragments):
        sk.GradLayout([0, 4], [3, 3], 10, params=params)


def test_explicit_param_slots_that_fit():
    layout = sk.GradLayout(
        [0, 3, 8],
        [3, 2, 2],
        10,
        params=[sk.ParamSlot(8, (2, 1)), sk.ParamSlot(1, (2, 2)), sk.ParamSlot(9, (0,))],
    )  # a slot may span adjacent segments; empty slots take no room
    assert [tuple(v.shape) for v in layout.views(layout.new_buffer())] == [(2, 1), (2, 2), (0,)]


def test_from_params_and_from_module_refuse_junk():
    w = torch.nn.Parameter(torch.zeros(3, 2))
    with _raises(TypeError, "Parameter `params`", "wrap a single tensor in a list"):
        sk.GradLayout.from_params(w)  # would otherwise lay out its rows as parameters
    with _raises(TypeError, "Parameter `params`", "of type int"):
        sk.GradLayout.from_params(5)
    with _raises(TypeError, "`params[0]` = a tuple of (str, Parameter, int)"):
        sk.GradLayout.from_params([("w", w, 1)])
    with _raises(TypeError, "`params[0]` = a tuple of (int, Parameter)"):
        sk.GradLayout.from_params([(0, w)])
    with _raises(TypeError, "`params[1]` of type list"):
        sk.GradLayout.from_params([w, [1.0]])
    with _raises(TypeError, "Parameter `module` should be a torch.nn.Module"):
        sk.GradLayout.from_module([w])
    with _raises(TypeError, "Parameter `trainable_only` should be a bool"):
        sk.GradLayout.from_module(torch.nn.Linear(2, 2), trainable_only="no")


def test_single_checks_numel():
    assert sk.GradLayout.single(np.int64(5)).numel == 5
    with _raises(TypeError, "Parameter `numel`"):
        sk.GradLayout.single(5.5)
    with _raises(ValueError, "Parameter `numel`"):
        sk.GradLayout.single(-1)


# --------------------------------------------------------------------------- mutation survivors
# Each test below kills mutants of layout.py that the tests above let through (issue 24,
# bench/mutation.py): the words of a message that say how to fix the input, the int64 limit
# itself, the slot walk's edge cases, and the cached tables.


def _message(error, build) -> str:
    with pytest.raises(error) as info:
        build()
    return str(info.value)


def test_count_messages_say_the_unit_and_what_one_entry_is():
    assert _message(ValueError, lambda: sk.GradLayout.from_sizes([4, -1])) == (
        "Parameter `sizes[1]` should be an int >= 0 (elements). Found `sizes[1] = -1`."
    )
    assert "should be an int >= 1 (elements; 1 for no padding)." in _message(
        ValueError, lambda: sk.GradLayout.from_sizes([3], alignment=0)
    )
    for build, what in [
        (lambda: sk.GradLayout(0, [3], 10), "(one element offset per segment)."),
        (lambda: sk.GradLayout([0], 3, 10), "(one length per segment)."),
        (lambda: sk.GradLayout.from_sizes(5), "(one segment length each)."),
    ]:
        assert f"should be an iterable of non-negative ints {what}" in _message(TypeError, build)


def test_the_rounding_hint_is_given_for_a_finite_float_only():
    assert _message(TypeError, lambda: sk.GradLayout.from_sizes([2.7])).endswith(
        "of type float. Round it yourself if that is what you mean."
    )
    for junk in ("5", float("inf"), True):
        assert _message(TypeError, lambda: sk.GradLayout.from_sizes([junk])).endswith(
            f"of type {type(junk).__name__}."
        )


def test_the_int64_limit_itself_is_accepted():
    biggest = 2**63 - 1
    assert sk.GradLayout.single(biggest).numel == biggest  # metadata only: nothing allocated
    assert sk.GradLayout.from_sizes([biggest], alignment=1).numel == biggest
    assert sk.ParamSlot(2**62, (2**62 - 1,)).numel == 2**62 - 1  # ends at element 2**63 - 1
    with _raises(ValueError, "2**63"):
        sk.ParamSlot(2**62, (2**62,))


def test_slots_and_segments_store_python_ints():
    slot = sk.ParamSlot(np.int64(2), (np.int64(3),))
    segment = sk.Segment(np.int64(4), torch.tensor(5))
    assert type(slot.offset) is int and type(slot.shape[0]) is int
    assert type(segment.start) is int and type(segment.numel) is int and segment.end == 9


def test_default_slots_carry_the_segment_names():
    layout = sk.GradLayout.from_sizes([3, 4], names=["a", None])
    assert [(p.offset, p.shape, p.name) for p in layout.params] == [
        (0, (3,), "a"),
        (64, (4,), None),
    ]


@pytest.mark.parametrize(
    "params, fragment",
    [
        ([sk.ParamSlot(4, (5,))], "element 7 is in no segment"),  # past the last segment
        ([sk.ParamSlot(0, (0,)), sk.ParamSlot(0, (5,))], "element 3 is in no segment"),
        ([sk.ParamSlot(1, (0,)), sk.ParamSlot(0, (2,)), sk.ParamSlot(1, (1,))],
         "should not share elements"),
    ],
)  # fmt: skip
def test_every_slot_is_checked_past_the_last_segment_and_after_an_empty_one(params, fragment):
    # segments [0, 3) and [4, 7) of a 10-element buffer
    with _raises(ValueError, fragment):
        sk.GradLayout([0, 4], [3, 3], 10, params=params)


def test_a_slot_may_span_many_segments():
    layout = sk.GradLayout([0, 2, 4, 6], [2, 2, 2, 2], 8, params=[sk.ParamSlot(2, (2, 3))])
    assert [tuple(v.shape) for v in layout.views(layout.new_buffer())] == [(2, 3)]


def test_numel_table_is_int64_on_the_device_and_cached_per_device():
    layout = sk.GradLayout.from_sizes([3, 0, 5])
    table = layout.numel_table("cpu")
    assert table.dtype == torch.int64 and table.tolist() == [3, 0, 5]
    assert layout.numel_table(torch.device("cpu")) is table  # one copy per device
    meta = layout.numel_table("meta")
    assert meta.device.type == "meta" and meta.shape == (3,) and meta.dtype == torch.int64
    assert layout.numel_table("cpu") is table


def test_from_key_finds_the_live_layout_only():
    import gc

    layout = sk.GradLayout.from_sizes([3, 4])
    assert sk.GradLayout.from_key(layout.key) is layout
    key = layout.key
    del layout
    gc.collect()
    with _raises(RuntimeError, "garbage-collected"):
        sk.GradLayout.from_key(key)


def test_buffer_messages_name_the_buffer_and_what_was_found():
    layout = sk.GradLayout.from_sizes([3, 5])  # 128 elements
    for buffer, found in [
        (torch.zeros(2, 64), "Found `buffer.shape = (2, 64)`."),  # right numel, not 1-D
        (torch.zeros(256)[::2], "Found `buffer.shape = (128,)`."),  # right numel, strided
        ([0.0] * 128, "Found `buffer.shape = list`."),
    ]:
        for read in (layout.views, layout.segment_views):
            assert _message(ValueError, lambda: read(buffer)) == (
                "Parameter `buffer` should be a contiguous 1-D tensor (see "
                f"`GradLayout.new_buffer`). {found}"
            )
    assert _message(ValueError, lambda: layout.views(torch.zeros(3))) == (
        "Parameter `buffer` should have the layout's 128 elements. Found `buffer.numel() = 3`."
    )


def test_new_buffer_is_made_on_the_device_asked_for():
    buffer = sk.GradLayout.from_sizes([3]).new_buffer(torch.float16, device="meta")
    assert buffer.device.type == "meta" and buffer.dtype == torch.float16 and buffer.shape == (64,)


def test_from_params_keeps_names_alignment_and_every_tensor_after_a_tied_one():
    w, v = nn.Parameter(torch.zeros(2, 3)), nn.Parameter(torch.zeros(5))
    layout = sk.GradLayout.from_params([("w", w), ("w_again", w), ("v", v)], alignment=16)
    assert [s.name for s in layout.segments] == ["w", "v"]
    assert [(p.offset, p.shape, p.name) for p in layout.params] == [
        (0, (2, 3), "w"),
        (16, (5,), "v"),
    ]
    assert layout.alignment == 16 and layout.starts == (0, 16) and layout.numel == 32
    assert sk.GradLayout.from_params([w]).alignment == sk.DEFAULT_ALIGNMENT
    packed = sk.GradLayout.from_module(nn.Linear(3, 2), alignment=1)
    assert packed.alignment == 1 and packed.starts == (0, 6) and packed.numel == 8


def test_hash_depends_on_the_segments():
    # equal layouts hash equal (test_layout_identity); different ones should not all collide,
    # or a dict of layouts (the caches keyed by layout) degrades to a list
    assert len({hash(sk.GradLayout.from_sizes([n])) for n in range(1, 33)}) > 1
