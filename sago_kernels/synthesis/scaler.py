"""The synthesizer's side of a loss scaler (``torch.amp.GradScaler``, fp16 mixed precision).

With a scaler, each task's loss is scaled (``scaler.scale(loss).backward()``), so the flat
buffers hold scaled gradients. Unscaling them first (``scaler.unscale_``) would be one more pass
over both buffers; instead the combine unscales as it reads them (``combine_(inv_scale=,
found_inf=)``), and this module then tells the scaler what ``unscale_`` would have: that the
optimizer's gradients are unscaled, and whether the step holds an inf or NaN. ``scaler.step``
then skips the step exactly as it skips an overflowed one, and ``scaler.update`` backs off.

It reads the scaler's ``_scale`` tensor and writes its per-optimizer record (``stage``,
``found_inf_per_device``), the same two fields ``GradScaler.unscale_`` writes: torch's own
``unscale_`` is the specification this follows, and a test checks the record against it.
"""

from __future__ import annotations

import torch

__all__ = ["ScalerLink"]


class ScalerLink:
    """One step's ``inv_scale`` and ``found_inf`` (device tensors, made once a step, no host
    sync) and the record of the unscale in the scaler."""

    def __init__(
        self, scaler: object, dtype: torch.dtype, device: torch.device, params: list[torch.Tensor]
    ) -> None:
        if not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                "Parameter `grad_scaler` should be a torch.amp.GradScaler (or None). Found "
                f"`{type(scaler).__name__}`."
            )
        if scaler.is_enabled() and dtype == torch.float16:
            raise ValueError(
                "Parameter `grad_scaler` unscales float16 gradients, which GradScaler refuses "
                '("Attempting to unscale FP16 gradients"): unscaled, small gradients underflow '
                "in float16. Keep the parameters in float32 and let autocast run the forward in "
                "float16, or train in bfloat16 without a scaler."
            )
        self.scaler, self.device = scaler, device
        self._param_ids = {id(p) for p in params}
        self._step: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def enabled(self) -> bool:
        return self.scaler.is_enabled()

    def step_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's (inv_scale, found_inf): 1/scale computed in float64 as ``unscale_`` does,
        and a zero flag the combines set."""
        if self._step is None:
            scale = getattr(self.scaler, "_scale", None)
            if scale is None:
                raise RuntimeError(
                    "The grad_scaler has not scaled a loss yet, so the buffers' scale is "
                    "unknown: back-propagate each task's loss as "
                    "`scaler.scale(loss).backward()` inside synth.forget() / synth.retain()."
                )
            if scale.device != self.device:
                raise ValueError(
                    f"The grad_scaler's scale lives on {scale.device}, the gradients on "
                    f"{self.device}: make the scaler for the gradients' device "
                    f"(`torch.amp.GradScaler('{self.device.type}')`)."
                )
            inv_scale = scale.double().reciprocal().float().reshape(1)
            self._step = inv_scale, torch.zeros(1, dtype=torch.float32, device=self.device)
        return self._step

    @staticmethod
    def stepped(optimizer: object) -> object:
        """The optimizer ``scaler.step`` receives: a wrapper's own (accelerate's
        ``AcceleratedOptimizer`` steps ``scaler.step(self.optimizer)``) unwrapped."""
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        return optimizer

    def check_optimizer(self, optimizer: object) -> None:
        """Before anything is written: ``optimizer`` is a torch optimizer over the synthesizer's
        parameters only (the scaler would otherwise step others' gradients still scaled), and
        its gradients are not unscaled yet this step."""
        optimizer = self.stepped(optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "synth.combine_(optimizer=...) should be given the torch optimizer that "
                "scaler.step() will step (with a grad_scaler, the combine records its unscale "
                f"there). Found `{type(optimizer).__name__}`."
            )
        # every step (a set lookup per parameter): param groups can be added between steps
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in self._param_ids:
                    raise ValueError(
                        "The optimizer given to synth.combine_() steps a parameter the "
                        f"synthesizer does not hold (shape {tuple(p.shape)}): the scaler "
                        "would leave its gradient scaled. Give the synthesizer every "
                        "parameter the optimizer steps, or use one optimizer for each."
                    )
        from torch.amp.grad_scaler import OptState

        stage = self.scaler._per_optimizer_states[id(optimizer)]["stage"]
        if stage is not OptState.READY:
            raise RuntimeError(
                "The grad_scaler has already unscaled (or stepped) this optimizer since its last "
                "update(): the combine unscales the gradients itself, so call neither "
                "scaler.unscale_(optimizer) before synth.combine_() nor combine_() twice."
            )

    def record(self, optimizer: torch.optim.Optimizer) -> None:
        """Tell the scaler the optimizer's gradients are unscaled and whether an inf or NaN was
        found (``unscale_``'s own record), so ``scaler.step`` skips the step on one."""
        from torch.amp.grad_scaler import OptState

        _, found_inf = self.step_tensors()
        state = self.scaler._per_optimizer_states[id(self.stepped(optimizer))]
        state["found_inf_per_device"] = {found_inf.device: found_inf}
        state["stage"] = OptState.UNSCALED

    def reset(self) -> None:
        """The step is over (combined or discarded; the synthesizer's ``zero_grad``, which every
        next step begins with): the next one reads the scale afresh."""
        self._step = None
