"""One process: each parameter's ``.grad`` is bound to its view of the flat buffers.

Also the engine of parameters sharded by hand (``process_group``: each rank holds its own slice
of every parameter) and of a model replicated by other means than DDP (``data_parallel_group``).
"""

from __future__ import annotations

from .engine import Engine
from .params import NamedParams


class LocalEngine(Engine):
    """The parameters themselves: their ``.grad`` views the buffers, autograd adds in place."""

    kind = "local"

    @classmethod
    def detect(
        cls,
        model_or_params: object,
        trainable: NamedParams,
        *,
        data_parallel_group: object | None,
        process_group: object | None,
    ) -> Engine:
        return cls(replica_group=data_parallel_group, shard_group=process_group)
