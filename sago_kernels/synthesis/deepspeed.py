"""DeepSpeed ZeRO stages 1-3: the gradients live in the engine's own partitions.

DeepSpeed reduces each backward's gradients (ZeRO-2/3: reduce-scatter during the backward;
ZeRO-1: at the accumulation boundary) into a partition of its own, of which each rank holds
1/world: its slice of the flat gradient, averaged over the data-parallel ranks. Autograd's
``.grad`` is DeepSpeed's business, so nothing is bound to the synthesizer's buffers. Instead each
``synth.forget()`` / ``synth.retain()`` is one DeepSpeed accumulation window:

- on entry, DeepSpeed's gradient state is cleared and the boundary is off, so any number of
  ``engine.backward`` calls inside accumulate as DeepSpeed's micro-batches do;
- on exit, the window's reduction is finished as at a boundary (ZeRO-1 reduces then; ZeRO-2
  builds its partition; ZeRO-3 has it already) and this rank's partition is added into the
  task's flat buffer, which is laid out as that partition: one segment per parameter, this
  rank's fragment of it (empty where the rank holds none of it).

``combine_()`` then runs the sharded combine on the partitions (one all-reduce of per-segment
dots over DeepSpeed's data-parallel group, as for FSDP2) and copies g_final into DeepSpeed's
partition, with the boundary on, so ``engine.step()`` clips and steps on g_final as on any
gradient of its own.

ZeRO-3 with ``granularity="parameter"`` (the default) goes further: DeepSpeed's per-parameter
partition tensors are made views of the task's buffer at each context's entry (its flat
partition buffer is then released), so its reduce-scatter adds straight into the buffers, nothing
is copied at the context's end, and its step reads g_final where the combine wrote it.

Memory per rank, besides DeepSpeed's own: ZeRO-3 (in place) one partition (two buffers of N/world
elements, plus alignment padding, in place of DeepSpeed's one); ZeRO-1/2 and ZeRO-3 at other
granularities two partitions (DeepSpeed rebuilds its partition at each boundary, so a task's
gradient cannot stay there while the other task's backward passes run; the Trainer interleaves
them per micro-batch; each window's partition is freed when the next window begins). Never a
whole-model gradient. Read from DeepSpeed 0.19.8's source: ZeRO-1/2
expose the partition as each parameter's ``_hp_mapping`` fragment of
``optimizer.averaged_gradients`` (what ``deepspeed.utils.safe_get_full_grad`` reads), rebuilt at
each boundary; ZeRO-3 keeps one tensor per parameter (views of
``optimizer.grad_partitions_flat_buffer``, what ``deepspeed.utils.safe_get_local_grad`` returns)
for the whole run, and its reduce-scatter copies into them at the first backward after
``zero_grad`` and adds after (the in-place mode always adds: the buffer holds the task's gradient
so far). What hides the partitions or changes what they hold is refused at construction
(:func:`_unsupported`); do not call ``engine.offload_states()`` on an engine the synthesizer
drives in place.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator

import torch

from ..layout import GradLayout, Granularity, ParamSlot
from .engine import Engine
from .params import NamedParams

TESTED = "0.19.8"
"""The DeepSpeed version whose source this module was written from and tested with."""


def deepspeed_engine_class() -> type | None:
    """DeepSpeed's engine class, if DeepSpeed was imported (it is never imported here)."""
    if sys.modules.get("deepspeed") is None:
        return None
    from deepspeed.runtime.engine import DeepSpeedEngine

    return DeepSpeedEngine


def _unsupported(ds: object) -> str | None:
    """Why the synthesizer cannot run on this DeepSpeed engine, with the alternative, or None."""
    stage = int(ds.zero_optimization_stage())
    config = "the DeepSpeed config"
    if stage not in (1, 2, 3):
        return (
            f"DeepSpeed without ZeRO (stage {stage}) keeps a whole gradient per rank, which "
            "the synthesizer would have to copy twice a step. Use ZeRO stage 1, 2 or 3, or "
            "torch's DistributedDataParallel (one all-reduce per flat buffer)."
        )
    if type(ds).__name__ == "PipelineEngine":
        return "DeepSpeed pipeline parallelism is not supported (its backward is its own loop)."
    if getattr(ds, "mpu", None) is not None:
        return (
            "DeepSpeed with model (tensor) parallelism is not supported: each rank's partition "
            "would hold slices of tensor-parallel shards the combine's dots do not see whole. "
            "Use ZeRO data parallelism alone."
        )
    if ds.fp16_enabled():
        return (
            f"DeepSpeed fp16 (loss scaling) is not supported: its partitions hold gradients "
            "multiplied by the loss scale, so the methods that are not scale-invariant "
            "(nash_mtl's cap, the weightings' small-norm thresholds, GRU's average) would see "
            f"the scale. Use bf16 or fp32 in {config}."
        )
    if not ds.managed_gradient_accumulation():
        return (
            "DeepSpeed with `managed_gradient_accumulation: false` is not supported: the "
            "synthesizer ends each context's accumulation window itself. Remove that setting."
        )
    optimizer = ds.optimizer
    name = type(optimizer).__name__
    if stage in (1, 2):
        if name != "DeepSpeedZeroOptimizer":
            return (
                f"DeepSpeed ZeRO-{stage} with the {name} optimizer wrapper is not supported: it "
                "keeps the gradients outside the ZeRO partitions the synthesizer reads "
                "(DeepSpeedZeroOptimizer's). Use a DeepSpeed config whose ZeRO optimizer is "
                "DeepSpeed's own (no BF16_Optimizer/fp16 wrapper)."
            )
        if optimizer.cpu_offload:
            return _offload(stage)
        if getattr(optimizer, "zenflow", False):
            return "DeepSpeed ZenFlow is not supported (it steps part of the model on its own)."
        groups = {id(g) for g in optimizer.real_dp_process_group}
        if len(groups) != 1:
            return (
                "DeepSpeed with several data-parallel groups (mixture-of-experts parameter "
                "groups) is not supported: the combine's dots need one group."
            )
        needed = ("averaged_gradients", "finalize_gradient_accumulation_boundary")
    else:
        if name != "DeepSpeedZeroOptimizer_Stage3":
            return f"DeepSpeed ZeRO-3 with the {name} optimizer wrapper is not supported."
        if optimizer.offload_optimizer or optimizer.offload_param:
            return _offload(stage)
        needed = ("grad_partitions_flat_buffer", "fp16_groups", "dp_process_group")
    missing = [attr for attr in needed if not hasattr(optimizer, attr)]
    if missing:
        import deepspeed

        return (
            f"This DeepSpeed ({deepspeed.__version__}) lacks {missing} on its ZeRO-{stage} "
            f"optimizer, where the synthesizer finds the gradient partitions (written from "
            f"and tested with DeepSpeed {TESTED})."
        )
    return None


def _same_group(a: object, b: object) -> bool:
    if a is b:
        return True
    import torch.distributed as dist

    return dist.get_process_group_ranks(a) == dist.get_process_group_ranks(b)


def _each(foreach, single, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``foreach(targets, sources)`` in one call where the dtypes agree (the parameters' dtype
    is DeepSpeed's accumulation dtype), else pair by pair (converting)."""
    if not pairs:
        return
    if all(a.dtype == b.dtype for a, b in pairs):
        foreach([a for a, _ in pairs], [b for _, b in pairs])
    else:
        for a, b in pairs:
            single(a, b)


def _offload(stage: int) -> str:
    return (
        f"DeepSpeed ZeRO-{stage} with optimizer or parameter offload is not supported: the "
        "gradient partitions then live in host (or NVMe) buffers that the engine fills and "
        "reads inside its own step, out of the combine's reach. Remove `offload_optimizer` / "
        "`offload_param` from the DeepSpeed config (ZeRO-3 alone holds N/world of each state "
        "per rank)."
    )


class DeepSpeedEngineAdapter(Engine):
    """A ``deepspeed.DeepSpeedEngine`` at ZeRO stage 1, 2 or 3: buffers of this rank's
    gradient partition, filled at the end of each context, g_final copied back for
    ``engine.step()``."""

    kind = "deepspeed"
    binds_grad = False
    adds_in_place = False

    def __init__(self, ds: object, *, shard_group: object) -> None:
        super().__init__(replica_group=None, shard_group=shard_group)
        self.ds = ds
        self.optimizer = ds.optimizer
        self.stage = int(ds.zero_optimization_stage())
        self.params: list[torch.Tensor] = []
        self.fragments: list[tuple[int, int]] = []  # (start in the flat parameter, length)
        self.in_place = False  # ZeRO-3: DeepSpeed reduces straight into the synthesizer's buffers
        self._layout: GradLayout | None = None
        self._pointed_at: torch.Tensor | None = None  # the buffer DeepSpeed's partitions view

    @classmethod
    def detect(
        cls,
        model_or_params: object,
        trainable: NamedParams,
        *,
        data_parallel_group: object | None,
        process_group: object | None,
    ) -> Engine | None:
        engine_class = deepspeed_engine_class()
        if engine_class is None or not isinstance(model_or_params, engine_class):
            return None
        problem = _unsupported(model_or_params)
        if problem is not None:
            raise ValueError(problem)
        if data_parallel_group is not None or process_group is not None:
            raise ValueError(
                "Parameters `data_parallel_group` and `process_group` should be None with a "
                "DeepSpeed engine: it reduces the gradients over its own data-parallel group, "
                "which the synthesizer takes from it."
            )
        optimizer = model_or_params.optimizer
        stage = int(model_or_params.zero_optimization_stage())
        group = optimizer.dp_process_group
        for name, p in trainable:
            covered = hasattr(p, "ds_id") if stage == 3 else hasattr(p, "_hp_mapping")
            if not covered:
                raise ValueError(
                    f"Parameter `{name}` requires grad but is not one of the DeepSpeed "
                    "optimizer's parameters, so DeepSpeed keeps no gradient for it. Pass all "
                    "trainable parameters to `deepspeed.initialize`, or freeze it."
                )
            if stage == 3 and not _same_group(getattr(p, "ds_process_group", group), group):
                raise ValueError(
                    f"Parameter `{name}` is partitioned over another group than the "
                    "optimizer's data-parallel group (ZeRO++ hierarchical partitioning or "
                    "MiCS): not supported, the combine's dots need one group."
                )
        return cls(model_or_params, shard_group=group)

    def one_buffer_problem(self, prefix: str) -> str | None:
        return (
            f"{prefix}, which DeepSpeed does not allow: it reduces each gradient into its own "
            "partition, so the combine can only read a task's gradients at the end of its "
            "context. Use buffers=2 (the default)."
        )

    # ------------------------------------------------------------------ where they live
    def layout(
        self, trainable: NamedParams, granularity: Granularity, alignment: int
    ) -> GradLayout:
        """One segment per parameter: this rank's fragment of it in DeepSpeed's partition."""
        self.params = [p for _, p in trainable]
        if self.stage == 3:
            import torch.distributed as dist

            rank = dist.get_rank(self.shard_group)
            self.fragments = []
            for p in self.params:
                size = p.partition_numel()
                start = min(rank * size, p.ds_numel)
                self.fragments.append((start, min(size, p.ds_numel - start)))
            partitions = self._stage3_partitions() or {}
            dtypes = {t.dtype for t in partitions.values()} | {p.dtype for p in self.params}
            self.in_place = bool(partitions) and granularity == "parameter" and len(dtypes) == 1
            if self.in_place:
                self._layout = self._in_place_layout(trainable, alignment)
                return self._layout
            self._stage3_views = self._stage3_partition_views()
        else:
            self.fragments = [
                (0, 0)
                if p._hp_mapping is None
                else (
                    p._hp_mapping.lp_fragment_address.start,
                    p._hp_mapping.lp_fragment_address.numel,
                )
                for p in self.params
            ]
        shapes = [
            (name, torch.empty(length, device="meta"))
            for (name, _), (_, length) in zip(trainable, self.fragments)
        ]
        return GradLayout.from_params(shapes, granularity=granularity, alignment=alignment)

    def _stage3_partitions(self) -> dict[int, torch.Tensor]:
        """ZeRO-3's own tensor per parameter (``ds_id``) that its reduce-scatter writes a
        parameter's partition into (copying at its first backward after ``zero_grad``, adding
        after): views of ``grad_partitions_flat_buffer``; what ``safe_get_local_grad`` reads."""
        return getattr(
            self.optimizer, "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition", None
        )

    def _in_place_layout(self, trainable: NamedParams, alignment: int) -> GradLayout:
        """One segment per parameter (its real elements on this rank) with room after it for
        DeepSpeed's whole partition of it (the last ranks' partitions end in padding), so each
        of DeepSpeed's partition tensors can view the buffers directly."""
        starts, slots, cursor = [], [], 0
        for (name, p), (_, length) in zip(trainable, self.fragments):
            start = -(-cursor // alignment) * alignment
            starts.append(start)
            slots.append(ParamSlot(start, (length,), name))
            cursor = start + p.partition_numel()
        numel = -(-cursor // alignment) * alignment
        numels = [length for _, length in self.fragments]
        names = [name for name, _ in trainable]
        return GradLayout(starts, numels, numel, alignment=alignment, names=names, params=slots)

    def _point_partitions_at(self, buffer: torch.Tensor) -> None:
        """ZeRO-3 in place: each of DeepSpeed's partition tensors made a view of ``buffer`` (at
        its parameter's slot), so its reduce-scatter adds into the buffer, and its step reads
        it; its own flat partition buffer is then released (N/world elements)."""
        if self._pointed_at is buffer:
            return
        partitions = self._stage3_partitions()
        storage, base = buffer.untyped_storage(), buffer.storage_offset()
        for p, slot in zip(self.params, self._layout.params):
            partitions[p.ds_id].set_(storage, base + slot.offset, (p.partition_numel(),), (1,))
        flat = self.optimizer.grad_partitions_flat_buffer
        if flat.numel():
            flat.set_()  # nothing views it any more
        self._pointed_at = buffer

    def _stage3_partition_views(self) -> list[torch.Tensor]:
        """Each parameter's fragment in ZeRO-3's flat partition buffer, as DeepSpeed lays it
        out (its parameters' partitions back to back, in its groups' order)."""
        flat = self.optimizer.grad_partitions_flat_buffer
        offsets, offset = {}, 0
        for p in itertools.chain.from_iterable(self.optimizer.fp16_groups):
            offsets[id(p)] = offset
            offset += p.partition_numel()
        if offset != flat.numel():
            raise RuntimeError(
                f"DeepSpeed's ZeRO-3 partition buffer has {flat.numel()} elements, its "
                f"parameters' partitions {offset}: this DeepSpeed lays it out otherwise than "
                f"{TESTED} did. Please report it."
            )
        return [
            flat.narrow(0, offsets[id(p)], length)
            for p, (_, length) in zip(self.params, self.fragments)
        ]

    def _partition_views(self) -> list[torch.Tensor]:
        """DeepSpeed's current partition, one 1-D view per parameter (empty where this rank
        holds none of it)."""
        if self.stage == 3:
            return self._stage3_views
        views = []
        for p, (_, length) in zip(self.params, self.fragments):
            if length == 0:
                views.append(None)
                continue
            fragment = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group)
            views.append(fragment.view(-1))  # a view: g_final is written back through it
        return views

    # ------------------------------------------------------------------ the windows
    @contextlib.contextmanager
    def backward_context(self, task: str, buffer: torch.Tensor) -> Iterator[None]:
        """One accumulation window, the boundary off. ZeRO-3 in place: DeepSpeed's partitions
        view ``buffer`` and add into it (which holds this task's gradient so far: zero at the
        step's first window), even at a first backward, where DeepSpeed would copy. Otherwise
        DeepSpeed's gradient state is cleared (ZeRO-1/2: the last window's partition freed; the
        combine writes g_final into the partition of the step's last window), for
        :meth:`collect_` to take the window's own."""
        if self.in_place:
            self._point_partitions_at(buffer)
            self.optimizer.micro_step_id = max(self.optimizer.micro_step_id, 1)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if self.stage == 3:  # its first backward copies, later ones add; unreached stay 0
                self.optimizer.grad_partitions_flat_buffer.zero_()
            else:  # the last window's partition, already added: freed before this one builds
                for group in self.optimizer.averaged_gradients:
                    self.optimizer.averaged_gradients[group] = None
        self.ds.set_gradient_accumulation_boundary(False)
        yield

    def collect_(self, task: str, buffer: torch.Tensor, layout: GradLayout) -> None:
        """Finish the window's reduction as at a boundary, then add this rank's partition into
        ``buffer``."""
        if self.in_place:
            return  # DeepSpeed reduced each backward into the buffer itself
        if self.stage == 1:
            self.ds.set_gradient_accumulation_boundary(True)
            self.ds.allreduce_gradients()  # ZeRO-1 reduces only at a boundary
        elif self.stage == 2:
            if all(t is None for t in self.optimizer.all_grad_tensors.values()):
                self.ds.set_gradient_accumulation_boundary(False)
                return  # no backward in this window: nothing to add
            self.optimizer.finalize_gradient_accumulation_boundary()
        self.ds.set_gradient_accumulation_boundary(False)
        pairs = [
            (mine.view(-1), theirs)
            for mine, theirs in zip(layout.views(buffer), self._partition_views())
            if theirs is not None and theirs.numel()
        ]
        _each(torch._foreach_add_, torch.Tensor.add_, pairs)

    def publish_(self, g_final: torch.Tensor, layout: GradLayout) -> None:
        """g_final into DeepSpeed's partition, and the boundary on for ``engine.step()``."""
        if self.in_place:  # its partitions view g_final: the step reads it there
            self._point_partitions_at(g_final)
            self.ds.set_gradient_accumulation_boundary(True)
            return
        if self.stage != 3 and any(
            self.optimizer.averaged_gradients.get(i) is None
            for i in range(len(self.optimizer.bit16_groups))
        ):
            raise RuntimeError(
                "DeepSpeed holds no gradient partition to write g_final into: no backward ran "
                "inside synth.forget() / synth.retain() this step. Run the step's backward "
                "passes inside the contexts (engine.backward(loss)), then synth.combine_()."
            )
        pairs = [
            (theirs, mine.view(-1))
            for mine, theirs in zip(layout.views(g_final), self._partition_views())
            if theirs is not None and theirs.numel()
        ]
        _each(torch._foreach_copy_, torch.Tensor.copy_, pairs)
        self.ds.set_gradient_accumulation_boundary(True)
