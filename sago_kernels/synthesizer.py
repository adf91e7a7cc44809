"""Algorithm 1's two-gradient step with no copies: autograd writes straight into flat buffers.

Each trainable parameter's ``.grad`` is bound to a view of the forget or the retain buffer while
that task back-propagates. Autograd adds into an existing ``.grad`` in place, so both tasks'
gradients land in their flat buffers with no clone, and the fused combine then turns the retain
buffer into g_final, which the parameters' ``.grad`` views expose to any optimizer.

Memory: the two flat buffers (2·N elements in the parameters' dtype) plus O(segments) for the
layout tables and statistics. Nothing else is allocated per step.

One-buffer mode (``buffers=1``) holds N, as plain fine-tuning does: the forget backward fills the
one buffer, and during the retain backward a post-accumulate-grad hook combines each parameter
the moment autograd has its g_r, writes g_final over its g_f and frees the g_r. It serves the
methods that decide a parameter from that parameter alone, and the combine overlaps the rest of
the backward instead of running after it.

Under FSDP2 (``fully_shard``) the buffers hold each rank's local shards and ``.grad`` is bound
to DTensors over them, so FSDP2's reduce-scatter accumulates into the buffers directly. Under
DeepSpeed ZeRO 1-3 they hold each rank's gradient partition, filled from DeepSpeed's own at the
end of each context, and g_final goes back into DeepSpeed's for ``engine.step()``.

This module is the core: buffers, contexts, ``combine_`` and the state across steps. Where the
gradients live, how they are reduced and how ``.grad`` is bound is the engine's (one module per
engine in ``sago_kernels/synthesis/``), and so are one-buffer mode's per-parameter combines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch

from ._validation import check_scalar
from .combine import BackendName, MethodName, combine_
from .dispatch import resolve_backend
from .layout import DEFAULT_ALIGNMENT, Granularity
from .methods import get_method
from .stats import CombineStats
from .synthesis import one_buffer as one_buffer_mode
from .synthesis import select_engine
from .synthesis import state as step_state
from .synthesis.params import common_dtype_and_device, given_params, split_trainable
from .synthesis.scaler import ScalerLink


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

    One-buffer mode (``buffers=1``): one flat buffer instead of two (N elements less). The forget
    backward(s) accumulate into it; inside :meth:`retain`, each parameter is combined the moment
    autograd has accumulated its retain gradient (a post-accumulate-grad hook), g_final is
    written over g_f in the buffer and the retain gradient is freed; :meth:`combine_` then
    combines the parameters that got no retain gradient (as zero), assembles the statistics and
    binds ``.grad`` to g_final. Results equal the default mode's (bitwise for the element-wise
    methods). The pattern it supports: any number of forget backward passes (micro-batches),
    then **one** retain backward per step, since each parameter's combine needs its whole
    retain gradient (SAGO's sign test, PCGrad's dots); a second retain backward, a second
    :meth:`retain` context or a :meth:`forget` context after it before :meth:`combine_` raises.
    It refuses at construction what needs more than one parameter at a time: methods with
    whole-model dots (``pcgrad_global``, ``blur``, ``gru_global``), ``granularity`` other than
    ``"parameter"``, methods with a state across steps (``gru``, ``GradVac``: a state changes
    only when :meth:`combine_` completes, and keeping the hooks' updates apart until then would
    cost the N elements the mode saves), and data parallelism or sharding (the combine would
    need the replicas' averaged retain gradient inside the backward). A sparse retain gradient
    (``nn.Embedding(sparse=True)``) is made dense for its combine, as the default mode's dense
    buffer takes it.

    FSDP2 (``fully_shard``): pass the sharded model. Each rank's buffers hold its local shard
    of every parameter (2·N/world elements), and each ``.grad`` is bound to a DTensor over its
    view, so FSDP2's reduce-scatter (which averages over the ranks) accumulates straight into
    the buffers: no gradient of FSDP2's own, no copy. The combine runs on the local shards with
    one all-reduce of per-segment dots over the mesh's group (projection methods; two small
    ones for statistics) and leaves g_final in the sharded ``.grad`` for the optimizer. Keep
    FSDP2's gradient synchronisation on in the contexts (no ``set_requires_gradient_sync
    (False)`` across them): each context's gradients must be reduce-scattered inside it.
    DeepSpeed (ZeRO stage 1, 2 or 3): pass the engine ``deepspeed.initialize`` returned and
    run ``engine.backward(loss)`` inside the contexts. Each context is one DeepSpeed
    accumulation window (any number of backward passes, reduced by DeepSpeed as usual); at its
    end this rank's gradient partition is added into the task's buffer (one partition each,
    N/world elements). :meth:`combine_` runs on the partitions with one all-reduce of dots over
    DeepSpeed's data-parallel group and writes g_final into DeepSpeed's partition with the
    accumulation boundary on, so ``engine.step()`` clips and steps on it. Refused at
    construction with the reason: ZeRO stage 0, offload, fp16 loss scaling, pipeline or tensor
    parallelism, and one-buffer mode (``sago_kernels/synthesis/deepspeed.py``).
    Other sharded parameters (each rank holds a slice of every parameter, your own split):
    pass ``process_group``, with the same one all-reduce of dots (see
    :func:`sago_kernels.combine_`).

    Gradient accumulation: any number of ``backward`` calls inside a context, or several
    contexts before :meth:`combine_`, add up. The first context after a combine starts from
    zero (the buffers are cleared then), so ``optimizer.zero_grad()`` or :meth:`zero_grad` are
    both fine. Parameters that get no gradient in a task count as zero there. Frozen parameters
    (``requires_grad=False``) are left alone. ``model_or_params`` is a module, or what an
    optimizer takes: parameters (named "0", "1", ... by position) or ``(name, parameter)``
    pairs. A parameter listed twice (tied weights, ``named_parameters(remove_duplicate=False)``)
    has one slot.

    What raises instead of losing a gradient (a gradient that cannot reach the buffers is an
    error, never dropped): a ``backward`` outside the contexts (found at the next context or
    combine: it belongs to neither task); ``backward(create_graph=True)``, a ``zero_grad()`` or
    an assignment to ``.grad`` inside a context (autograd then puts the gradient in a new
    tensor outside the buffer; found when the context exits, and the step is refused until
    :meth:`zero_grad`; for higher-order terms use ``torch.autograd.grad(..., create_graph=True)``
    and a plain ``backward()`` of the final loss); an in-place write to ``.grad`` inside a
    context besides autograd's own adds (``zero_grad(set_to_none=False)``, clipping: it would
    erase or alter earlier micro-batches; found when the context exits from the buffer's version
    counter, except under FSDP2); an exception leaving a context (a backward
    may have stopped part-way: the step is refused until :meth:`zero_grad`); a second
    :meth:`combine_` without new backward passes (the buffers hold g_final already); freezing
    or unfreezing a parameter after construction (the buffers have a slot for exactly the
    parameters trainable then: build a new synthesizer).
    """

    def __init__(
        self,
        model_or_params: torch.nn.Module
        | Iterable[torch.Tensor]
        | Iterable[tuple[str, torch.Tensor]]
        | Mapping[str, torch.Tensor],
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
        buffers: int = 2,
        grad_scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        # Everything is checked before anything is allocated or bound (and so before any
        # backward pass: a bad argument never costs a forward/backward).
        named, module = given_params(model_or_params)
        resolved = get_method(method)
        if isinstance(buffers, bool) or buffers not in (1, 2):
            raise ValueError(
                "Parameter `buffers` should be 2 (the default: forget and retain buffers, every "
                "method) or 1 (one-buffer mode: the combine runs inside the retain backward). "
                f"Found `buffers = {buffers!r}`."
            )
        if buffers == 1:
            problem = one_buffer_mode.method_problem(resolved, method, granularity)
            if problem is not None:
                raise ValueError(problem)
        trainable, self._frozen = split_trainable(named)
        engine = select_engine(
            model_or_params, trainable, data_parallel_group=data_parallel_group,
            process_group=process_group,
        )  # fmt: skip
        if buffers == 1:
            problem = engine.one_buffer_problem(one_buffer_mode.PREFIX)
            if problem is not None:
                raise ValueError(problem)
        alpha, gamma = check_scalar("alpha", alpha), check_scalar("gamma", gamma)
        eps = check_scalar("eps", eps, non_negative=True)
        if not isinstance(stats, bool):
            raise TypeError(
                f"Parameter `stats` should be a bool. Found `type(stats) = {type(stats).__name__}`."
            )
        if keep_history is not None and (
            isinstance(keep_history, bool) or not isinstance(keep_history, int)
        ):
            raise TypeError(
                "Parameter `keep_history` should be None (keep all) or an int >= 0. Found "
                f"`type(keep_history) = {type(keep_history).__name__}`."
            )
        if keep_history is not None and keep_history < 0:
            raise ValueError(
                "Parameter `keep_history` should be None (keep all) or an int >= 0. Found "
                f"`keep_history = {keep_history}`."
            )
        if backend is not None and not isinstance(backend, str):
            raise TypeError(
                "Parameter `backend` should be 'triton', 'native', 'reference' or None (auto). "
                f"Found `type(backend) = {type(backend).__name__}`."
            )
        dtype, device = common_dtype_and_device(trainable)
        scaler = None
        if grad_scaler is not None:
            if engine.kind == "deepspeed":
                raise ValueError(
                    "Parameter `grad_scaler` is for torch's GradScaler; a DeepSpeed engine scales "
                    "its loss itself (and its fp16 loss scaling is refused here: use bf16). Drop "
                    "`grad_scaler`."
                )
            scaler = ScalerLink(grad_scaler, dtype, device, [p for _, p in trainable])
        layout = engine.layout(trainable, granularity, alignment)
        if backend is not None:
            resolve_backend(backend, device)  # unknown or unavailable here: raise now
        engine.check_groups()

        self.engine = engine
        self._scaler = scaler
        self.method, self.alpha, self.gamma, self.eps = method, alpha, gamma, eps
        self._method = resolved
        self.stats_enabled, self.backend = stats, backend
        self.names = [n for n, _ in trainable]
        self.params = [p for _, p in trainable]
        self._module = module
        self.layout = layout
        assert len(layout.params) == len(self.params)  # one slot per distinct parameter
        self.buffers = buffers
        self.forget_buffer = self.layout.new_buffer(dtype, device)
        # one-buffer mode: g_final is written over g_f, so both names are the one buffer
        self.retain_buffer = (
            self.forget_buffer if buffers == 1 else self.layout.new_buffer(dtype, device)
        )
        # a stateful method's third buffer (GRU's moving average of g_r): kept across steps
        self.state_buffer = self.layout.new_buffer(dtype, device) if resolved.needs_state else None
        self._views = {
            "retain": self.layout.views(self.retain_buffer),
            "forget": self.layout.views(self.forget_buffer),
        }
        # what .grad is bound to: the views, or what the engine makes of them (FSDP2: DTensors
        # over them, in which its reduce-scatter accumulates in place)
        self._grads = {
            task: engine.grads(self.params, views) for task, views in self._views.items()
        }
        self._one_buffer: one_buffer_mode.OneBuffer | None = None
        if buffers == 1:
            self._one_buffer = one_buffer_mode.OneBuffer(
                self.layout, self.forget_buffer, resolved, method, alpha, gamma, eps, stats,
                backend,
            )  # fmt: skip
        # autograd's in-place adds into the bound .grad, counted to find any other in-place
        # write there inside a context (an optimizer's zero_grad(set_to_none=False))
        self._counts_adds = engine.binds_grad and engine.adds_in_place
        # an engine that keeps the gradients itself: the hooks find a backward outside the
        # contexts, which .grad would show elsewhere
        if buffers == 1 or self._counts_adds or not engine.binds_grad:
            self._hooks = one_buffer_mode.register_hooks(self.params, self._on_grad)
        self._stray: str | None = None  # a parameter reached by a backward outside the contexts
        self._adds = 0  # autograd's adds into the bound .grad in the current context
        self._version = 0  # the bound buffer's version counter when the context began
        self._stale = False  # buffers hold a finished step and must be cleared before the next
        self._active: str | None = None
        self._broken: str | None = None  # why this step's gradients are incomplete, if they are
        self.keep_history = keep_history
        self.history: list[CombineStats] = []

    # ------------------------------------------------------------------ the engine's
    @property
    def data_parallel_group(self) -> object | None:
        """The group the buffers are averaged over before the combine (DDP's, or the one
        given), or None."""
        return self.engine.replica_group

    @property
    def process_group(self) -> object | None:
        """The group the combine's dots are all-reduced over (sharded buffers), or None."""
        return self.engine.shard_group

    @property
    def fsdp2(self) -> bool:
        """Whether the buffers hold FSDP2 shards (``.grad`` bound to DTensors over them)."""
        return self.engine.kind == "fsdp2"

    # ------------------------------------------------------------------ one-buffer mode
    def __del__(self) -> None:
        for handle in getattr(self, "_hooks", ()):
            handle.remove()

    def _on_grad(self, index: int) -> None:
        """Parameter ``index``'s post-accumulate-grad hook: inside a context, count autograd's
        add into the bound ``.grad``; in one-buffer mode's :meth:`retain`, combine it instead."""
        if self._active is None:
            if self._stray is None:
                self._stray = self.names[index]
            return
        if self._active == "retain" and self.buffers == 1:
            self._on_retain_grad(index)
        else:
            self._adds += 1

    def _on_retain_grad(self, index: int) -> None:
        """One-buffer mode, inside :meth:`retain`: combine parameter ``index`` now and free its
        g_r."""
        if self._one_buffer.combined[index]:
            self._broken = (
                f"a second retain backward reached `{self.names[index]}` in one-buffer mode, "
                "after its combine (g_final is already written over its g_f)."
            )
            raise RuntimeError(
                f"A second retain backward inside synth.retain() reached `{self.names[index]}`, "
                "already combined with the first one's gradient: one-buffer mode combines each "
                "parameter during the retain backward, and the combine needs the whole retain "
                "gradient (SAGO's sign test, PCGrad's dots). Call backward once per step on the "
                "summed retain loss (accumulate micro-batches on the forget side only), or use "
                "buffers=2. Call synth.zero_grad() to discard this step."
            )
        self._combine_slot(index)
        self.params[index].grad = None

    def _combine_slot(self, index: int, retain: torch.Tensor | None = None) -> None:
        """One-buffer mode: combine parameter ``index`` with its g_r (``.grad``, or ``retain``).
        The hooks and :meth:`combine_` call it through the instance, so a wrapper set on it
        sees every per-parameter combine."""
        if retain is None:
            retain = self.params[index].grad
        self._one_buffer.combine_slot(index, retain, *self._scaler_tensors())

    def _check_one_buffer_order(self, task: str) -> None:
        if not self._one_buffer.any_combined():  # no retain backward yet this step
            return
        raise RuntimeError(
            f"synth.{task}() after synth.retain() in the same step, in one-buffer mode: the "
            "retain backward has already written g_final over g_f for the parameters it "
            "reached, and each parameter's combine needs its whole retain gradient (SAGO's "
            "sign test, PCGrad's dots). Per step: accumulate the forget side over any number "
            "of micro-batches, then one retain backward, then synth.combine_(); for several "
            "retain backward passes, use buffers=2."
        )

    def _finish_one_buffer(self) -> CombineStats | None:
        """Combine the parameters no retain gradient reached (g_r = 0, as the default mode's
        zeroed retain buffer), then the statistics of the whole step."""
        one = self._one_buffer
        for index in one.uncombined():
            self._combine_slot(index, one.zero_retain(index))
        return self._finish_step(one.statistics())

    # ------------------------------------------------------------------ routing autograd
    def _bind(self, task: str | None) -> None:
        if not self.engine.binds_grad:
            return
        grads = self._grads[task] if task else [None] * len(self.params)
        for p, g in zip(self.params, grads):
            p.grad = g

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RuntimeError(
                f"This step's gradients are incomplete: {self._broken} Call synth.zero_grad() "
                "to discard them, then run the step again."
            )

    def _check_trainable(self, *, walk_module: bool = False) -> None:
        """The trainable parameters are still the ones the buffers were laid out for.

        Each context checks the parameters known at construction (~0.1 µs each); the combine
        also walks the module for parameters added since (~1 µs a submodule, once a step)."""
        for name, p in zip(self.names, self.params):
            if not p.requires_grad:
                raise RuntimeError(
                    f"Parameter `{name}` was frozen (requires_grad=False) after the synthesizer "
                    "was built; it keeps a gradient slot that an optimizer would still step. "
                    "Build a new GradientSynthesizer after changing requires_grad."
                )
        unslotted = [(name, p) for name, p in self._frozen if p.requires_grad]
        if walk_module and self._module is not None and not unslotted:
            known = {id(p) for p in self.params}
            new = {
                id(p)
                for sub in self._module.modules()
                for p in sub._parameters.values()
                if p is not None and p.requires_grad and id(p) not in known
            }
            if new:  # the slow walk that names it, on the error path only
                unslotted = [(n, p) for n, p in self._module.named_parameters() if id(p) in new]
        if unslotted:
            raise RuntimeError(
                f"Parameter `{unslotted[0][0]}` requires grad but has no slot in the flat buffers "
                "(it was unfrozen or added after the synthesizer was built), so its gradient "
                "would be dropped. Build a new GradientSynthesizer after changing requires_grad."
            )

    def _check_no_stray_grads(self) -> None:
        """No gradient reached a parameter outside the contexts. Between contexts ``.grad`` is
        None; after a combine it is the parameter's view of g_final (or None after an
        optimizer's ``zero_grad``). Anything else came from a ``backward`` outside the contexts
        (or an assignment) and belongs to neither task: refused rather than guessed at."""
        if not self.engine.binds_grad:
            if self._stray is not None:
                raise RuntimeError(
                    f"A backward outside synth.forget() / synth.retain() reached "
                    f"`{self._stray}`: its gradient is in the {self.engine.kind} engine's own "
                    "storage and belongs to neither task. Run each backward inside a context; "
                    "call synth.zero_grad() to discard this step."
                )
            return
        allowed = self._grads["retain"] if self._stale else [None] * len(self.params)
        for name, p, view in zip(self.names, self.params, allowed):
            grad = p.grad
            if grad is not None and grad is not view:
                raise RuntimeError(
                    f"`{name}.grad` holds a gradient from outside synth.forget() / "
                    "synth.retain() (a backward() outside the contexts, or an assignment to "
                    ".grad); it belongs to neither task. Run each backward inside a context, or "
                    "discard it with `optimizer.zero_grad()` (the flat buffers keep the step)."
                )

    def _check_still_bound(self, task: str) -> None:
        """Every backward of the context added into the buffer: ``.grad`` is still our view
        (one-buffer retain: still empty, every g_r consumed by its hook)."""
        if not self.engine.binds_grad:
            return
        if task == "retain" and self.buffers == 1:
            for name, p in zip(self.names, self.params):
                if p.grad is not None:
                    self._broken = (
                        f"`{name}.grad` was assigned inside synth.retain() in one-buffer mode, "
                        "where autograd hands each retain gradient to the combine and .grad "
                        "stays empty; the assigned gradient reached no buffer."
                    )
                    self._check_usable()
            return
        for name, p, view in zip(self.names, self.params, self._grads[task]):
            grad = p.grad
            if grad is view:
                continue
            how = "set to None" if grad is None else "replaced by a tensor outside the buffer"
            self._broken = (
                f"`{name}.grad` was {how} inside synth.{task}(), so gradients meant for the "
                f"{task} buffer are missing from it. Autograd does this for "
                "backward(create_graph=True), which builds .grad out of place and is not "
                "supported inside the contexts (take higher-order terms with "
                "`torch.autograd.grad(..., create_graph=True)`, then call a plain backward() "
                "on the final loss); a zero_grad() or an assignment to .grad inside the "
                "context does it too (zero gradients outside the contexts)."
            )
            self._check_usable()

    def _task_buffer(self, task: str) -> torch.Tensor:
        return self.retain_buffer if task == "retain" else self.forget_buffer

    def _check_no_in_place_write(self, task: str) -> None:
        """Nothing but autograd's adds wrote into the bound ``.grad`` inside the context: each
        add bumps the buffer's version counter (shared by its views) once, and the hooks
        counted them; one more bump is an in-place write, such as an optimizer's
        ``zero_grad(set_to_none=False)``, which erases what earlier micro-batches accumulated."""
        if not self._counts_adds or (task == "retain" and self.buffers == 1):
            return  # (one-buffer retain: .grad stays empty, each g_r goes to its combine)
        written = self._task_buffer(task)._version - self._version - self._adds
        if written > 0:
            self._broken = (
                f"`.grad` was changed in place inside synth.{task}() ({written} in-place "
                "write(s) besides autograd's own adds: an optimizer's "
                "zero_grad(set_to_none=False), a clipping or scaling of .grad, ...), so the "
                f"{task} gradients accumulated before it may be lost or altered. Zero gradients "
                "outside the contexts (the first context after a combine starts from zero), "
                "scale the loss rather than .grad, and clip g_final after synth.combine_()."
            )
            self._check_usable()

    @contextlib.contextmanager
    def _task(self, task: str) -> Iterator[None]:
        if self._active is not None:
            raise RuntimeError(f"Already inside synth.{self._active}(); contexts do not nest.")
        self._check_usable()
        self._check_trainable()
        self._check_no_stray_grads()
        if self._stale:
            self.zero_grad()
        if self.buffers == 1:
            self._check_one_buffer_order(task)
        self._active = task
        # one-buffer retain: .grad starts empty, so autograd hands each g_r to the hook
        self._bind(None if task == "retain" and self.buffers == 1 else task)
        self._adds, self._version = 0, self._task_buffer(task)._version
        completed = False
        try:
            with self.engine.backward_context(task, self._task_buffer(task)):
                yield
            completed = True
        finally:
            try:
                if completed:
                    self._check_still_bound(task)
                    self._check_no_in_place_write(task)
                    if not self.engine.binds_grad:  # the engine hands the gradients over
                        self.engine.collect_(task, self._task_buffer(task), self.layout)
                elif self._broken is None:  # the exception itself goes up as it is
                    # a backward may have stopped part-way: some gradients in, others not
                    self._broken = (
                        f"an exception left synth.{task}(), so this step's {task} gradients "
                        "may be partial (a backward stopped part-way, or never ran)."
                    )
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
    def _scaler_tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This step's (inv_scale, found_inf) with an enabled grad_scaler, else (None, None)."""
        if self._scaler is None or not self._scaler.enabled:
            return None, None
        return self._scaler.step_tensors()

    def combine_(self, optimizer: torch.optim.Optimizer | None = None) -> CombineStats | None:
        """g_final into the retain buffer; each ``param.grad`` becomes its view of it.

        Returns the step's gradient geometry (device tensors) when ``stats`` is on, also kept
        in :attr:`history`.

        With a ``grad_scaler`` (fp16 mixed precision), pass the ``optimizer`` that
        ``scaler.step`` will step: the combine unscales the gradients as it reads them (no
        ``scaler.unscale_`` pass; g_final, the statistics and any state are of unscaled
        gradients), and records in the scaler what ``unscale_`` would have, so
        ``scaler.step(optimizer)`` skips a step holding an inf or NaN (a stateful method then
        keeps its state) and ``scaler.update()`` backs off. Clip g_final after it, as usual.
        """
        if self._active is not None:
            raise RuntimeError(
                f"combine_() inside synth.{self._active}(): leave the context first."
            )
        self._check_usable()
        if self._stale:
            raise RuntimeError(
                "combine_() was already called on these gradients: the retain buffer holds "
                "g_final, and combining it again would apply the method twice. Run the next "
                "step's synth.forget() / synth.retain() backward passes first (to combine "
                "buffers you fill by hand, call synth.zero_grad() before filling them)."
            )
        self._check_trainable(walk_module=True)
        self._check_no_stray_grads()
        scaled = self._scaler is not None and self._scaler.enabled
        if scaled:
            self._scaler.check_optimizer(optimizer)
        elif optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "Parameter `optimizer` should be a torch optimizer (it is used with a "
                f"grad_scaler). Found `{type(optimizer).__name__}`."
            )
        if self.buffers == 1:
            stats = self._finish_one_buffer()
        else:
            self.engine.reduce_buffers_(self.forget_buffer, self.retain_buffer)
            inv_scale, found_inf = self._scaler_tensors()
            result = combine_(
                self.retain_buffer, self.forget_buffer, layout=self.layout, method=self.method,
                alpha=self.alpha, gamma=self.gamma, eps=self.eps, stats=self.stats_enabled,
                backend=self.backend, process_group=self.process_group, state=self.state_buffer,
                inv_scale=inv_scale, found_inf=found_inf,
            )  # fmt: skip
            self.engine.publish_(self.retain_buffer, self.layout)
            stats = self._finish_step(result[1] if self.stats_enabled else None)
        if scaled:
            self._scaler.record(optimizer)
        return stats

    def _finish_step(self, stats: CombineStats | None) -> CombineStats | None:
        self._bind("retain")
        self._stale = True
        if stats is None:
            return None
        self.history.append(stats)
        if self.keep_history is not None and len(self.history) > self.keep_history:
            del self.history[0]
        return stats

    def average_over_replicas_(self) -> None:
        """Average both flat buffers over ``data_parallel_group``: one all-reduce per buffer
        (padding is zero on every rank and stays zero). :meth:`combine_` calls it."""
        self.engine.reduce_buffers_(self.forget_buffer, self.retain_buffer)

    def zero_grad(self) -> None:
        """Clear both buffers and unbind ``param.grad`` (as ``set_to_none=True`` would); also
        discards a step refused as incomplete."""
        if self._active is not None:
            raise RuntimeError(
                f"synth.zero_grad() inside synth.{self._active}(): it would discard the "
                "gradients accumulated so far and unbind .grad mid-task. Call it outside the "
                "contexts."
            )
        self.forget_buffer.zero_()
        if self.buffers == 2:
            self.retain_buffer.zero_()
        else:
            self._one_buffer.clear()
        self._bind(None)
        self._stale = False
        self._broken = None
        self._stray = None
        if self._scaler is not None:
            self._scaler.reset()

    # ------------------------------------------------------------------ checkpoints
    def _stateful_weighting(self) -> object | None:
        """The method's weighting when it keeps a state across steps (a ``GradVac``, given
        as it is or through ``sk.weighting_method``), else None."""
        weighting = self._method.weighting
        if callable(getattr(weighting, "state_dict", None)) and callable(
            getattr(weighting, "load_state_dict", None)
        ):
            return weighting
        return None

    def state_dict(self) -> dict[str, object]:
        """What resuming a run needs besides the model and optimizer: the method's state
        across steps (GRU's moving average ``"ema"``, a stateful weighting's ``"weighting"``,
        e.g. a ``GradVac``'s φ̂) and the layout it belongs to (``"layout"``); empty for
        stateless methods. Sharded (``process_group``): this rank's shard, as FSDP's own
        sharded state dicts."""
        state: dict[str, object] = {}
        if self.state_buffer is not None:
            state["ema"] = self.state_buffer.detach().clone()
            ema = self._method.ema
            state["ema_params"] = {"beta": ema.beta, "retain_coef": ema.retain_coef}
        weighting = self._stateful_weighting()
        if weighting is not None:
            state["weighting"] = weighting.state_dict()
        if state:
            state["layout"] = step_state.layout_signature(self.layout)
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`'s output. Everything is checked before anything is
        written: the keys, the moving average (shape, dtype, finite values), the layout it was
        saved with (each segment's name and length, each parameter's name and shape) and the
        weighting's state (its own checks, and one entry per segment)."""
        weighting = self._stateful_weighting()
        step_state.check(
            state, self.layout, self.state_buffer, weighting is not None, repr(self.method),
            self._method.ema,
        )
        weighting_state = state.get("weighting")
        if weighting_state is not None:  # checks its own state before it writes any of it
            segments = 1 if self._method.scope == "global" else self.layout.num_segments
            step_state.load_weighting(weighting, weighting_state, segments)
        ema = state.get("ema")
        if ema is not None:
            self.state_buffer.copy_(ema)

    # ------------------------------------------------------------------ inspection
    @property
    def keeps_state(self) -> bool:
        """Whether the method keeps a state across steps (GRU's average, a GradVac's φ̂): what
        a checkpoint must carry for a resumed run to continue the same run."""
        return self.state_buffer is not None or self._stateful_weighting() is not None

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the flat buffers (``buffers``, plus GRU's state): everything per-step
        besides O(segments) (and, in one-buffer mode, one parameter's retain gradient at a
        time during the retain backward)."""
        count = self.buffers + (self.state_buffer is not None)
        return count * self.retain_buffer.numel() * self.retain_buffer.element_size()

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
            f"buffers={self.buffers}, "
            f"{self.layout!r}, dtype={self.retain_buffer.dtype}, "
            f"device={self.retain_buffer.device})"
        )
