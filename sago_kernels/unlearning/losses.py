"""The unlearning losses of the paper (Section 2.2), over a causal LM's logits and labels.

Labels follow the transformers convention: ``labels[b, t]`` is the token at position t, -100
where it is not scored, and the logits at t-1 predict it. log p(x) of a sequence is the sum of
its labelled tokens' log-probabilities.

Any forget loss composes with any retain loss and any combine method:

    >>> import torch, sago_kernels.unlearning.losses as L
    >>> logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    >>> bool(L.ga_loss(logits, labels) == -L.nll_loss(logits, labels))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._validation import check_scalar

IGNORE_INDEX = -100


def check_labels(labels: torch.Tensor, vocab: int) -> None:
    """Every label is a token id in ``[0, vocab)`` or ``IGNORE_INDEX``: any other value would be
    gathered as some other token (a negative one as token 0) and scored without a word.

    One fused check per call. On the CPU it raises ``ValueError`` naming a bad label. On an
    accelerator it is a device-side assertion (``torch._assert_async``), so the loss never waits
    for the device: a bad label stops the process at the next synchronisation, as
    ``F.cross_entropy`` does with a bad target there.
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"Parameter `labels` should hold integer token ids. Found `labels.dtype = "
            f"{labels.dtype}`."
        )
    bad = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= vocab)
    if labels.device.type != "cpu":
        torch._assert_async(
            ~bad.any(),
            f"sago_kernels.unlearning.losses: `labels` should be token ids in [0, {vocab}) or "
            f"{IGNORE_INDEX} (ignored)",
        )
        return
    if bad.any():
        where = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"Parameter `labels` should hold token ids in [0, {vocab}) (the logits' vocabulary) "
            f"or {IGNORE_INDEX} for unscored positions. Found `labels[{where}] = "
            f"{labels[where].item()}`; mark unscored positions with {IGNORE_INDEX}."
        )


def check_beta(beta: object) -> float:
    """β of NPO/SimNPO: a finite Python float > 0 (the losses divide by it)."""
    beta = check_scalar("beta", beta)
    if beta <= 0:
        raise ValueError(
            f"Parameter `beta` should be > 0 (the loss is scaled by 2/β). Found `beta = {beta}`."
        )
    return beta


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each labelled token and the mask of labelled positions, both ``[B, T-1]``."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            "`logits` should be [batch, time, vocab] and `labels` [batch, time]. Found "
            f"`logits.shape = {tuple(logits.shape)}`, `labels.shape = {tuple(labels.shape)}`."
        )
    check_labels(labels, logits.shape[-1])
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(x) per sequence: the sum over its labelled tokens, ``[B]``."""
    picked, _ = token_logprobs(logits, labels)
    return picked.sum(-1)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token negative log-likelihood over all labelled tokens (a causal LM's own loss).

    Used as the retain loss of GD (gradient descent on D_r).
    """
    picked, mask = token_logprobs(logits, labels)
    return -picked.sum() / mask.sum().clamp_min(1)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: L = −NLL(B_f), so descending L raises the forget set's NLL."""
    return -nll_loss(logits, labels)


def npo_loss(
    logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """NPO: L = −(2/β)·mean log σ(−β·(log p_θ(x) − log p_ref(x))), reference model frozen."""
    beta = check_beta(beta)
    log_ratio = sequence_logprob(logits, labels) - sequence_logprob(ref_logits.detach(), labels)
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def simnpo_loss(
    logits: torch.Tensor, labels: torch.Tensor, beta: float = 4.5, delta: float = 0.0
) -> torch.Tensor:
    """SimNPO: L = −(2/β)·mean log σ(β·(NLL_θ(x)/|x| − δ)), length-normalised, no reference."""
    beta, delta = check_beta(beta), check_scalar("delta", delta)
    picked, mask = token_logprobs(logits, labels)
    mean_nll = -picked.sum(-1) / mask.sum(-1).clamp_min(1)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


def kl_loss(logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, mean over labelled positions.

    The retain loss that keeps the model's predictions on D_r where the reference had them.
    Tokens the reference rules out (logit -inf, p_ref = 0) add 0 (0·log 0 = 0), not NaN.
    """
    _, mask = token_logprobs(logits, labels)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits[:, :-1].detach().float(), dim=-1)
    ref_p = ref_logp.exp()
    # where, not a product: 0·(-inf) is NaN, and where's backward sends 0 to the unused branch
    kl = torch.where(ref_p > 0, ref_p * (ref_logp - logp), 0.0).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


# --------------------------------------------------------------------------- running a model


@dataclass(frozen=True)
class Loss:
    """A named loss: its function, whether it needs the frozen reference model, its defaults.

    ``ints``: the hyperparameters that are Python ints (a layer index, a seed), checked as such;
    every other one is a float.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs_reference: bool
    defaults: Mapping[str, float | int] = field(default_factory=dict)
    ints: frozenset[str] = frozenset()


FORGET_LOSSES: dict[str, Loss] = {
    "ga": Loss("ga", ga_loss, False),
    "npo": Loss("npo", npo_loss, True, {"beta": 0.1}),
    "simnpo": Loss("simnpo", simnpo_loss, False, {"beta": 4.5, "delta": 0.0}),
}
RETAIN_LOSSES: dict[str, Loss] = {
    "nll": Loss("nll", nll_loss, False),
    "kl": Loss("kl", kl_loss, True),
}
SUGGESTED_GAMMA = {"ga": 1.0, "npo": 1.0, "simnpo": 0.125}
"""Forget weight γ of the paper's public configs for each forget loss."""


def get_loss(name: str, *, forget: bool) -> Loss:
    """The registered forget (or retain) loss called ``name``; a clear error for anything else."""
    table, what = (FORGET_LOSSES, "forget_loss") if forget else (RETAIN_LOSSES, "retain_loss")
    if name not in table:
        raise ValueError(
            f"Parameter `{what}` should be one of {sorted(table)}. Found `{what} = {name!r}`."
        )
    return table[name]


def check_int(name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    """A Python int (not bool, not a float: a layer index or a seed is never rounded) in
    ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"Parameter `{name}` should be a Python int. Found `type({name}) = "
            f"{type(value).__name__}`."
        )
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"Parameter `{name}` should be {bounds}. Found `{name} = {value}`.")
    return value


def loss_hparams(
    loss: Loss, hparams: Mapping[str, object], *, what: str = "loss_kwargs"
) -> dict[str, float | int]:
    """The loss's hyperparameters (its defaults, overridden by ``hparams``), each checked, so a
    bad one fails before any forward pass. ``what``: the argument they came in as."""
    unknown = sorted(set(hparams) - set(loss.defaults))
    if unknown:
        takes = sorted(loss.defaults) if loss.defaults else "none"
        raise TypeError(
            f"Parameter `{what}` should only hold the {loss.name!r} loss's hyperparameters "
            f"({takes}). Found {unknown}."
        )
    merged = {**loss.defaults, **hparams}
    values = {
        name: check_int(name, value) if name in loss.ints else check_scalar(name, value)
        for name, value in merged.items()
    }
    if "beta" in values:
        check_beta(values["beta"])
    return values


def check_batch(name: str, batch: object) -> Mapping[str, torch.Tensor]:
    """A batch a loss can run on: a mapping with ``input_ids`` and ``labels`` tensors."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"Parameter `{name}` should be a mapping with `input_ids` and `labels` (and optionally "
            f"`attention_mask`). Found `type({name}) = {type(batch).__name__}`."
        )
    for key in ("input_ids", "labels"):
        if not isinstance(batch.get(key), torch.Tensor):
            raise ValueError(
                f"Parameter `{name}` should have a tensor under {key!r}. Found keys "
                f"{sorted(map(str, batch))}."
            )
    return batch


def _logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return out.logits if hasattr(out, "logits") else out


def run_loss(
    loss: str | Loss,
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    ref_model: torch.nn.Module | None = None,
    forget: bool = True,
    **hparams: float,
) -> torch.Tensor:
    """One forward of ``model`` (and of ``ref_model`` under no_grad when the loss needs it),
    then the loss. ``batch`` has ``input_ids``, ``labels`` and optionally ``attention_mask``.
    Everything is checked before the forward."""
    if isinstance(loss, str):
        loss = get_loss(loss, forget=forget)
    kwargs: dict[str, object] = dict(loss_hparams(loss, hparams, what="hparams"))
    batch = check_batch("batch", batch)
    if loss.needs_reference and ref_model is None:
        raise ValueError(f"The {loss.name!r} loss needs `ref_model` (a frozen copy of the model).")
    logits = _logits(model, batch)
    if loss.needs_reference:
        with torch.no_grad():
            kwargs["ref_logits"] = _logits(ref_model, batch)
    return loss.fn(logits, batch["labels"], **kwargs)
