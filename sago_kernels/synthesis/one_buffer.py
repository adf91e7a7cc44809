"""One-buffer mode (``GradientSynthesizer(buffers=1)``): the combine inside the retain backward.

The forget backward passes fill the one flat buffer with g_f. During the retain backward, a
post-accumulate-grad hook on each parameter hands its whole g_r (``.grad``, empty before) to
:meth:`OneBuffer.combine_slot`, which writes g_final over that parameter's g_f and keeps its
statistics sums; the core then frees the g_r. At ``combine_()`` the parameters no retain gradient
reached are combined with g_r = 0 and the step's statistics table is built from the kept sums.
It serves the methods that decide a parameter from that parameter alone and keep no state
across steps (a state must change only when ``combine_()`` completes; see :func:`method_problem`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from .._validation import mark_written
from .._checked import checked_combine, record_non_finite
from ..dispatch import resolve_backend
from ..layout import GradLayout
from ..methods import Method
from ..stats import SEGMENT_SUMS, CombineStats, geometry_table

PREFIX = "buffers=1 (one-buffer mode) combines each parameter on its own inside the backward"


def method_problem(method: Method, given: object, granularity: str) -> str | None:
    """Why one-buffer mode cannot run ``method`` at ``granularity``, or None."""
    name = given if isinstance(given, str) else method.name
    if method.scope == "global":
        return (
            f"{PREFIX}, but method {name!r} needs dot products over the whole model, which "
            "exist only after the whole retain backward. Use buffers=2 (the default), or a "
            "method decided per parameter (sum, sago, sago_prefer_retain, pcgrad, a Gramian "
            "weighting)."
        )
    if granularity != "parameter":
        return (
            f"{PREFIX}, so it needs granularity='parameter'. Found "
            f"`granularity = {granularity!r}` (segments spanning several parameters); use "
            "buffers=2 for it."
        )
    stateful_weighting = callable(getattr(method.weighting, "state_dict", None))
    if method.needs_state or stateful_weighting:
        return (
            f"{PREFIX}, but method {name!r} keeps a state per segment across steps (GRU's "
            "moving average, GradVac's φ̂), which must change only when combine_() completes: "
            "a retain backward that stops part-way, or a step discarded with synth.zero_grad() "
            "before combine_(), must leave it as it was. The per-parameter combines update it "
            "during the backward, so keeping it unchanged until combine_() would need the new "
            "state held apart from the old (N more elements, the buffer one-buffer mode saves): "
            "use buffers=2 for it, which holds that much and combines after the backward."
        )
    return None


def register_hooks(
    params: list[torch.Tensor], on_grad: Callable[[int], None]
) -> list[torch.utils.hooks.RemovableHandle]:
    """A post-accumulate-grad hook per parameter calling ``on_grad(index)``. The hooks hold
    ``on_grad``'s object weakly: once it is dropped they do nothing."""
    target = weakref.WeakMethod(on_grad)

    def hook_for(index: int):
        def hook(_: torch.Tensor) -> None:
            call = target()
            if call is not None:
                call(index)

        return hook

    return [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(params)]


class OneBuffer:
    """This step's per-parameter combines over the one buffer, and what they leave for the
    statistics."""

    def __init__(
        self,
        layout: GradLayout,
        buffer: torch.Tensor,
        method: Method,
        method_arg: object,
        alpha: float,
        gamma: float,
        eps: float,
        stats: bool,
        backend: str | None,
    ) -> None:
        self.flat = [v.view(-1) for v in layout.views(buffer)]
        self.method, self.method_arg = method, method_arg
        self.alpha, self.gamma, self.eps = alpha, gamma, eps
        self.stats, self.backend = stats, backend
        count = len(self.flat)
        self.combined = [False] * count  # this step's combined parameters
        # one single-segment layout per parameter size: its device tables are built once
        by_size: dict[int, GradLayout] = {}
        self.slot_layouts = [
            by_size.setdefault(f.numel(), GradLayout.single(f.numel())) for f in self.flat
        ]
        # this step's per-parameter sums for the statistics, kept on the device
        self.sums: list[torch.Tensor | None] = [None] * count
        self.conflicts: list[torch.Tensor | None] = [None] * count
        self.numels = torch.tensor(
            [f.numel() for f in self.flat], dtype=torch.int64, device=buffer.device
        )
        # The hooks skip combine_'s argument checks (a third of a small parameter's time): the
        # buffers are the synthesizer's own, checked here once, and each retain gradient is
        # checked for what autograd could make differ (fits); anything else takes the checked
        # path, which says what is wrong.
        self.run = resolve_backend(backend, buffer.device)[1]

    def clear(self) -> None:
        self.combined = [False] * len(self.flat)

    def any_combined(self) -> bool:
        return any(self.combined)

    def combine_slot(
        self,
        index: int,
        retain: torch.Tensor,
        inv_scale: torch.Tensor | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> None:
        """Combine parameter ``index``: its g_r with its g_f in the buffer, g_final written over
        g_f; its statistics row kept for :meth:`finish`. ``inv_scale``/``found_inf``: a loss
        scaler's (``combine_``'s arguments), the same tensors for every parameter of a step."""
        forget = self.flat[index]
        if retain.layout != torch.strided:  # a sparse gradient (nn.Embedding(sparse=True)):
            retain = retain.to_dense()  # dense, as buffers=2 accumulates it into its buffer
        retain = retain.reshape(-1)
        want = SEGMENT_SUMS if self.stats or found_inf is not None else False
        layout = self.slot_layouts[index]
        if self.fits(retain, forget):
            scaler = {} if inv_scale is None else {"inv_scale": inv_scale, "found_inf": found_inf}
            sums = self.run(
                retain, forget, forget, layout, self.method, self.alpha, self.gamma,
                self.eps, want, **scaler,
            )  # fmt: skip
            mark_written(forget)
            if found_inf is not None:
                record_non_finite(found_inf, sums, SEGMENT_SUMS)
        else:
            _, sums = checked_combine(
                retain, forget, layout, self.method_arg, self.alpha, self.gamma, self.eps,
                forget, want, self.backend, None, None, inv_scale, found_inf,
            )  # fmt: skip
        if self.stats:  # the whole step's table is built once, at combine_()
            self.sums[index], self.conflicts[index] = sums
        self.combined[index] = True

    @staticmethod
    def fits(retain: torch.Tensor, forget: torch.Tensor) -> bool:
        """A retain gradient the backend can read as it is: dense, contiguous, unflagged, of
        the buffer's dtype, device and length."""
        return (
            retain.layout == torch.strided
            and retain.dtype == forget.dtype
            and retain.device == forget.device
            and retain.numel() == forget.numel()
            and retain.is_contiguous()
            and not retain.is_neg()
            and not retain.is_conj()
            and not retain.requires_grad
        )

    def uncombined(self) -> list[int]:
        """The parameters no retain gradient reached this step."""
        return [index for index, done in enumerate(self.combined) if not done]

    def zero_retain(self, index: int) -> torch.Tensor:
        return torch.zeros_like(self.flat[index])

    def statistics(self) -> CombineStats | None:
        """The step's statistics from the kept per-parameter sums."""
        if not self.stats:
            return None
        sums, conflicts = torch.cat(self.sums), torch.cat(self.conflicts)
        table = geometry_table(sums, conflicts, self.numels)
        return CombineStats.from_table(self.method.name, table)
