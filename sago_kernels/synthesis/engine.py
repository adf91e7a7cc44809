"""The one interface between ``GradientSynthesizer``'s core and the engine that trains the model.

The core (``sago_kernels/synthesizer.py``) owns the flat buffers, the ``forget()`` / ``retain()``
contexts, ``combine_()`` and the state across steps. What differs between a plain model, DDP,
FSDP2 and DeepSpeed is three things, and an :class:`Engine` answers exactly those:

- where the gradients live: :meth:`Engine.layout`, the tensors the flat buffers describe (the
  parameters, each rank's FSDP2 shards, each rank's DeepSpeed partition);
- how they are reduced: :meth:`Engine.reduce_buffers_` (replicas: one average per buffer before
  the combine) and :attr:`Engine.shard_group` (each rank holds a slice of every segment, so the
  combine's dots are all-reduced over it);
- how ``.grad`` reaches the buffers: :meth:`Engine.grads` (what ``.grad`` is bound to inside a
  context) and :meth:`Engine.backward_context` (around each context's backward passes); an
  engine that keeps the gradients itself (``binds_grad = False``) hands each context's
  gradients over in :meth:`Engine.collect_` and takes g_final back in :meth:`Engine.publish_`.

A new engine is a new module with a subclass and its :meth:`Engine.detect`, listed in
``sago_kernels/synthesis/__init__.py``.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch

from .. import sharding
from ..layout import GradLayout, Granularity
from .params import NamedParams


class Engine:
    """Defaults shared by the engines: gradients bound to buffer views, buffers averaged over
    ``replica_group`` when there is one, dots all-reduced over ``shard_group``."""

    kind: ClassVar[str] = "base"
    binds_grad: ClassVar[bool] = True
    """Whether ``.grad`` is bound to the buffers inside the contexts (False: the engine keeps
    the gradients and :meth:`collect_` copies each context's into its buffer)."""
    adds_in_place: ClassVar[bool] = True
    """Whether every gradient reaches the bound ``.grad`` through autograd's own in-place add
    (one version-counter bump and one post-accumulate-grad hook call each), so that any other
    in-place write there inside a context can be found and refused."""

    def __init__(self, *, replica_group: object | None, shard_group: object | None) -> None:
        self.replica_group = replica_group
        self.shard_group = shard_group

    @classmethod
    def detect(
        cls,
        model_or_params: object,
        trainable: NamedParams,
        *,
        data_parallel_group: object | None,
        process_group: object | None,
    ) -> Engine | None:
        """This engine for the model given, or None when the model is not trained by it (an
        unsupported variant of it is refused here, with the reason)."""
        raise NotImplementedError(f"{cls.__name__} should define detect(), as each engine does.")

    def check_groups(self) -> None:
        """Each group is a process group (checked after the refusals that need no group)."""
        if self.replica_group is not None:
            self.replica_group = sharding.check_group(
                self.replica_group, name="data_parallel_group"
            )
        if self.shard_group is not None:
            self.shard_group = sharding.check_group(self.shard_group, name="process_group")

    @property
    def sharded(self) -> bool:
        """Each rank's buffers hold its own slice of every segment (so does the state)."""
        return self.shard_group is not None

    def one_buffer_problem(self, prefix: str) -> str | None:
        """Why one-buffer mode cannot run on this engine (a sentence starting with ``prefix``),
        or None."""
        if self.replica_group is not None:
            return (
                f"{prefix}, which needs each parameter's retain gradient averaged over the "
                "replicas inside the backward; the synthesizer averages its buffers once, after "
                "the backward passes. Use buffers=2 (the default) with DDP or "
                "data_parallel_group."
            )
        if self.shard_group is not None:
            return (
                f"{prefix}, which is not supported on sharded parameters (process_group): "
                "their dots need an all-reduce per segment. Use buffers=2 (the default)."
            )
        return None

    def layout(
        self, trainable: NamedParams, granularity: Granularity, alignment: int
    ) -> GradLayout:
        """The layout of this rank's flat buffers: one slot per trainable parameter, in order."""
        return GradLayout.from_params(trainable, granularity=granularity, alignment=alignment)

    def grads(self, params: list[torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
        """What each parameter's ``.grad`` is bound to while its gradient goes to ``views``."""
        return views

    def backward_context(
        self, task: str, buffer: torch.Tensor
    ) -> contextlib.AbstractContextManager[None]:
        """Entered around the body of each ``synth.forget()`` / ``synth.retain()``, whose
        gradients go to ``buffer``."""
        return contextlib.nullcontext()

    def collect_(self, task: str, buffer: torch.Tensor, layout: GradLayout) -> None:
        """Add the gradients of the context that ends into ``buffer`` (``binds_grad = False``);
        called when the context's body completed."""
        raise NotImplementedError(
            f"{type(self).__name__} sets binds_grad = False, so it should define collect_()."
        )

    def reduce_buffers_(self, forget: torch.Tensor, retain: torch.Tensor) -> None:
        """Before the combine: average both flat buffers over ``replica_group``, one all-reduce
        per buffer (padding is zero on every rank and stays zero)."""
        group = self.replica_group
        if group is None:
            return
        import torch.distributed as dist

        # NCCL averages inside the all-reduce; gloo has no AVG, so sum, then one scaling pass
        average = dist.get_backend(group) == "nccl"
        world = dist.get_world_size(group)
        for buffer in (forget, retain):
            dist.all_reduce(buffer, op=dist.ReduceOp.AVG if average else dist.ReduceOp.SUM,
                            group=group)  # fmt: skip
            if not average:
                buffer.mul_(1.0 / world)

    def publish_(self, g_final: torch.Tensor, layout: GradLayout) -> None:
        """After the combine: hand g_final to the engine's optimizer step, if it does not read
        ``.grad``."""
