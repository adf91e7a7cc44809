"""Algorithm 1's two-gradient step with no copies: autograd writes straight into flat buffers.

Each trainable parameter's ``.grad`` is bound to a view of the forget or the retain buffer while
that task back-propagates. Autograd adds into an existing ``.grad`` in place, so both tasks'
gradients land in their flat buffers with no clone, and the fused combine then turns the retain
buffer into g_final, which the parameters' ``.grad`` views expose to any optimizer.

Memory: the two flat buffers (2·N elements in the parameters' dtype) plus O(segments) for the
layout tables and statistics. Nothing else is allocated per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from . import sharding
from ._validation import check_scalar
from .combine import BackendName, MethodName, combine_
from .layout import DEFAULT_ALIGNMENT, GradLayout, Granularity
from .methods import get_method
from .stats import CombineStats


def _ddp_class() -> type | None:
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DistributedDataParallel


class GradientSynthesizer:
    """Owns the retain/forget flat buffers of a model and combines them (paper Algorithm 1).

    Example:
        >>> import torch, sago_kernels as sk
        >>> model = torch.nn.Linear(4, 2)
        >>> synth = sk.GradientSynthesizer(model, method="sago")
        >>> x = torch.randn(3, 4)
        >>> with synth.forget():
        ...     (-model(x).square().mean()).backward()
        >>> with synth.retain():
        ...     model(x).abs().mean().backward()
        >>> stats = synth.combine_()          # model.weight.grad now holds g_final
        >>> torch.optim.SGD(model.parameters(), lr=0.1).step()

    ``keep_history`` steps of statistics are kept on the device (one ``[segments + 1, 8]``
    float32 table each); ``None`` keeps all.

    Data parallel (DDP): pass the ``DistributedDataParallel`` model. Its backward passes inside
    :meth:`forget` / :meth:`retain` run under ``no_sync()`` (no per-bucket all-reduce), and
    :meth:`combine_` first averages each flat buffer over the model's process group with **one**
    all-reduce per buffer. For a model replicated by other means, pass ``data_parallel_group``.

    Sharded parameters (each rank holds a slice of every parameter, e.g. your own split; for
    FSDP2's ``fully_shard`` see the README): pass ``process_group``; the combine then needs
    one all-reduce of per-segment dots (see :func:`sago_kernels.combine_`).

    Gradient accumulation: any number of ``backward`` calls inside a context, or several
    contexts before :meth:`combine_`, add up. The first context after a combine starts from
    zero (the buffers are cleared then), so ``optimizer.zero_grad()`` or :meth:`zero_grad` are
    both fine. Parameters that get no gradient in a task count as zero there. Frozen parameters
    (``requires_grad=False``) are left alone.
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module | Iterable[tuple[str, torch.nn.Parameter]],
        *,
        method: MethodName = "sago",
        alpha: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-10,
        granularity: Granularity = "parameter",
        alignment: int = DEFAULT_ALIGNMENT,
        stats: bool = True,
        backend: BackendName | None = None,
        keep_history: int | None = 1000,
        data_parallel_group: object | None = None,
        process_group: object | None = None,
    ) -> None:
        self._no_sync = None
        ddp = _ddp_class()
        if ddp is not None and isinstance(model_or_params, ddp):
            self._no_sync = model_or_params.no_sync
            if data_parallel_group is None:
                data_parallel_group = model_or_params.process_group
        if data_parallel_group is not None:
            data_parallel_group = sharding.check_group(data_parallel_group)
        if process_group is not None:
            process_group = sharding.check_group(process_group)
        self.data_parallel_group, self.process_group = data_parallel_group, process_group
        if isinstance(model_or_params, torch.nn.Module):
            named = [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
        else:
            named = [(n, p) for n, p in model_or_params if p.requires_grad]
        if not named:
            raise ValueError("The model has no trainable parameters (requires_grad=True).")
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(
                "All trainable parameters should share one dtype and device, as flat buffers "
                f"need. Found dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}; "
                "cast the model (e.g. `model.to(torch.bfloat16)`) or freeze the odd ones."
            )
        get_method(method)
        alpha, gamma = check_scalar("alpha", alpha), check_scalar("gamma", gamma)
        eps = check_scalar("eps", eps, non_negative=True)
        self.method, self.alpha, self.gamma, self.eps = method, alpha, gamma, eps
        self.stats_enabled, self.backend = stats, backend
        self.params = [p for _, p in named]
        self.layout = GradLayout.from_params(named, granularity=granularity, alignment=alignment)
        dtype, device = next(iter(dtypes)), next(iter(devices))
        self.retain_buffer = self.layout.new_buffer(dtype, device)
        self.forget_buffer = self.layout.new_buffer(dtype, device)
        self._views = {
            "retain": self.layout.views(self.retain_buffer),
            "forget": self.layout.views(self.forget_buffer),
        }
        self._stale = False  # buffers hold a finished step and must be cleared before the next
        self._active: str | None = None
        self.keep_history = keep_history
        self.history: list[CombineStats] = []

    # ------------------------------------------------------------------ routing autograd
    def _bind(self, task: str | None) -> None:
        views = self._views[task] if task else [None] * len(self.params)
        for p, v in zip(self.params, views):
            p.grad = v

    @contextlib.contextmanager
    def _task(self, task: str) -> Iterator[None]:
        if self._active is not None:
            raise RuntimeError(f"Already inside synth.{self._active}(); contexts do not nest.")
        if self._stale:
            self.zero_grad()
        self._active = task
        self._bind(task)
        try:
            with self._no_sync() if self._no_sync is not None else contextlib.nullcontext():
                yield
        finally:
            self._bind(None)
            self._active = None

    def forget(self) -> contextlib.AbstractContextManager[None]:
        """Inside: ``backward`` adds into the forget buffer (g_f)."""
        return self._task("forget")

    def retain(self) -> contextlib.AbstractContextManager[None]:
        """Inside: ``backward`` adds into the retain buffer (g_r)."""
        return self._task("retain")

    # ------------------------------------------------------------------ the step
    def combine_(self) -> CombineStats | None:
        """g_final into the retain buffer; each ``param.grad`` becomes its view of it.

        Returns the step's gradient geometry (device tensors) when ``stats`` is on, also kept
        in :attr:`history`.
        """
        if self._active is not None:
            raise RuntimeError(
                f"combine_() inside synth.{self._active}(): leave the context first."
            )
        if self.data_parallel_group is not None:
            self.average_over_replicas_()
        result = combine_(
            self.retain_buffer, self.forget_buffer, layout=self.layout, method=self.method,
            alpha=self.alpha, gamma=self.gamma, eps=self.eps, stats=self.stats_enabled,
            backend=self.backend, process_group=self.process_group,
        )  # fmt: skip
        self._bind("retain")
        self._stale = True
        if not self.stats_enabled:
            return None
        stats = result[1]
        self.history.append(stats)
        if self.keep_history is not None and len(self.history) > self.keep_history:
            del self.history[0]
        return stats

    def average_over_replicas_(self) -> None:
        """Average both flat buffers over ``data_parallel_group``: one all-reduce per buffer
        (padding is zero on every rank and stays zero). :meth:`combine_` calls it."""
        import torch.distributed as dist

        group = self.data_parallel_group
        # NCCL averages inside the all-reduce; gloo has no AVG, so sum, then one scaling pass
        average = dist.get_backend(group) == "nccl"
        world = dist.get_world_size(group)
        for buffer in (self.forget_buffer, self.retain_buffer):
            dist.all_reduce(buffer, op=dist.ReduceOp.AVG if average else dist.ReduceOp.SUM,
                            group=group)  # fmt: skip
            if not average:
                buffer.mul_(1.0 / world)

    def zero_grad(self) -> None:
        """Clear both buffers and unbind ``param.grad`` (as ``set_to_none=True`` would)."""
        self.retain_buffer.zero_()
        self.forget_buffer.zero_()
        self._bind(None)
        self._stale = False

    # ------------------------------------------------------------------ inspection
    @property
    def memory_bytes(self) -> int:
        """Bytes held by the two flat buffers (everything per-step besides O(segments))."""
        return 2 * self.retain_buffer.numel() * self.retain_buffer.element_size()

    def history_table(self) -> list[dict[str, float]]:
        """Global geometry of every kept step as Python floats (one device-to-host copy)."""
        if not self.history:
            return []
        from .stats import FIELDS

        rows = torch.stack([s.table[-1] for s in self.history]).tolist()
        return [dict(zip(FIELDS, row)) for row in rows]

    def __repr__(self) -> str:
        return (
            f"GradientSynthesizer(method={self.method!r}, alpha={self.alpha}, gamma={self.gamma}, "
            f"{self.layout!r}, dtype={self.retain_buffer.dtype}, "
            f"device={self.retain_buffer.device})"
        )
