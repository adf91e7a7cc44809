"""Sharded gradients: each rank of a process group holds a slice of every segment.

This is what FSDP2's ``fully_shard`` leaves on a rank (a dim-0 shard of every parameter, some
of them empty), or any split of the flat buffers over ranks. A rank's layout describes its own
slices; segment j is the same parameter on every rank (so every rank has the same number of
segments), and its length may differ or be 0.

What is communicated (sum all-reduces over the group, O(segments) bytes each):

- element-wise methods: nothing (every element is decided on its own);
- projection methods: **one** all-reduce of the per-segment partial dots (f·r, r·r, f·f);
  every rank then derives the same coefficients and applies them to its slice;
- with ``stats=True``, two more: the per-segment sums and the conflict counts behind the
  statistics.

The first combine with a layout on a group also checks, once, that every rank has the same
number of segments, and sums the segment lengths (two small collectives, cached on the layout).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layout import GradLayout

Reduce = Callable[[torch.Tensor], None]


def _dist(name: str = "process_group"):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"Parameter `{name}` needs torch.distributed to be initialised "
            "(`torch.distributed.init_process_group(...)`)."
        )
    return dist


def check_group(process_group: object, *, name: str = "process_group") -> object:
    """The group itself, after checking it is one (``dist.group.WORLD`` is accepted). ``name``:
    the argument it came in as, for the error."""
    dist = _dist(name)
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"Parameter `{name}` should be a torch.distributed ProcessGroup (e.g. "
            f"`dist.group.WORLD`). Found `{type(process_group).__name__}`."
        )
    return process_group


def reducer(process_group: object) -> Reduce:
    """In-place sum of a tensor over the group (asynchronous on NCCL: no host sync)."""
    dist = _dist()

    def reduce(tensor: torch.Tensor) -> None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group)

    return reduce


def global_numels(layout: GradLayout, device: torch.device, process_group: object) -> torch.Tensor:
    """Whole-segment lengths (summed over the ranks) on ``device``, cached on the layout.

    The first call per (layout, group, device) also checks that every rank has the same number
    of segments: a mismatch would silently pair different parameters.
    """
    dist = _dist()
    key = ("sharded-numels", id(process_group), str(device))
    numels = layout._cache.get(key)
    if numels is None:
        counts = torch.tensor([layout.num_segments, -layout.num_segments], device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=process_group)
        most, fewest = counts.tolist()[0], -counts.tolist()[1]
        if most != fewest:
            raise ValueError(
                "Every rank's layout should have the same segments (one per parameter, in the "
                f"same order). Found between {fewest} and {most} segments across the ranks of "
                "`process_group`; build each rank's layout from the same parameter list."
            )
        numels = layout.numel_table(device).clone()
        dist.all_reduce(numels, op=dist.ReduceOp.SUM, group=process_group)
        layout._cache[key] = numels
    return numels
