"""The registry of combine methods: one entry per method, everything a backend needs to know.

Backends never branch on method names; they read a :class:`Method`'s fields: the reference
function, its scope, and the kernel family and code that implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import reference
from .reference import MethodFn

# Kernel codes, shared by the Triton kernels (``tl.constexpr`` flags) and any native backend.
GATE_SUM = 0
GATE_SAGO = 1
GATE_SAGO_PREFER_RETAIN = 2
PROJECTION_PCGRAD = 0
PROJECTION_BLUR = 1


@dataclass(frozen=True)
class Method:
    """A way to combine g_r and g_f into g_final.

    ``scope``: ``"element"`` (decided per element; one pass), ``"segment"`` (per-segment dot
    products, then one pass), ``"global"`` (dot products over all segments at once).
    ``code``: the gate code (element methods) or projection code (the others) of the kernels.
    """

    name: str
    formula: str
    scope: Literal["element", "segment", "global"]
    code: int
    reference: MethodFn

    @property
    def is_projection(self) -> bool:
        return self.scope != "element"

    def __repr__(self) -> str:
        return f"Method({self.name!r}: {self.formula})"


_ALL = (
    Method("sum", "γ·f + α·r", "element", GATE_SUM, reference.sum_),
    Method("sago", "conflict ? α·r : γ·f", "element", GATE_SAGO, reference.sago),
    Method(
        "sago_prefer_retain",
        "conflict ? α·r : γ·f + α·r",
        "element",
        GATE_SAGO_PREFER_RETAIN,
        reference.sago_prefer_retain,
    ),
    Method(
        "pcgrad",
        "per segment: γ·(f − c·r) + α·r, c = min(f·r, 0)/(r·r + eps)",
        "segment",
        PROJECTION_PCGRAD,
        reference.pcgrad,
    ),
    Method(
        "pcgrad_global",
        "pcgrad with one segment spanning all segments",
        "global",
        PROJECTION_PCGRAD,
        reference.pcgrad,
    ),
    Method(
        "blur",
        "global: γ·f + α·(r − c·f), c = r·f/(f·f + eps)",
        "global",
        PROJECTION_BLUR,
        reference.blur,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _ALL}


def get_method(name: str) -> Method:
    """The registered method called ``name``; a clear error for anything else."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(
            f"Parameter `method` should be one of {sorted(METHODS)}. Found `method = {name!r}`."
        )
    return METHODS[name]


def methods() -> list[str]:
    """Names of all combine methods."""
    return list(METHODS)
