"""A ``transformers.Trainer`` that unlearns with Algorithm 1 and the fused combine.

Each micro-batch is a pair (see :class:`~sago_kernels.unlearning.data.PairedCollator`): the
forget loss is back-propagated into the forget buffer, the retain loss into the retain buffer.
On the last micro-batch of an accumulation window the two are combined in place, before the
Trainer clips and steps, so gradient accumulation, any optimizer and scheduler, mixed precision
(fp16: the combine unscales for the GradScaler) and gradient clipping behave as they do for
ordinary training. Losses and the gradient geometry are logged through the Trainer's own
logging.

    trainer = UnlearningTrainer(model=model, args=args, train_dataset=PairedDataset(f, r),
                                data_collator=PairedCollator(pad_id), method="sago",
                                forget_loss="npo", retain_loss="nll", ref_model=frozen_copy)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import transformers

from ..stats import FIELDS
from ..synthesizer import GradientSynthesizer
from .data import split_pair
from .losses import (
    REFERENCE_FORMS, check_models, check_reference_apart, get_loss, run_loss, step_hparams,
)  # fmt: skip
from .references import CachedReference, Reference

SYNTHESIZER_STATE_NAME = "sago_synthesizer.pt"
"""The file, in each checkpoint folder, of the synthesizer's state across steps (if any)."""

REFERENCE_CACHE_NAME = "sago_reference_cache.pt"
"""The file, in each checkpoint folder, of a cached reference (NPO's log p_ref(x) per forget
example): a resumed run reads it, since the model it was computed from no longer exists."""

LOGGED_GEOMETRY = (
    "cos_fr",
    "cos_out_r",
    "cos_out_f",
    "conflict_fraction",
    "norm_r",
    "norm_f",
    "norm_out",
)


class UnlearningTrainer(transformers.Trainer):
    """``transformers.Trainer`` for paired forget/retain batches (paper Algorithm 1).

    Args (besides the Trainer's own):
        method, alpha, gamma, eps, granularity, backend: the combine (see ``sk.combine_``).
        forget_loss: ``"ga"``, ``"npo"``, ``"simnpo"`` or ``"rmu"``; retain_loss: ``"nll"``,
            ``"kl"`` or ``"rmu"``.
        ref_model: the reference of NPO, KL and RMU's retain term: a frozen copy of the model
            (kept in eval mode, no grad); ``AdaptersOff(model)`` for a peft model (its base, no
            copy); for NPO a ``CachedReference``, or ``"cache"``: computed here from the model
            as it is given, in one no-grad pass over the forget set (batches of
            ``per_device_train_batch_size``, in order), then no reference model is held; it
            travels with every checkpoint (``sago_kernels.unlearning.references``).
        loss_kwargs: hyperparameters of the forget loss (e.g. ``{"beta": 0.1}``, ``{"layer": 8}``).
        retain_loss_kwargs: hyperparameters of the retain loss; RMU's retain ``layer`` defaults to
            the forget loss's ``layer``.
        buffers: 2 (default) or 1, the synthesizer's one-buffer mode (the combine inside the
            retain backward, N gradient elements less); it takes one retain backward per step,
            so it needs ``gradient_accumulation_steps=1``.

    Under DeepSpeed (``TrainingArguments(deepspeed=...)`` or ``accelerate launch`` with a
    DeepSpeed config; ZeRO stages 1-3), each micro-batch's forget and retain backward passes
    run through the engine's ``backward`` inside the synthesizer's contexts, and on the last
    micro-batch the combine writes g_final into DeepSpeed's gradient partition and the engine
    steps on it (its own clipping, scheduler and checkpoints); see
    ``sago_kernels/synthesis/deepspeed.py``.
    """

    def __init__(
        self,
        *args: Any,
        method: str = "sago",
        alpha: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-10,
        granularity: str = "parameter",
        backend: str | None = None,
        forget_loss: str = "npo",
        retain_loss: str = "nll",
        ref_model: Reference | str | None = None,
        loss_kwargs: dict[str, float | int] | None = None,
        retain_loss_kwargs: dict[str, float | int] | None = None,
        buffers: int = 2,
        **kwargs: Any,
    ) -> None:
        # the losses are checked before the Trainer is built, not at the first training step
        for name, forget in ((forget_loss, True), (retain_loss, False)):
            if get_loss(name, forget=forget).needs_reference and ref_model is None:
                raise ValueError(
                    f"{name!r} needs `ref_model`: {REFERENCE_FORMS}, or \"cache\" (computed "
                    "by the Trainer from the model before training)."
                )
        f_loss, r_loss = get_loss(forget_loss, forget=True), get_loss(retain_loss, forget=False)
        cache_here = isinstance(ref_model, str)
        if cache_here and ref_model != "cache":
            raise ValueError(
                f"Parameter `ref_model` should be {REFERENCE_FORMS}, or \"cache\". Found "
                f"`ref_model = {ref_model!r}`."
            )
        f_hparams, r_hparams = step_hparams(f_loss, r_loss, loss_kwargs, retain_loss_kwargs)
        model = kwargs.get("model", args[0] if args else None)
        # "cache": checked as the cache it will be (NPO only), before any forward
        checked_ref = CachedReference(torch.zeros(1)) if cache_here else ref_model
        if model is not None:  # RMU: the model gives hidden states and has the layer
            check_models(f_loss, f_hparams, model, checked_ref)
            check_models(r_loss, r_hparams, model, checked_ref)
            check_reference_apart(model, ref_model)  # before the reference is frozen
        super().__init__(*args, **kwargs)
        if self._distributed() and buffers == 1:
            raise ValueError(
                "buffers=1 is not supported in multi-process runs (DDP, FSDP2 or DeepSpeed): the "
                "combine inside the backward would need each parameter's averaged retain "
                "gradient. Use buffers=2."
            )
        if buffers == 1 and self.args.gradient_accumulation_steps > 1:
            raise ValueError(
                "buffers=1 combines each parameter inside the retain backward, so it takes one "
                "retain backward per step; the Trainer runs one per micro-batch. Found "
                f"`gradient_accumulation_steps = {self.args.gradient_accumulation_steps}`: set "
                "it to 1 (a larger batch), or use buffers=2."
            )
        self.forget_loss_name, self.retain_loss_name = forget_loss, retain_loss
        self.loss_kwargs, self.retain_loss_kwargs = f_hparams, r_hparams
        if cache_here:
            ref_model = self._reference_cache()
        self.ref_model = ref_model
        if isinstance(ref_model, torch.nn.Module):
            ref_model.eval().requires_grad_(False)
            ref_model.to(self.args.device)
        # fp16 mixed precision: the combine unscales in its own pass (no scaler.unscale_ pass)
        scaler = self.accelerator.scaler
        self._synth_kwargs = dict(
            method=method, alpha=alpha, gamma=gamma, eps=eps, granularity=granularity,
            backend=backend, stats=True, buffers=buffers, grad_scaler=scaler,
        )  # fmt: skip
        self._unscaled_by_combine = False
        if scaler is not None:
            self._skip_unscale_after_combine()
        # Built on the model as the Trainer will train it: in one process that is the model now
        # (so bad arguments raise here); under DDP, FSDP2 or DeepSpeed it is the model
        # accelerate prepares at train() (wrapped, sharded in place, or DeepSpeed's engine), so
        # the synthesizer is built then, and its arguments are checked on a stand-in parameter
        # now.
        if self._distributed():
            stand_in = [("stand_in.weight", torch.nn.Parameter(torch.zeros(1)))]
            GradientSynthesizer(stand_in, **self._synth_kwargs)
            self.synth: GradientSynthesizer | None = None
        else:
            self.synth = GradientSynthesizer(self.model, **self._synth_kwargs)
        self._window: dict[str, list[torch.Tensor]] = {"forget_loss": [], "retain_loss": []}
        self._geometry: list[torch.Tensor] = []

    def _skip_unscale_after_combine(self) -> None:
        """The Trainer clips (and measures) the gradient norm through
        ``accelerator.clip_grad_norm_``, which calls ``scaler.unscale_``; after a combine that
        unscaled the gradients itself, that call would raise (unscale_ twice in a step), so it
        is skipped for that step."""
        unscale_gradients = self.accelerator.unscale_gradients

        def unscale_unless_combined(optimizer=None):
            if not self._unscaled_by_combine:
                unscale_gradients(optimizer)

        self.accelerator.unscale_gradients = unscale_unless_combined

    def _scaled_optimizer(self, synth: GradientSynthesizer) -> torch.optim.Optimizer | None:
        """The optimizer the scaler steps, when the synthesizer unscales for a scaler; else
        None (the synthesizer unwraps accelerate's wrapper)."""
        if synth._scaler is None or not synth._scaler.enabled:
            return None
        return self.optimizer

    def _reference_cache(self) -> CachedReference:
        """NPO's reference from the model as it is now: one no-grad pass over the forget side
        of the training data, in order, in batches of ``per_device_train_batch_size``."""
        if self.train_dataset is None:
            raise ValueError('ref_model="cache" needs `train_dataset` (the forget set to cache).')
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self.args.per_device_train_batch_size,
            collate_fn=self.data_collator, shuffle=False,
        )  # fmt: skip
        forget_sides = (split_pair(self._prepare_inputs(batch))[0] for batch in loader)
        return CachedReference.compute(self.model, forget_sides, size=len(self.train_dataset))

    def _distributed(self) -> bool:
        return self.args.world_size > 1 or self.is_fsdp_enabled or self.is_deepspeed_enabled

    def _synthesizer_for(self, model: torch.nn.Module) -> GradientSynthesizer:
        """The synthesizer of the model being trained, built on its first use under DDP (the
        DDP model: backward passes under ``no_sync``, one all-reduce per buffer at the combine,
        instead of DDP's per-bucket ones), FSDP2 (the sharded model: local shards, one
        all-reduce of per-segment dots) or DeepSpeed (its engine: this rank's gradient
        partition, the same all-reduce of dots)."""
        if self.synth is None:
            self.synth = GradientSynthesizer(model, **self._synth_kwargs)
        return self.synth

    # Paired batches have no `labels`/model-forward columns: keep every column.
    def _remove_unused_columns(self, dataset, description=None):  # noqa: D401
        return dataset

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        return data_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Forget + retain loss of a pair, for evaluation (training uses ``training_step``)."""
        forget, retain = split_pair(inputs)
        loss = run_loss(
            self.forget_loss_name, model, forget, ref_model=self.ref_model, **self.loss_kwargs
        )
        loss = loss + run_loss(
            self.retain_loss_name, model, retain, ref_model=self.ref_model, forget=False,
            **self.retain_loss_kwargs,
        )  # fmt: skip
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        self._unscaled_by_combine = False
        inputs = self._prepare_inputs(inputs)
        forget, retain = split_pair(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        synth = self._synthesizer_for(model)
        # accelerate's backward under DeepSpeed also steps the engine at the last micro-batch,
        # before the combine: the engine's own backward instead (the scale is ours already)
        backward = (
            functools.partial(model.backward, scale_wrt_gas=False)
            if self.is_deepspeed_enabled
            else self.accelerator.backward
        )
        with synth.forget(), self.compute_loss_context_manager():
            loss_f = run_loss(
                self.forget_loss_name, model, forget, ref_model=self.ref_model, **self.loss_kwargs
            )
            backward(loss_f * scale)
        with synth.retain(), self.compute_loss_context_manager():
            loss_r = run_loss(
                self.retain_loss_name, model, retain, ref_model=self.ref_model, forget=False,
                **self.retain_loss_kwargs,
            )  # fmt: skip
            backward(loss_r * scale)
        self._window["forget_loss"].append(loss_f.detach())
        self._window["retain_loss"].append(loss_r.detach())
        if self.accelerator.sync_gradients:  # last micro-batch: the Trainer clips and steps next
            optimizer = self._scaled_optimizer(synth)
            stats = synth.combine_(optimizer=optimizer)
            self._unscaled_by_combine = optimizer is not None
            self._geometry.append(stats.table[-1])
            if self.is_deepspeed_enabled:  # the engine clips and steps on g_final (the Trainer's
                model.step()  # optimizer.step() is a no-op under DeepSpeed)
        return (loss_f.detach() + loss_r.detach()) * scale

    # The synthesizer's state across steps (GRU's moving average, a GradVac's φ̂) travels with
    # the optimizer's in every checkpoint, so `train(resume_from_checkpoint=...)` resumes it.
    # Under FSDP2 or DeepSpeed each rank holds its shard of the state, saved by every rank to its
    # own file.
    def _synthesizer_state_path(self, folder: str, synth: GradientSynthesizer) -> str:
        if not synth.engine.sharded:
            return os.path.join(folder, SYNTHESIZER_STATE_NAME)
        stem, ext = os.path.splitext(SYNTHESIZER_STATE_NAME)
        return os.path.join(folder, f"{stem}_rank{self.args.process_index}{ext}")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        state = self.synth.state_dict() if self.synth is not None else {}
        if state and (self.args.should_save or self.synth.engine.sharded):
            torch.save(state, self._synthesizer_state_path(output_dir, self.synth))
        if isinstance(self.ref_model, CachedReference) and self.args.should_save:
            torch.save(self.ref_model.state_dict(), os.path.join(output_dir, REFERENCE_CACHE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        cached = os.path.join(checkpoint, REFERENCE_CACHE_NAME)
        if isinstance(self.ref_model, CachedReference) and os.path.isfile(cached):
            # the checkpoint's cache was computed from the model before unlearning began
            state = torch.load(cached, map_location="cpu", weights_only=True)
            self.ref_model = CachedReference.from_state_dict(state)
        synth = self._synthesizer_for(self.model_wrapped)
        path = self._synthesizer_state_path(checkpoint, synth)
        if os.path.isfile(path):
            device = synth.retain_buffer.device
            synth.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        elif synth.keeps_state:  # resuming from zero would be another run, silently
            raise FileNotFoundError(
                f"The checkpoint {checkpoint} has no {os.path.basename(path)}, but method "
                f"{synth.method!r} keeps a state across steps (GRU's average, a GradVac's φ̂), "
                "which a resumed run must continue from: resume from a checkpoint this Trainer "
                "saved with the same method."
            )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean forget/retain losses and gradient geometry since the last log."""
        if "loss" in logs and self._window["forget_loss"]:
            for key, values in self._window.items():
                logs[key] = round(torch.stack(values).mean().item(), 6)
                values.clear()
            if self._geometry:
                means = torch.stack(self._geometry).mean(0).tolist()
                for name, value in zip(FIELDS, means):
                    if name in LOGGED_GEOMETRY:
                        logs[name] = round(value, 6)
                self._geometry.clear()
        super().log(logs, *args, **kwargs)
