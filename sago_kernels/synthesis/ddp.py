"""DDP: the backward passes inside the contexts run under ``no_sync()`` (no per-bucket
all-reduce), and the combine first averages each flat buffer over the model's process group with
one all-reduce (:meth:`Engine.reduce_buffers_`)."""

from __future__ import annotations

import contextlib

import torch

from .engine import Engine
from .params import NamedParams


def ddp_class() -> type | None:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DistributedDataParallel


class DDPEngine(Engine):
    """A ``DistributedDataParallel`` model: its parameters' ``.grad`` view the buffers."""

    kind = "ddp"

    def __init__(self, ddp: object, **groups: object) -> None:
        super().__init__(**groups)
        self._no_sync = ddp.no_sync

    @classmethod
    def detect(
        cls,
        model_or_params: object,
        trainable: NamedParams,
        *,
        data_parallel_group: object | None,
        process_group: object | None,
    ) -> Engine | None:
        ddp = ddp_class()
        if ddp is None or not isinstance(model_or_params, ddp):
            return None
        if data_parallel_group is None:
            data_parallel_group = model_or_params.process_group
        return cls(model_or_params, replica_group=data_parallel_group, shard_group=process_group)

    def backward_context(
        self, task: str, buffer: torch.Tensor
    ) -> contextlib.AbstractContextManager[None]:
        return self._no_sync()
