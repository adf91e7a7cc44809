"""One step of the paper's Algorithm 1 for a plain PyTorch loop.

Draw B_f and B_r; g_f = ∇L_f(B_f) into the forget buffer, g_r = ∇L_r(B_r) into the retain buffer;
g = combine(g_r, g_f) in place; any optimizer steps on g.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._validation import check_scalar
from .losses import (
    check_batch, check_models, check_reference_apart, get_loss, run_loss, step_hparams,
)  # fmt: skip
from .references import Reference
from ..stats import CombineStats
from ..synthesizer import GradientSynthesizer


@dataclass(frozen=True)
class StepResult:
    """The step's losses (detached) and gradient geometry (device tensors, or None)."""

    forget_loss: torch.Tensor
    retain_loss: torch.Tensor
    stats: CombineStats | None


def unlearning_step(
    model: torch.nn.Module,
    synth: GradientSynthesizer,
    optimizer: torch.optim.Optimizer,
    forget_batch: Mapping[str, torch.Tensor],
    retain_batch: Mapping[str, torch.Tensor],
    *,
    forget_loss: str = "npo",
    retain_loss: str = "nll",
    ref_model: Reference | None = None,
    loss_kwargs: Mapping[str, float | int] | None = None,
    retain_loss_kwargs: Mapping[str, float | int] | None = None,
    max_grad_norm: float | None = None,
) -> StepResult:
    """Algorithm 1, one step: two backward passes into the flat buffers, the fused combine,
    optional clipping of g, then ``optimizer.step()`` and ``optimizer.zero_grad()``.

    Batches hold ``input_ids``, ``labels`` and optionally ``attention_mask`` (and the forget
    batch ``index``, its examples' positions, with a cached reference). ``ref_model``: a frozen
    copy of the model, ``AdaptersOff(model)`` under LoRA, or for NPO a ``CachedReference``
    (``sago_kernels.unlearning.references``: the last two hold no second model). Every argument
    is checked before the first context, so a bad one leaves the last step's gradients as
    they were. ``loss_kwargs``: the forget loss's hyperparameters; ``retain_loss_kwargs``: the
    retain loss's (RMU's retain ``layer`` defaults to the forget loss's, see
    :func:`~sago_kernels.unlearning.losses.step_hparams`). ``max_grad_norm``: a finite float
    > 0, or None for no clipping.
    """
    f_loss, r_loss = get_loss(forget_loss, forget=True), get_loss(retain_loss, forget=False)
    hparams, r_hparams = step_hparams(f_loss, r_loss, loss_kwargs, retain_loss_kwargs)
    check_models(f_loss, hparams, model, ref_model)
    check_models(r_loss, r_hparams, model, ref_model)
    check_reference_apart(model, ref_model)
    check_batch("forget_batch", forget_batch)
    check_batch("retain_batch", retain_batch)
    if max_grad_norm is not None:
        max_grad_norm = check_scalar("max_grad_norm", max_grad_norm)
        if max_grad_norm <= 0:
            raise ValueError(
                "Parameter `max_grad_norm` should be > 0, or None for no clipping. Found "
                f"`max_grad_norm = {max_grad_norm}`."
            )
    with synth.forget():
        loss_f = run_loss(f_loss, model, forget_batch, ref_model=ref_model, **hparams)
        loss_f.backward()
    with synth.retain():
        loss_r = run_loss(r_loss, model, retain_batch, ref_model=ref_model, **r_hparams)
        loss_r.backward()
    stats = synth.combine_()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(synth.params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return StepResult(loss_f.detach(), loss_r.detach(), stats)
