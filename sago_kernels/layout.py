"""Flat gradient buffers: where each parameter's gradient and each segment lives.

A model's gradients are packed back to back into one contiguous 1-D buffer so a single kernel
launch can walk all of them. A :class:`GradLayout` records the packing: the parameter slots
(offset and shape, for views) and the *segments* ("modules" in the paper) over which projection
methods compute their dot products. Segment starts are padded to ``alignment`` elements so every
segment begins on an aligned address; padding is zero and no combine ever writes it.
"""

from __future__ import annotations

import bisect
import math
import operator
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


_MAX_ELEMENTS = 2**63 - 1
"""Offsets and lengths travel to the kernels as int64."""


def _as_count(name: str, value: object, *, minimum: int = 0, unit: str = "elements") -> int:
    """``value`` as a Python int >= ``minimum``, never rounded: ints and integer scalars (numpy,
    0-d integer tensors) pass; floats, bools and strings are refused."""
    kind = f"an int >= {minimum}"
    if isinstance(value, torch.Tensor):
        integral = value.dim() == 0 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
        )
    else:
        integral = not isinstance(value, bool)
    try:
        count = operator.index(value) if integral else None
    except TypeError:
        count = None
    if count is None:
        real = isinstance(value, float) and math.isfinite(value)
        hint = " Round it yourself if that is what you mean." if real else ""
        raise TypeError(
            f"Parameter `{name}` should be {kind} ({unit}). "
            f"Found `{name} = {value!r}` of type {type(value).__name__}.{hint}"
        )
    if count < minimum:
        raise ValueError(f"Parameter `{name}` should be {kind} ({unit}). Found `{name} = {count}`.")
    if count > _MAX_ELEMENTS:
        raise ValueError(
            f"Parameter `{name}` should fit in int64 (offsets are 64-bit). "
            f"Found `{name} = {count}`."
        )
    return count


def _as_counts(name: str, values: object, what: str) -> list[int]:
    """An iterable of counts (``what`` says what one is), each checked by :func:`_as_count`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(
            f"Parameter `{name}` should be an iterable of non-negative ints ({what}). "
            f"Found `{name} = {values!r}` of type {type(values).__name__}."
        )
    if isinstance(values, torch.Tensor) and values.dim() != 1:
        raise TypeError(
            f"Parameter `{name}` should be a 1-D sequence of non-negative ints ({what}). "
            f"Found `{name}.shape = {tuple(values.shape)}`."
        )
    return [_as_count(f"{name}[{j}]", v) for j, v in enumerate(values)]


def _check_name(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(
            f"Parameter `{name}` should be a str or None. "
            f"Found `{name} = {value!r}` of type {type(value).__name__}."
        )


def _check_names(names: object, count: int) -> list[str | None] | None:
    """``None``, or one name (str or None) per segment."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TypeError(
            "Parameter `names` should be a sequence of str or None, one per segment. "
            f"Found `names = {names!r}` of type {type(names).__name__}."
        )
    names = list(names)
    if len(names) != count:
        raise ValueError(
            f"Parameter `names` should have one entry per segment ({count}). "
            f"Found `len(names) = {len(names)}`."
        )
    for j, n in enumerate(names):
        _check_name(f"names[{j}]", n)
    return names


@dataclass(frozen=True)
class ParamSlot:
    """One parameter's gradient inside the flat buffer."""

    offset: int
    shape: tuple[int, ...]
    name: str | None = None

    def __post_init__(self) -> None:
        # Checked here so a slot can never describe a negative or fractional extent.
        object.__setattr__(self, "offset", _as_count("ParamSlot.offset", self.offset))
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, Iterable):
            raise TypeError(
                "Parameter `ParamSlot.shape` should be a tuple of non-negative ints (e.g. "
                f"`tuple(param.shape)`; `(n,)` for a vector). Found `ParamSlot.shape = "
                f"{self.shape!r}` of type {type(self.shape).__name__}."
            )
        shape = tuple(
            _as_count(f"ParamSlot.shape[{d}]", n) for d, n in enumerate(self.shape)
        )
        object.__setattr__(self, "shape", shape)
        _check_name("ParamSlot.name", self.name)
        if self.offset + self.numel > _MAX_ELEMENTS:
            raise ValueError(
                f"Parameter slot {self} should end before element 2**63 (offsets are int64)."
            )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Segment:
    """A contiguous run of the flat buffer that projection methods treat as one vector."""

    start: int
    numel: int
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _as_count("Segment.start", self.start))
        object.__setattr__(self, "numel", _as_count("Segment.numel", self.numel))
        _check_name("Segment.name", self.name)

    @property
    def end(self) -> int:
        return self.start + self.numel


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_alignment(alignment: object) -> int:
    return _as_count("alignment", alignment, minimum=1, unit="elements; 1 for no padding")


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
        starts = _as_counts("starts", starts, "one element offset per segment")
        numels = _as_counts("numels", numels, "one length per segment")
        if len(starts) != len(numels):
            raise ValueError(
                "Parameters `starts` and `numels` should have one entry per segment each. Found "
                f"`len(starts) = {len(starts)}`, `len(numels) = {len(numels)}`."
            )
        if not starts:
            raise ValueError(
                "Parameters `starts` and `numels` should describe at least one segment (it may "
                "have 0 elements). Found none; use `GradLayout.single(0)` for an empty buffer."
            )
        names = _check_names(names, len(starts))
        numel = _as_count("numel", numel)
        previous_end = 0
        for j, (start, n) in enumerate(zip(starts, numels)):
            if start < previous_end:
                raise ValueError(
                    f"Segments should be ascending and non-overlapping. Found `starts[{j}] = "
                    f"{start}`, before the previous segment ends at {previous_end}; sort the "
                    "segments by start and make each start at or after the previous end."
                )
            if start % alignment:
                raise ValueError(
                    f"Every start should be a multiple of `alignment = {alignment}`. Found "
                    f"`starts[{j}] = {start}`. Pad the start or pass a smaller alignment."
                )
            previous_end = start + n
        if previous_end > numel:
            raise ValueError(
                f"Parameter `numel` should cover every segment. Found `numel = {numel}`, but the "
                f"last segment ends at element {previous_end}, past it."
            )
        self._segments = tuple(
            Segment(s, n, None if names is None else names[j])
            for j, (s, n) in enumerate(zip(starts, numels))
        )
        self._numel = numel
        self._alignment = alignment
        if params is None:
            params = [ParamSlot(s.start, (s.numel,), s.name) for s in self._segments]
        else:
            params = self._check_params(params)
        self._params = tuple(params)
        self._key = (tuple(starts), tuple(numels), numel, alignment)
        # Device tables and launch plans derived from this layout (see sago_kernels.kernels).
        self._cache: dict[object, object] = {}
        GradLayout._registry[id(self)] = self

    def _check_params(self, params: object) -> list[ParamSlot]:
        """Slots that lie inside the segments and do not share elements: a slot in padding would
        never be combined, and two slots on one element would add two gradients together."""
        if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(
                "Parameter `params` should be a sequence of ParamSlot. "
                f"Found `params` of type {type(params).__name__}."
            )
        params = list(params)
        for k, p in enumerate(params):
            if not isinstance(p, ParamSlot):
                raise TypeError(
                    f"Parameter `params` should hold ParamSlot objects. "
                    f"Found `params[{k}]` of type {type(p).__name__}."
                )
        starts = [s.start for s in self._segments]
        previous = None
        for k in sorted(range(len(params)), key=lambda k: params[k].offset):
            p = params[k]
            if p.offset + p.numel > self._numel:
                raise ValueError(
                    f"Parameter `params[{k}]` should fit in the buffer of {self._numel} "
                    f"elements. Found `params[{k}] = {p}`, which ends at "
                    f"{p.offset + p.numel}."
                )
            if p.numel == 0:
                continue
            # every element of the slot belongs to a segment: walk the segments it crosses
            cursor, end = p.offset, p.offset + p.numel
            j = bisect.bisect_right(starts, cursor) - 1
            while cursor < end and 0 <= j < len(starts):
                seg = self._segments[j]
                if seg.start > cursor:
                    break
                cursor = max(cursor, seg.end)
                j += 1
            if cursor < end:
                raise ValueError(
                    f"Parameter `params[{k}]` should lie inside the segments. Found "
                    f"`params[{k}] = {p}`, whose element {cursor} is in no segment (padding is "
                    "never combined); widen the segments or move the slot."
                )
            if previous is not None and p.offset < previous[1].offset + previous[1].numel:
                raise ValueError(
                    f"Parameter slots should not share elements. Found `params[{previous[0]}] "
                    f"= {previous[1]}` and `params[{k}] = {p}` overlapping; give each tensor "
                    "its own slot (list a tied weight once)."
                )
            previous = (k, p)
        return params

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
        sizes = _as_counts("sizes", sizes, "one segment length each")
        if not sizes:
            raise ValueError(
                "Parameter `sizes` should list at least one segment (a size may be 0). "
                "Found `sizes = []`."
            )
        starts, cursor = [], 0
        for n in sizes:
            starts.append(cursor)
            cursor = _round_up(cursor + n, alignment)
        if cursor > _MAX_ELEMENTS:
            raise ValueError(
                "Parameter `sizes` should add up (with padding) to fewer than 2**63 elements "
                f"(offsets are int64). Found {cursor} elements."
            )
        return cls(starts, sizes, cursor, alignment=alignment, names=names)

    @classmethod
    def single(cls, numel: int) -> GradLayout:
        """One segment spanning a whole buffer of ``numel`` elements (no padding)."""
        numel = _as_count("numel", numel)
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
        if isinstance(params, (torch.Tensor, str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(
                "Parameter `params` should be an iterable of tensors or (name, tensor) pairs, "
                "e.g. `model.parameters()` or `model.named_parameters()` (wrap a single tensor "
                f"in a list). Found `params` of type {type(params).__name__}."
            )
        named: list[tuple[str | None, torch.Tensor]] = []
        seen: set[int] = set()
        for k, item in enumerate(params):
            if isinstance(item, tuple):
                if len(item) != 2 or not isinstance(item[0], str):
                    raise TypeError(
                        "Parameter `params` should yield tensors or (name, tensor) pairs with a "
                        f"str name. Found `params[{k}]` = a tuple of "
                        f"({', '.join(type(x).__name__ for x in item)})."
                    )
                name, tensor = item
            else:
                name, tensor = None, item
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    "Parameter `params` should yield tensors or (name, tensor) pairs. "
                    f"Found `params[{k}]` of type {type(tensor).__name__}."
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
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                "Parameter `module` should be a torch.nn.Module (use `GradLayout.from_params` "
                f"for a list of tensors). Found `module` of type {type(module).__name__}."
            )
        if not isinstance(trainable_only, bool):
            raise TypeError(
                "Parameter `trainable_only` should be a bool. "
                f"Found `trainable_only = {trainable_only!r}`."
            )
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
