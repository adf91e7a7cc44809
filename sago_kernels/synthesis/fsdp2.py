"""FSDP2 (``fully_shard``): the buffers hold each rank's local shard of every parameter, and each
``.grad`` is bound to a DTensor over its view, so FSDP2's reduce-scatter (which averages over the
ranks) accumulates straight into the buffers: no gradient of FSDP2's own, no copy. The combine's
dots are all-reduced over the mesh's group."""

from __future__ import annotations

import torch

from ..layout import GradLayout, Granularity
from .engine import Engine
from .params import NamedParams


def dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def _mesh_group(params: NamedParams) -> object | None:
    """The process group of FSDP2-sharded parameters (``fully_shard``: DTensors sharded on dim 0
    of a 1-D mesh), or None when none is a DTensor; anything in between is refused."""
    dtensor = dtensor_class()
    if dtensor is None or not any(isinstance(p, dtensor) for _, p in params):
        return None
    from torch.distributed.tensor import Shard

    meshes = set()
    for name, p in params:
        if not isinstance(p, dtensor):
            raise ValueError(
                f"Some trainable parameters are DTensors (FSDP2 `fully_shard`) and `{name}` is "
                "not: the flat buffers hold one kind. Shard the whole model (apply fully_shard "
                "to the root module too) or freeze the unsharded parameters."
            )
        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise ValueError(
                f"Parameter `{name}` is a DTensor with placements {tuple(p.placements)} on a "
                f"{p.device_mesh.ndim}-D mesh; the synthesizer supports FSDP2's own sharding, "
                "(Shard(0),) on a 1-D mesh (HSDP and tensor parallelism are not supported)."
            )
        meshes.add(p.device_mesh)
    if len(meshes) != 1:
        raise ValueError(
            f"The trainable parameters are sharded over {len(meshes)} device meshes; the "
            "synthesizer's one all-reduce of dots needs them all on one."
        )
    return next(iter(meshes)).get_group()


class FSDP2Engine(Engine):
    """FSDP2-sharded parameters: buffers of the local shards, ``.grad`` DTensors over them."""

    kind = "fsdp2"
    adds_in_place = False  # its reduce-scatter adds into the DTensor .grad, not AccumulateGrad

    @classmethod
    def detect(
        cls,
        model_or_params: object,
        trainable: NamedParams,
        *,
        data_parallel_group: object | None,
        process_group: object | None,
    ) -> Engine | None:
        group = _mesh_group(trainable)
        if group is None:
            return None
        return cls(
            replica_group=data_parallel_group,
            shard_group=group if process_group is None else process_group,
        )

    def one_buffer_problem(self, prefix: str) -> str | None:
        return (
            f"{prefix}, which is not supported on FSDP2-sharded parameters (their dots need an "
            "all-reduce per segment). Use buffers=2 (the default)."
        )

    def layout(
        self, trainable: NamedParams, granularity: Granularity, alignment: int
    ) -> GradLayout:
        with torch.no_grad():  # each rank lays out its local shard of every parameter
            shards = [(name, p.to_local()) for name, p in trainable]
        return GradLayout.from_params(shards, granularity=granularity, alignment=alignment)

    def grads(self, params: list[torch.Tensor], views: list[torch.Tensor]) -> list[torch.Tensor]:
        dtensor = dtensor_class()
        return [
            dtensor.from_local(v, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
            for p, v in zip(params, views)
        ]
