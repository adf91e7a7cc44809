"""Flat gradient buffers: where each parameter's gradient and each segment lives.

A model's gradients are packed back to back into one contiguous 1-D buffer so a single kernel
launch can walk all of them. A :class:`GradLayout` records the packing: the parameter slots
(offset and shape, for views) and the *segments* ("modules" in the paper) over which projection
methods compute their dot products. Segment starts are padded to ``alignment`` elements so every
segment begins on an aligned address; padding is zero and no combine ever writes it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Granularity = Literal["parameter", "module", "global"]

DEFAULT_ALIGNMENT = 64
"""Elements. 64 puts every segment on a 128-byte (bf16) or 256-byte (fp32) boundary: whole cache
lines and full-width vector loads for the first tile of every segment."""

_GRANULARITIES = ("parameter", "module", "global")


@dataclass(frozen=True)
class ParamSlot:
    """One parameter's gradient inside the flat buffer."""

    offset: int
    shape: tuple[int, ...]
    name: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Segment:
    """A contiguous run of the flat buffer that projection methods treat as one vector."""

    start: int
    numel: int
    name: str | None = None

    @property
    def end(self) -> int:
        return self.start + self.numel


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_alignment(alignment: object) -> int:
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise ValueError(
            "Parameter `alignment` should be a positive int (elements). "
            f"Found `alignment = {alignment!r}`."
        )
    return alignment


class GradLayout:
    """The ordered segments (and parameter slots) of a flat gradient buffer.

    Build one with :meth:`from_params`, :meth:`from_module` or :meth:`from_sizes`; then
    :meth:`new_buffer` makes zero-filled flat buffers for it and :meth:`views` hands out
    per-parameter views. Layouts are immutable and hashable; device-side tables derived from them
    are cached on the layout, so reuse one layout across steps.

    Example:
        >>> import torch, sago_kernels as sk
        >>> layout = sk.GradLayout.from_sizes([3, 5])
        >>> layout.num_segments, layout.numel
        (2, 128)
        >>> [tuple(v.shape) for v in layout.views(layout.new_buffer())]
        [(3,), (5,)]
    """

    def __init__(
        self,
        starts: Sequence[int],
        numels: Sequence[int],
        numel: int,
        *,
        alignment: int = 1,
        names: Sequence[str | None] | None = None,
        params: Sequence[ParamSlot] | None = None,
    ) -> None:
        """Describe an existing packing. Most users want :meth:`from_params` instead.

        ``starts``/``numels`` give each segment (element offsets, ascending, non-overlapping);
        ``numel`` is the length of buffers this layout describes; every start must be a multiple
        of ``alignment``. Elements that belong to no segment are never read or written.
        """
        alignment = _check_alignment(alignment)
        starts = [int(s) for s in starts]
        numels = [int(n) for n in numels]
        if len(starts) != len(numels):
            raise ValueError(
                f"`starts` and `numels` should have one entry per segment. Found "
                f"`len(starts) = {len(starts)}`, `len(numels) = {len(numels)}`."
            )
        if not starts:
            raise ValueError("A layout needs at least one segment (it may have 0 elements).")
        if names is not None and len(names) != len(starts):
            raise ValueError(f"`names` should have {len(starts)} entries. Found {len(names)}.")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise ValueError(f"`numel` should be a non-negative int. Found `numel = {numel!r}`.")
        previous_end = 0
        for j, (start, n) in enumerate(zip(starts, numels)):
            if n < 0 or start < 0:
                raise ValueError(
                    f"Segment {j} should have start >= 0 and numel >= 0. "
                    f"Found start={start}, numel={n}."
                )
            if start < previous_end:
                raise ValueError(
                    f"Segments should be ascending and non-overlapping. Segment {j} starts at "
                    f"{start}, before the previous segment ends at {previous_end}."
                )
            if start % alignment:
                raise ValueError(
                    f"Segment {j} starts at {start}, which is not a multiple of "
                    f"`alignment = {alignment}`. Pad the start or pass a smaller alignment."
                )
            previous_end = start + n
        if previous_end > numel:
            raise ValueError(
                f"The last segment ends at element {previous_end}, past `numel = {numel}`."
            )
        self._segments = tuple(
            Segment(s, n, None if names is None else names[j])
            for j, (s, n) in enumerate(zip(starts, numels))
        )
        self._numel = numel
        self._alignment = alignment
        if params is None:
            params = [ParamSlot(s.start, (s.numel,), s.name) for s in self._segments]
        for p in params:
            if p.offset < 0 or p.offset + p.numel > numel:
                raise ValueError(
                    f"Parameter slot {p} does not fit in a buffer of {numel} elements."
                )
        self._params = tuple(params)
        self._key = (tuple(starts), tuple(numels), numel, alignment)
        # Device tables and launch plans derived from this layout (see sago_kernels.kernels).
        self._cache: dict[object, object] = {}
        GradLayout._registry[id(self)] = self

    _registry: weakref.WeakValueDictionary[int, GradLayout] = weakref.WeakValueDictionary()

    @property
    def key(self) -> int:
        """This layout's key in the registry of live layouts (what the custom ops take)."""
        return id(self)

    def numel_table(self, device: torch.device | str) -> torch.Tensor:
        """The segment lengths as an int64 tensor on ``device`` (for the statistics), cached:
        one host-to-device copy per layout and device."""
        key = ("numel-table", str(device))
        table = self._cache.get(key)
        if table is None:
            table = self._cache[key] = torch.tensor(self.numels, dtype=torch.int64, device=device)
        return table

    @classmethod
    def from_key(cls, key: int) -> GradLayout:
        """The live layout with ``key`` (see :attr:`key`)."""
        layout = cls._registry.get(key)
        if layout is None:
            raise RuntimeError(
                "sago_kernels: the layout was garbage-collected; keep a reference to it for as "
                "long as the compiled function that uses it."
            )
        return layout

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_sizes(
        cls,
        sizes: Iterable[int],
        *,
        alignment: int = DEFAULT_ALIGNMENT,
        names: Sequence[str | None] | None = None,
    ) -> GradLayout:
        """One segment per size, each start padded to ``alignment`` elements.

        Example:
            >>> GradLayout.from_sizes([10, 0, 3], alignment=16).starts
            (0, 16, 16)
        """
        alignment = _check_alignment(alignment)
        sizes = [int(n) for n in sizes]
        starts, cursor = [], 0
        for n in sizes:
            starts.append(cursor)
            cursor = _round_up(cursor + n, alignment)
        return cls(starts, sizes, cursor, alignment=alignment, names=names)

    @classmethod
    def single(cls, numel: int) -> GradLayout:
        """One segment spanning a whole buffer of ``numel`` elements (no padding)."""
        return cls([0], [numel], numel)

    @classmethod
    def from_params(
        cls,
        params: Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        *,
        granularity: Granularity = "parameter",
        alignment: int = DEFAULT_ALIGNMENT,
    ) -> GradLayout:
        """Layout for a list of parameters (or ``(name, parameter)`` pairs).

        ``granularity``: ``"parameter"`` (one segment per tensor, as the paper's public code),
        ``"module"`` (one segment per owning module: needs names, as ``named_parameters()``
        gives, and groups by the name's prefix), or ``"global"`` (one segment for everything).
        A tensor listed twice (tied weights) gets one slot.
        """
        if granularity not in _GRANULARITIES:
            raise ValueError(
                f"Parameter `granularity` should be one of {_GRANULARITIES}. "
                f"Found `granularity = {granularity!r}`."
            )
        alignment = _check_alignment(alignment)
        named: list[tuple[str | None, torch.Tensor]] = []
        seen: set[int] = set()
        for item in params:
            name, tensor = item if isinstance(item, tuple) else (None, item)
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    "`params` should yield tensors or (name, tensor) pairs. "
                    f"Found {type(tensor).__name__}."
                )
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            named.append((name, tensor))
        if not named:
            raise ValueError("`params` is empty: there is nothing to lay out.")

        if granularity == "parameter":
            groups = [[(name, t)] for name, t in named]
            group_names = [name for name, _ in named]
        elif granularity == "global":
            groups, group_names = [named], [None]
        else:
            if any(name is None for name, _ in named):
                raise ValueError(
                    "granularity='module' needs parameter names: pass "
                    "`model.named_parameters()` or use `GradLayout.from_module(model)`."
                )
            by_module: dict[str, list[tuple[str | None, torch.Tensor]]] = {}
            for name, t in named:
                by_module.setdefault(name.rpartition(".")[0], []).append((name, t))
            groups, group_names = list(by_module.values()), list(by_module.keys())

        starts, numels, slots, cursor = [], [], [], 0
        for group in groups:
            starts.append(cursor)
            for name, t in group:
                slots.append(ParamSlot(cursor, tuple(t.shape), name))
                cursor += t.numel()
            numels.append(cursor - starts[-1])
            cursor = _round_up(cursor, alignment)
        return cls(starts, numels, cursor, alignment=alignment, names=group_names, params=slots)

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        *,
        granularity: Granularity = "parameter",
        alignment: int = DEFAULT_ALIGNMENT,
        trainable_only: bool = True,
    ) -> GradLayout:
        """Layout over a module's (trainable) named parameters, in ``named_parameters()`` order."""
        params = [
            (name, p)
            for name, p in module.named_parameters()
            if p.requires_grad or not trainable_only
        ]
        return cls.from_params(params, granularity=granularity, alignment=alignment)

    # ----------------------------------------------------------------------------- properties
    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._segments

    @property
    def params(self) -> tuple[ParamSlot, ...]:
        return self._params

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    @property
    def numel(self) -> int:
        """Length of the flat buffers this layout describes (padding included)."""
        return self._numel

    @property
    def alignment(self) -> int:
        return self._alignment

    @property
    def starts(self) -> tuple[int, ...]:
        return self._key[0]

    @property
    def numels(self) -> tuple[int, ...]:
        return self._key[1]

    @property
    def segment_numel(self) -> int:
        """Elements that belong to some segment (padding excluded)."""
        return sum(self._key[1])

    @property
    def start_alignment(self) -> int:
        """Largest power of two (capped at 64) that divides every segment start."""
        g = 0
        for s in self.starts:
            g = math.gcd(g, s)
        g = g or 64
        return min(64, g & -g)

    # ----------------------------------------------------------------------------- buffers
    def new_buffer(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A zero-filled flat buffer for this layout (padding included)."""
        return torch.zeros(self._numel, dtype=dtype, device=device)

    def _check_buffer(self, buffer: torch.Tensor, what: str = "buffer") -> None:
        if not isinstance(buffer, torch.Tensor) or buffer.dim() != 1 or not buffer.is_contiguous():
            shape = (
                tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else type(buffer).__name__
            )
            raise ValueError(
                f"Parameter `{what}` should be a contiguous 1-D tensor "
                "(see `GradLayout.new_buffer`). "
                f"Found `{what}.shape = {shape}`."
            )
        if buffer.numel() != self._numel:
            raise ValueError(
                f"Parameter `{what}` should have the layout's {self._numel} elements. "
                f"Found `{what}.numel() = {buffer.numel()}`."
            )

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views into ``buffer``, shaped like the parameters (no copies)."""
        self._check_buffer(buffer)
        return [buffer[p.offset : p.offset + p.numel].view(p.shape) for p in self._params]

    def segment_views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """1-D views of each segment of ``buffer``."""
        self._check_buffer(buffer)
        return [buffer[s.start : s.end] for s in self._segments]

    # ----------------------------------------------------------------------------- identity
    def __eq__(self, other: object) -> bool:
        return isinstance(other, GradLayout) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return (
            f"GradLayout(num_segments={self.num_segments}, numel={self._numel}, "
            f"segment_numel={self.segment_numel}, alignment={self._alignment})"
        )
