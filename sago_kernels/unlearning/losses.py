"""The unlearning losses of the paper (Section 2.2), over a causal LM's logits and labels, and
RMU (Li et al. 2024, "The WMDP Benchmark"), over one layer's hidden states.

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

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._validation import check_scalar
from .logprobs import (  # noqa: F401  (IGNORE_INDEX, check_labels: re-exported, the losses' API)
    IGNORE_INDEX, check_batch, check_labels, sequence_logprob, token_logprobs,
)  # fmt: skip
from .logprobs import model_logits as _logits
from .references import AdaptersOff, CachedReference, Reference, run_reference

def check_beta(beta: object) -> float:
    """β of NPO/SimNPO: a finite Python float > 0 (the losses divide by it)."""
    beta = check_scalar("beta", beta)
    if beta <= 0:
        raise ValueError(
            f"Parameter `beta` should be > 0 (the loss is scaled by 2/β). Found `beta = {beta}`."
        )
    return beta


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
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logits: torch.Tensor | None = None,
    beta: float = 0.1,
    *,
    ref_logprob: torch.Tensor | None = None,
) -> torch.Tensor:
    """NPO: L = −(2/β)·mean log σ(−β·(log p_θ(x) − log p_ref(x))), reference model frozen.

    The reference enters only through log p_ref(x) of each sequence: give the reference's
    ``ref_logits``, or the values themselves, ``ref_logprob`` ``[B]`` (a
    :class:`~sago_kernels.unlearning.references.CachedReference`'s)."""
    beta = check_beta(beta)
    if (ref_logits is None) == (ref_logprob is None):
        raise ValueError(
            "npo_loss needs the reference as exactly one of `ref_logits` (its logits on the "
            "batch) or `ref_logprob` (log p_ref(x) per sequence, e.g. from a CachedReference)."
        )
    if ref_logprob is None:
        ref_logprob = sequence_logprob(ref_logits.detach(), labels)
    elif ref_logprob.shape != labels.shape[:1]:
        raise ValueError(
            f"`ref_logprob` should hold one value per sequence, shape {tuple(labels.shape[:1])}. "
            f"Found `ref_logprob.shape = {tuple(ref_logprob.shape)}`."
        )
    log_ratio = sequence_logprob(logits, labels) - ref_logprob.detach()
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


# --------------------------------------------------------------------------- RMU

RMU_STEERING = 20.0
"""c of RMU: the WMDP original's ``--steering_coeffs`` default (Zephyr-7B, bio and cyber)."""

RMU_LAYER = 1
"""RMU's default ``layer``: ``hidden_states[1]``, the first block's output, which every model
has. The original steers the output of block 7 of Zephyr-7B's 32 (``--layer_id 7``), that is
``layer=8`` here: pass the layer for a real model."""


def check_steering(steering: object) -> float:
    """c of RMU: a finite Python float > 0 (c = 0 would steer every activation to zero)."""
    steering = check_scalar("steering", steering)
    if steering <= 0:
        raise ValueError(
            f"Parameter `steering` should be > 0 (the forget activations are steered to c·u). "
            f"Found `steering = {steering}`."
        )
    return steering


@functools.lru_cache(maxsize=64)
def _direction(
    seed: int, hidden_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=g, dtype=torch.float32)
    return (u / u.norm()).to(device=device, dtype=dtype)


def rmu_direction(
    hidden_size: int,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RMU's fixed random unit vector u, ``[hidden_size]``.

    Drawn as the original draws it (each coordinate uniform in [0, 1), then divided by the
    norm, so u lies in the positive orthant), but from ``torch.Generator().manual_seed(seed)``
    on the CPU in float32: the same seed and size give the same u on every device and in every
    call, which a step-by-step loss needs. Cached per (seed, size, device, dtype); read-only.
    """
    hidden_size = check_int("hidden_size", hidden_size, low=1)
    seed = check_int("seed", seed, high=_INT_HIGH["seed"])
    return _direction(seed, hidden_size, torch.device(device or "cpu"), dtype)


def _token_mse(
    hidden: torch.Tensor, target: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Mean over counted tokens of ‖h − target‖²/d, in float32 (the original's ``mse_loss``
    of float32 copies averages over tokens and hidden units alike)."""
    if hidden.dim() != 3:
        raise ValueError(
            f"`hidden` should be [batch, time, hidden]. Found `hidden.shape = "
            f"{tuple(hidden.shape)}`."
        )
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)
    if attention_mask is None:
        return per_token.mean()
    if attention_mask.shape != per_token.shape:
        raise ValueError(
            f"`attention_mask` should be [batch, time] = {tuple(per_token.shape)}, as the hidden "
            f"states. Found `attention_mask.shape = {tuple(attention_mask.shape)}`."
        )
    counted = attention_mask != 0
    # where, not a product: a padded position's NaN would survive a multiplication by 0
    return torch.where(counted, per_token, 0.0).sum() / counted.sum().clamp_min(1)


def rmu_loss(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steering: float = RMU_STEERING,
    seed: int = 0,
) -> torch.Tensor:
    """RMU's forget term: L = mean over tokens of ‖h_θ(x) − c·u‖²/d on B_f.

    Descending it pushes the layer's activations on forget text towards a fixed random
    direction scaled far beyond their usual norm, so the later layers read noise there.
    ``hidden``: one layer's hidden states ``[B, T, d]``. Tokens counted: those where
    ``attention_mask`` is nonzero (every token without a mask); labels play no part, as in the
    original, which steers every token of the forget text (its padding too: not here).
    """
    steering = check_steering(steering)
    u = rmu_direction(hidden.shape[-1], seed, device=hidden.device)
    return _token_mse(hidden, steering * u, attention_mask)


def rmu_retain_loss(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, *, ref_hidden: torch.Tensor
) -> torch.Tensor:
    """RMU's retain term: mean over tokens of ‖h_θ(x) − h_ref(x)‖²/d on B_r, at the same layer
    of the frozen reference, so the retain text's representations stay where they were.

    The original multiplies it by α (``--alpha 100``, :data:`SUGGESTED_ALPHA`); here that
    weight is the combine's retain weight ``alpha``, so it is not applied again. Tokens counted
    as in :func:`rmu_loss`.
    """
    if ref_hidden.shape != hidden.shape:
        raise ValueError(
            f"`ref_hidden` should have the shape of `hidden` {tuple(hidden.shape)} (the same layer "
            f"of a copy of the model). Found `ref_hidden.shape = {tuple(ref_hidden.shape)}`."
        )
    return _token_mse(hidden, ref_hidden.detach(), attention_mask)


# --------------------------------------------------------------------------- running a model


@dataclass(frozen=True)
class Loss:
    """A named loss: its function, whether it needs the frozen reference model, its defaults.

    ``ints``: the hyperparameters that are Python ints (a layer index, a seed), checked as such;
    every other one is a float. ``reads``: ``"logits"`` (``fn(logits, labels, ...)``) or
    ``"hidden_states"`` (``fn(hidden, attention_mask, ...)`` on ``hidden_states[layer]``, the
    ``layer`` hyperparameter). ``per_sequence_reference``: the loss reads the reference only
    through log p_ref(x) of each sequence, so a ``CachedReference`` can stand for it (NPO).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs_reference: bool
    defaults: Mapping[str, float | int] = field(default_factory=dict)
    ints: frozenset[str] = frozenset()
    reads: str = "logits"
    per_sequence_reference: bool = False


FORGET_LOSSES: dict[str, Loss] = {
    "ga": Loss("ga", ga_loss, False),
    "npo": Loss("npo", npo_loss, True, {"beta": 0.1}, per_sequence_reference=True),
    "simnpo": Loss("simnpo", simnpo_loss, False, {"beta": 4.5, "delta": 0.0}),
    "rmu": Loss(
        "rmu", rmu_loss, False, {"layer": RMU_LAYER, "steering": RMU_STEERING, "seed": 0},
        ints=frozenset({"layer", "seed"}), reads="hidden_states",
    ),  # fmt: skip
}
RETAIN_LOSSES: dict[str, Loss] = {
    "nll": Loss("nll", nll_loss, False),
    "kl": Loss("kl", kl_loss, True),
    "rmu": Loss(
        "rmu", rmu_retain_loss, True, {"layer": RMU_LAYER}, ints=frozenset({"layer"}),
        reads="hidden_states",
    ),  # fmt: skip
}
SUGGESTED_GAMMA = {"ga": 1.0, "npo": 1.0, "simnpo": 0.125, "rmu": 1.0}
"""Forget weight γ each loss's source sets: 1 for GA and NPO (open-unlearning's
``GradDiff.yaml``, ``NPO.yaml``); 0.125 for SimNPO (open-unlearning's ``SimNPO.yaml``, with
β = 4.5 and δ = 0, the defaults of :data:`FORGET_LOSSES`; the SimNPO authors' TOFU config,
OPTML-Group/Unlearn-Simple ``TOFU/config/forget.yaml``, has ``npo_coeff`` 0.1375, β = 2.5,
δ = 0); 1 for RMU (WMDP's ``rmu/unlearn.py`` adds its forget term unweighted)."""
SUGGESTED_ALPHA = {"ga": 1.0, "npo": 1.0, "simnpo": 1.0, "rmu": 100.0}
"""Retain weight α each loss's source sets: 1 for GD's NLL with GA, NPO and SimNPO (the
configs above); 100 for RMU's own retain term (WMDP's ``rmu/unlearn.py``: ``--alpha 100``,
with ``--steering_coeffs 20``, :data:`RMU_STEERING`). The combine's ``alpha`` is this weight:
:func:`rmu_retain_loss` does not apply it again."""


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


_INT_HIGH = {"seed": 2**64 - 1}  # torch.Generator's range; a layer is checked against the model


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
        name: (
            check_int(name, value, high=_INT_HIGH.get(name))
            if name in loss.ints
            else check_scalar(name, value)
        )
        for name, value in merged.items()
    }
    if "beta" in values:
        check_beta(values["beta"])
    if "steering" in values:
        check_steering(values["steering"])
    return values


REFERENCE_FORMS = (
    "a frozen copy of the model (`copy.deepcopy(model)` before unlearning), "
    "`AdaptersOff(model)` for a peft (LoRA) model (its base: no copy), or for NPO a "
    "`CachedReference` (log p_ref(x) per forget example, computed once: no model held)"
)
"""What ``ref_model=`` can be, named in every error that asks for a reference."""


def check_models(
    loss: Loss,
    hparams: Mapping[str, object],
    model: torch.nn.Module,
    ref_model: Reference | None = None,
) -> None:
    """What can be checked of the models before a forward: the reference is there if the loss
    needs it, in a form the loss can read; for a loss over hidden states, each model can be
    asked for them and has the ``layer`` in ``hparams`` (checked :func:`loss_hparams`) when its
    config says how many blocks it has (a model without a config is checked after its forward)."""
    if loss.needs_reference and ref_model is None:
        raise ValueError(f"The {loss.name!r} loss needs `ref_model`: {REFERENCE_FORMS}.")
    forms = (torch.nn.Module, CachedReference, AdaptersOff)
    if loss.needs_reference and not isinstance(ref_model, forms):
        raise TypeError(
            f"Parameter `ref_model` should be {REFERENCE_FORMS}. Found "
            f"`{type(ref_model).__name__}`."
        )
    if isinstance(ref_model, CachedReference) and loss.needs_reference:
        if not loss.per_sequence_reference:
            reads = "hidden states" if loss.reads == "hidden_states" else "next-token distributions"
            raise ValueError(
                f"The {loss.name!r} loss reads the reference's whole {reads}, which a "
                "CachedReference (NPO's log p_ref(x) per example) does not hold. Pass "
                "`AdaptersOff(model)` under LoRA, or a frozen copy of the model."
            )
    if loss.reads != "hidden_states":
        return
    reference = ref_model.model if isinstance(ref_model, AdaptersOff) else ref_model
    models = [("model", model)] + ([("ref_model", reference)] if loss.needs_reference else [])
    for name, m in models:
        _check_hidden_states_model(loss, name, m, int(hparams["layer"]))


def _memory_key(t: torch.Tensor) -> object:
    """What identifies a tensor's memory: its storage's address, or the tensor itself where there
    is none to compare (meta tensors all sit at address 0; DTensors and other subclasses)."""
    try:
        address = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return id(t)
    return address if address else id(t)


def check_reference_apart(model: torch.nn.Module, ref_model: Reference | None) -> None:
    """A reference model shares no trainable parameter with the model. A shared one
    (``ref_model=model``, or a reference built around the model's own modules) would be frozen
    with the reference, so never unlearned, and the reference would move with the model it
    anchors. (``AdaptersOff`` shares the base by design: only the adapters train.)"""
    if not isinstance(ref_model, torch.nn.Module):
        return
    if ref_model is model:
        raise ValueError(
            "Parameter `ref_model` should be a separate frozen copy of the model. Found the model "
            "itself: it would be frozen (nothing left to unlearn) and the reference would move "
            "with it. Pass `copy.deepcopy(model)` taken before unlearning."
        )
    held = {_memory_key(t) for t in (*ref_model.parameters(), *ref_model.buffers()) if t.numel()}
    for name, p in model.named_parameters():
        if p.requires_grad and p.numel() and _memory_key(p) in held:
            raise ValueError(
                "Parameter `ref_model` should share no trainable parameter with `model`. Found "
                f"`{name}` in both: it would be frozen with the reference (never unlearned) and "
                "the reference would move with the model. Pass a separate copy "
                "(`copy.deepcopy(model)` taken before unlearning)."
            )


def step_hparams(
    forget_loss: Loss,
    retain_loss: Loss,
    loss_kwargs: Mapping[str, object] | None = None,
    retain_loss_kwargs: Mapping[str, object] | None = None,
) -> tuple[dict[str, float | int], dict[str, float | int]]:
    """Both losses' hyperparameters for a step, checked: ``loss_kwargs`` for the forget loss,
    ``retain_loss_kwargs`` for the retain loss.

    A retain loss with a ``layer`` (RMU's) not given one in ``retain_loss_kwargs`` takes the
    forget loss's, when that has one: the original steers and keeps the same layer, and
    ``loss_kwargs={"layer": 8}`` alone should not leave the retain term at its default."""
    forget = loss_hparams(forget_loss, dict(loss_kwargs or {}))
    given = dict(retain_loss_kwargs or {})
    if "layer" in retain_loss.defaults and "layer" not in given and "layer" in forget:
        given["layer"] = forget["layer"]
    return forget, loss_hparams(retain_loss, given, what="retain_loss_kwargs")


def _check_hidden_states_model(loss: Loss, name: str, model: torch.nn.Module, layer: int) -> None:
    """Before the forward: ``model`` can be asked for hidden states, and has ``layer`` when its
    config says how many blocks it has (otherwise :func:`_hidden_state` checks after)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: the output is checked instead
        params = None
    if params is not None and not any(
        p.name == "output_hidden_states" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params
    ):
        raise ValueError(
            f"The {loss.name!r} loss reads hidden states, so `{name}` should accept "
            f"`output_hidden_states=True` and return `.hidden_states`, as transformers models do. "
            f"Found `{type(model).__name__}.forward` without it."
        )
    blocks = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if isinstance(blocks, int) and layer > blocks:
        raise ValueError(_layer_error(layer, blocks + 1))


def _layer_error(layer: int, count: int) -> str:
    return (
        f"Parameter `layer` should be in [0, {count - 1}] for this model ({count} hidden states: "
        f"0 is the embeddings' output, i the i-th block's). Found `layer = {layer}`."
    )


def _hidden_state(
    loss: Loss, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], layer: int
) -> torch.Tensor:
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
        output_hidden_states=True,
    )  # fmt: skip
    hidden = getattr(out, "hidden_states", None)
    if hidden is None:
        raise ValueError(
            f"The {loss.name!r} loss reads hidden states: `model(..., output_hidden_states=True)` "
            f"should return them as `.hidden_states` (transformers models do). Found a "
            f"{type(out).__name__} without them."
        )
    if layer >= len(hidden):
        raise ValueError(_layer_error(layer, len(hidden)))
    return hidden[layer]


def run_loss(
    loss: str | Loss,
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    ref_model: Reference | None = None,
    forget: bool = True,
    **hparams: float | int,
) -> torch.Tensor:
    """One forward of ``model`` (and of the reference under no_grad when the loss needs it),
    then the loss. ``batch`` has ``input_ids``, ``labels`` and optionally ``attention_mask``
    (and ``index`` with a :class:`CachedReference`). ``ref_model``: a frozen copy, an
    :class:`AdaptersOff` base or (NPO) a :class:`CachedReference`.
    Everything is checked before the forward (a layer past a model without a config, after).

    A loss over hidden states (RMU) asks for ``output_hidden_states=True`` and takes
    ``hidden_states[layer]``; the logits are computed all the same (one ordinary forward)."""
    if isinstance(loss, str):
        loss = get_loss(loss, forget=forget)
    kwargs: dict[str, object] = dict(loss_hparams(loss, hparams, what="hparams"))
    batch = check_batch("batch", batch)
    check_models(loss, kwargs, model, ref_model)
    if loss.reads == "hidden_states":
        layer = kwargs.pop("layer")
        hidden = _hidden_state(loss, model, batch, layer)
        if loss.needs_reference:
            kwargs["ref_hidden"] = run_reference(
                ref_model, lambda ref: _hidden_state(loss, ref, batch, layer)
            )
        return loss.fn(hidden, batch.get("attention_mask"), **kwargs)
    if isinstance(ref_model, CachedReference) and loss.needs_reference:
        kwargs["ref_logprob"] = ref_model.lookup(batch.get("index"))
    logits = _logits(model, batch)
    if loss.needs_reference and "ref_logprob" not in kwargs:
        kwargs["ref_logits"] = run_reference(ref_model, lambda ref: _logits(ref, batch))
    return loss.fn(logits, batch["labels"], **kwargs)
