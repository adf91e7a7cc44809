"""The reference a loss compares against, without a second copy of the model where none is needed.

NPO, the KL retain loss and RMU's retain term compare the model with a *reference*: the model as
it was before unlearning. The plain form is a frozen full copy (``ref_model=copy.deepcopy(model)``),
run forward every step: for a 7-8B model in bf16 another 14-16 GB per GPU and a second forward.
Two forms need no copy and give the same losses, bit for bit:

- :class:`CachedReference` — NPO reads the reference only through log p_ref(x) of each forget
  sequence, a fixed number per example since the forget set is fixed. One no-grad pass over the
  forget set before training (:meth:`CachedReference.compute`, with the model itself, before it
  has changed) keeps one float32 per example; the batches then carry each example's position
  (``index``) and the loss looks the values up. KL and RMU need the reference's whole next-token
  distributions or hidden states, which the cache does not hold: they refuse it.
- :class:`AdaptersOff` — under LoRA (``peft``) the reference is the base model, which is the
  model itself with its adapters switched off (``disable_adapter()``): the reference forward runs
  on the same weights, in eval mode and without grad. Every loss takes it.

Where a full-model reference is truly needed (KL or RMU's retain term under full fine-tuning),
the frozen copy stays the exact form; its cost is one more set of weights and one forward a step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch

from .logprobs import check_batch, model_logits, sequence_logprob

__all__ = ["AdaptersOff", "CachedReference", "Reference", "compute_reference", "run_reference"]


class CachedReference:
    """log p_ref(x) of each example of a fixed forget set, by its position in the set: NPO's
    whole use of the reference model, computed once (:meth:`compute`).

    Example:
        >>> import torch
        >>> cache = CachedReference(torch.tensor([-3.5, -1.25]))
        >>> cache.lookup(torch.tensor([1, 1, 0])).tolist()
        [-1.25, -1.25, -3.5]
    """

    def __init__(self, logprobs: torch.Tensor) -> None:
        if not isinstance(logprobs, torch.Tensor) or logprobs.dim() != 1:
            raise ValueError(
                "Parameter `logprobs` should be a 1-D tensor: one log p_ref(x) per forget "
                f"example. Found {getattr(logprobs, 'shape', type(logprobs).__name__)}."
            )
        if not logprobs.is_floating_point():
            raise TypeError(
                f"Parameter `logprobs` should be floating point. Found `{logprobs.dtype}`."
            )
        self.logprobs = logprobs.detach()

    def __len__(self) -> int:
        return self.logprobs.numel()

    @classmethod
    @torch.no_grad()
    def compute(
        cls, model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], size: int
    ) -> CachedReference:
        """One no-grad forward of ``model`` (in eval mode) over ``batches`` covering the ``size``
        forget examples. Each batch holds ``input_ids``, ``labels``, optionally
        ``attention_mask``, and ``index``: the examples' positions in the forget set. Call it
        with the model *before* unlearning (it is then the reference) and with the batches the
        training will use for the values to be bitwise those of a frozen copy run inside the
        steps (a sequence's log-probability may differ in its last bits when it is padded to
        another width)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"Parameter `size` should be an int >= 1. Found `size = {size!r}`.")
        values: torch.Tensor | None = None
        seen = None
        with _eval_mode(model):
            for batch in batches:
                batch = check_batch("batch", batch)
                index = _index(batch, size)
                logp = sequence_logprob(model_logits(model, batch), batch["labels"])
                if values is None:
                    values = torch.full((size,), float("nan"), dtype=logp.dtype, device=logp.device)
                    seen = torch.zeros(size, dtype=torch.bool, device=logp.device)
                index = index.to(logp.device)
                values[index] = logp
                seen[index] = True
        if values is None or not bool(seen.all()):
            missing = size if seen is None else int((~seen).sum())
            raise ValueError(
                f"The batches should cover all {size} forget examples (through `index`). Found "
                f"{missing} never seen; pass the whole forget set."
            )
        return cls(values)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """The cached log p_ref(x) of the examples at ``index`` (on ``index``'s device)."""
        index = _index({"index": index}, len(self))
        return self.logprobs.to(index.device)[index]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"logprobs": self.logprobs.cpu()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> CachedReference:
        logprobs = state.get("logprobs") if isinstance(state, Mapping) else None
        if not isinstance(logprobs, torch.Tensor):
            raise ValueError("A cached reference's state should hold a `logprobs` tensor.")
        return cls(logprobs)

    def __repr__(self) -> str:
        return f"CachedReference({len(self)} examples, {self.logprobs.dtype})"


class AdaptersOff:
    """The base model of a ``peft`` model as the reference: the model itself, its adapters
    switched off (``disable_adapter()``), run in eval mode without grad. No copy at all.

    With peft's default initialisation (B = 0) it is exactly the model unlearning starts from,
    and stays so: only the adapters are trained.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        if not callable(getattr(model, "disable_adapter", None)):
            raise TypeError(
                "Parameter `model` should be a peft model (with `disable_adapter()`): the "
                f"reference is its base with the adapters off. Found `{type(model).__name__}`; "
                "for a model without adapters pass a frozen copy (`copy.deepcopy(model)`) or, "
                "for NPO, a `CachedReference`."
            )
        self.model = model

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        with self.model.disable_adapter(), _eval_mode(self.model), torch.no_grad():
            yield self.model

    def __repr__(self) -> str:
        return f"AdaptersOff({type(self.model).__name__})"


Reference = torch.nn.Module | CachedReference | AdaptersOff
"""What ``ref_model=`` takes: a frozen copy, a cache of NPO's log-probs, or a LoRA base."""


def compute_reference(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], size: int
) -> CachedReference:
    """:meth:`CachedReference.compute`: NPO's reference of ``size`` forget examples."""
    return CachedReference.compute(model, batches, size)


def run_reference(reference: torch.nn.Module | AdaptersOff, forward):
    """``forward(module)`` on the reference, without grad: a frozen copy as it is (the caller
    keeps it in eval mode), or the adapter-off base in eval mode."""
    if isinstance(reference, AdaptersOff):
        with reference.active() as module:
            return forward(module)
    with torch.no_grad():
        return forward(reference)


def _index(batch: Mapping[str, torch.Tensor], size: int) -> torch.Tensor:
    index = batch.get("index")
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.long:
        raise ValueError(
            "A batch read against a cached reference should carry `index`: a 1-D int64 tensor "
            "of the examples' positions in the forget set (`PairedCollator` adds "
            "`forget_index`). Found "
            f"{'no `index`' if index is None else getattr(index, 'shape', type(index))}."
        )
    bad = ((index < 0) | (index >= size)).any()
    if index.device.type != "cpu":  # no host sync: a device-side assertion, as check_labels
        torch._assert_async(~bad, f"`index` should hold positions in [0, {size})")
    elif bad:
        raise ValueError(
            f"`index` should hold positions in [0, {size}) (the cached forget set). Found "
            f"values in [{int(index.min())}, {int(index.max())}]."
        )
    return index


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (no dropout) inside, each put back as it was after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
