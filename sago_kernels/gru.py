"""GRU (gradient-rectified unlearning, arXiv 2503.09117): the one projection that keeps a state.

GRU keeps an exponential moving average m of the retain gradient and projects the forget
gradient off m where they conflict. As a fused combine it has the shape of ``pcgrad`` with a
third flat buffer, the state m (same dtype, device and layout as the gradients):

    m' = β·r + (1 − β)·m                  (element-wise; β weighs the new retain gradient)
    d = f·m', n = m'·m'                   (per segment, or over all segments for ``gru_global``)
    c = d/(n + eps) if d < 0 else 0
    g_final = γ·(f − c·m') + κ·α·r        (κ = ``retain_coef``)

and m' replaces m. The backends run it in two passes over the buffers: one that reads f, r, m
and sums each segment's dots of f and m' (m' is recomputed, never stored there), and one that
reads f, r, m again and writes g_final and m': 8·N·itemsize bytes, against ``pcgrad``'s 5. This
module is the O(segments) step between them, in torch on the device, shared by every backend.

Conventions, from the authors' code (github.com/tmlr-group/GRU): m starts at zero, β = 0.8
weighs the *new* gradient (``moving_avg``), the projection is over the whole model
(``gru_global``; ``gru`` does it per segment of the layout), and the update is the rectified
forget gradient alone (κ = 0) or with the retain gradient added (their ``+ce`` variant; κ = 1
here, the default, as every other method here keeps α·r). With β = 1 and κ = 1, GRU is
``pcgrad``. A segment whose dots (f·m', m'·m', f·f) or coefficients are not finite is written as
NaN and keeps its state: one bad step does not poison the average for the rest of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_scalar
from .weightings import skip_if_non_finite

NUM_DOTS = 5
"""Dots per segment of the state pass, in this order: f·r, r·r, f·f (the statistics' inputs,
as every projection pass sums them), f·m', m'·m'."""


@dataclass(frozen=True)
class EMAParams:
    """A GRU method's parameters: ``beta`` weighs the new retain gradient in the moving average
    (in (0, 1]); ``retain_coef`` is κ, the weight of α·r added to the rectified forget part."""

    beta: float = 0.8
    retain_coef: float = 1.0

    def __post_init__(self) -> None:
        beta = check_scalar("beta", self.beta)
        retain_coef = check_scalar("retain_coef", self.retain_coef)
        if not 0.0 < beta <= 1.0:
            raise ValueError(
                "Parameter `beta` (the new retain gradient's weight in the moving average) "
                f"should be in (0, 1]. Found `beta = {beta}`."
            )
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "retain_coef", retain_coef)

    @property
    def keep(self) -> float:
        """1 − β, the old average's weight (each backend rounds it to float32 once)."""
        return 1.0 - self.beta


def coefficients(
    dots: torch.Tensor,
    alpha: float,
    gamma: float,
    eps: float,
    retain_coef: float,
    whole: bool,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[S, 3]`` float32 (a, b, c) with g_final = a·f + b·r + c·m' in each segment.

    ``dots``: ``[S, NUM_DOTS]`` float32 per-segment sums (:data:`NUM_DOTS`), summed over the
    ranks for sharded buffers. ``whole``: one set from the dots of all segments together
    (``gru_global``). Where f·m', m'·m', f·f or a coefficient is not finite, all three are NaN:
    the write pass makes the segment NaN and leaves its state as it was. ``found_inf`` (a loss
    scaler's flag, one float32 element): set in place (no host sync) when a segment's r·r or f·f
    or a coefficient is not finite; while it is set, from this call or an earlier one of the
    step, every coefficient is NaN, so no segment's state moves in a step the scaler skips
    (:func:`~sago_kernels.weightings.skip_if_non_finite`).
    """
    s = dots.shape[0]
    d = dots.to(torch.float32)
    if found_inf is not None:
        d = skip_if_non_finite(d, found_inf)
    if whole:
        d = d.sum(0, keepdim=True)
    fm, mm, ff = d[:, 3], d[:, 4], d[:, 2]
    c = torch.where(fm < 0, fm / (mm + eps), torch.zeros_like(fm))
    a = torch.full_like(c, gamma)
    b = torch.full_like(c, retain_coef * alpha)  # κ·α in double, rounded once
    coef = torch.stack([a, b, -gamma * c], -1)
    ok = torch.isfinite(torch.stack([fm, mm, ff], -1)).all(-1, keepdim=True)
    ok = ok & torch.isfinite(coef).all(-1, keepdim=True)
    coef = torch.where(ok, coef, torch.full_like(coef, float("nan")))
    if found_inf is not None:  # a weight that overflows from finite dots stops the step too
        bad = (~ok).any().to(found_inf.dtype).reshape(found_inf.shape)
        torch.maximum(found_inf, bad, out=found_inf)
        coef = torch.where(found_inf.reshape(()) != 0, torch.full_like(coef, float("nan")), coef)
    return coef.expand(s, 3).contiguous() if whole else coef
