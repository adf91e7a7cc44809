"""Paired forget/retain batches: Algorithm 1 draws one batch of each per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .losses import IGNORE_INDEX

SIDES = ("forget", "retain")


class PairedDataset(torch.utils.data.Dataset):
    """Each forget example paired with a retain example.

    One epoch is one pass over the forget set; retain examples are drawn by a seeded
    permutation and cycle when the retain set is smaller. Examples are mappings with
    ``input_ids`` and optionally ``labels`` (default: every token is scored). Each pair also
    carries ``index``, the forget example's position, which a cached reference (NPO's log
    p_ref(x) per example, ``references.CachedReference``) is read by.
    """

    def __init__(
        self,
        forget: Sequence[Mapping[str, Any]],
        retain: Sequence[Mapping[str, Any]],
        seed: int = 0,
    ):
        if len(forget) == 0 or len(retain) == 0:
            raise ValueError(
                f"Both sets need examples. Found {len(forget)} forget, {len(retain)} retain."
            )
        self.forget, self.retain = forget, retain
        g = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(len(retain), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict[str, Any]:
        retain = self.retain[self._order[i % len(self.retain)]]
        return {"forget": self.forget[i], "retain": retain, "index": i}


@dataclass
class PairedCollator:
    """Pads each side of a list of pairs into ``forget_*`` and ``retain_*`` tensors.

    Keys: ``{side}_input_ids`` (padded with ``pad_token_id``), ``{side}_attention_mask`` and
    ``{side}_labels`` (padded with -100, so padding is never scored); ``forget_index`` (int64)
    when the pairs carry the forget example's ``index`` (as :class:`PairedDataset`'s do).
    """

    pad_token_id: int = 0

    def __call__(self, pairs: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        for side in SIDES:
            examples = [p[side] for p in pairs]
            ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
            labels = [
                torch.as_tensor(e.get("labels", e["input_ids"]), dtype=torch.long) for e in examples
            ]
            width = max(len(x) for x in ids)
            batch[f"{side}_input_ids"] = torch.full(
                (len(ids), width), self.pad_token_id, dtype=torch.long
            )
            batch[f"{side}_attention_mask"] = torch.zeros((len(ids), width), dtype=torch.long)
            batch[f"{side}_labels"] = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
            for row, (x, y) in enumerate(zip(ids, labels)):
                batch[f"{side}_input_ids"][row, : len(x)] = x
                batch[f"{side}_attention_mask"][row, : len(x)] = 1
                batch[f"{side}_labels"][row, : len(y)] = y
        if pairs and all("index" in p for p in pairs):
            batch["forget_index"] = torch.tensor([int(p["index"]) for p in pairs], dtype=torch.long)
        return batch


def split_pair(
    batch: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``forget_*``/``retain_*`` keys → two model batches (input_ids, attention_mask, labels)."""
    sides = []
    for side in SIDES:
        prefix = f"{side}_"
        sides.append({k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)})
    return sides[0], sides[1]
