"""Log-probabilities of labelled tokens under a causal LM: the floor the losses, the cached
reference and the metrics stand on.

Labels follow the transformers convention: ``labels[b, t]`` is the token at position t,
``IGNORE_INDEX`` where it is not scored, and the logits at t-1 predict it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

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


def model_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits on a batch (a transformers model's ``.logits``, or what it returns)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return out.logits if hasattr(out, "logits") else out
