"""The registry of combine methods: one entry per method, everything a backend needs to know.

Backends never branch on method names; they read a :class:`Method`'s fields: the reference
function, its scope, and the kernel family and code that implement it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from . import reference, weightings
from .gru import EMAParams
from .reference import MethodFn
from .weightings import Weighting

# Kernel codes, shared by the Triton kernels (``tl.constexpr`` flags) and any native backend.
GATE_SUM = 0
GATE_SAGO = 1
GATE_SAGO_PREFER_RETAIN = 2
PROJECTION_PCGRAD = 0
PROJECTION_BLUR = 1
PROJECTION_WEIGHTING = 2  # weights from a Gramian weighting (weightings.py), not a kernel formula
PROJECTION_GRU = 3  # projection off a moving average of g_r held in a state buffer (gru.py)


@dataclass(frozen=True)
class Method:
    """A way to combine g_r and g_f into g_final.

    ``scope``: ``"element"`` (decided per element; one pass), ``"segment"`` (per-segment dot
    products, then one pass), ``"global"`` (dot products over all segments at once).
    ``code``: the gate code (element methods) or projection code (the others) of the kernels.
    ``weighting``: for methods defined by a weighting of the 2×2 Gramian (``weightings.py``),
    the function that turns the segments' Gramians into weights; the backends then compute the
    coefficients in torch instead of with their own formula.
    ``ema``: for GRU methods (``gru.py``), the moving average's parameters; such a method needs
    a state buffer (``combine_(..., state=)``; ``GradientSynthesizer`` holds one).
    """

    name: str
    formula: str
    scope: Literal["element", "segment", "global"]
    code: int
    reference: MethodFn
    weighting: Weighting | None = field(default=None, compare=False)
    ema: EMAParams | None = None

    @property
    def is_projection(self) -> bool:
        return self.scope != "element"

    @property
    def needs_state(self) -> bool:
        """Whether a combine with this method reads and updates a state buffer."""
        return self.ema is not None

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

_GRU_FORMULA = (
    "{where}: m ← β·r + (1 − β)·m (state), c = min(f·m, 0)/(m·m + eps); γ·(f − c·m) + κ·α·r "
    "(β = {beta}, κ = {retain_coef})"
)


def _gru_method(name: str, scope: Literal["segment", "global"], params: EMAParams) -> Method:
    where = "per segment" if scope == "segment" else "global"
    formula = _GRU_FORMULA.format(where=where, beta=params.beta, retain_coef=params.retain_coef)
    return Method(name, formula, scope, PROJECTION_GRU, reference.gru, ema=params)


METHODS["gru"] = _gru_method("gru", "segment", EMAParams())
METHODS["gru_global"] = _gru_method("gru_global", "global", EMAParams())


def weighting_method(
    weighting: Weighting,
    name: str | None = None,
    formula: str = "w_0·γ·f + w_1·α·r, w = weighting(Gramian of (γ·f, α·r))",
    scope: Literal["segment", "global"] = "segment",
) -> Method:
    """A method from any weighting of the segments' 2×2 Gramians (``weightings.py``): the fused
    dots pass, ``weighting`` batched over the segments on the device, the fused write pass.

    ``weighting`` maps ``[S, 2, 2]`` Gramians of the rows (γ·f, α·r) to ``[S, 2]`` weights, on
    the Gramians' device (float64 where the device has it); it should not synchronise with the
    host if the combine is to stay asynchronous. ``scope="global"``: one Gramian over all
    segments, its weights applied everywhere.

    Example:
        >>> import torch, sago_kernels as sk
        >>> mean = sk.weighting_method(lambda g: torch.full(g.shape[:-1], 0.5, dtype=g.dtype))
        >>> r, f = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
        >>> sk.combine_(r, f, method=mean, backend="reference")
        tensor([2., 1.])
    """
    if not callable(weighting):
        raise TypeError(
            "Parameter `weighting` should be a callable mapping [S, 2, 2] Gramians to [S, 2] "
            f"weights. Found `{type(weighting).__name__}`."
        )
    if scope not in ("segment", "global"):
        raise ValueError(
            f"Parameter `scope` should be 'segment' or 'global'. Found `scope = {scope!r}`."
        )
    if name is None:
        name = getattr(weighting, "__name__", type(weighting).__name__)
    fn = functools.partial(weightings.affine_segment, weighting=weighting)
    return Method(name, formula, scope, PROJECTION_WEIGHTING, fn, weighting)


for _name, (_factory, _formula) in weightings.BUILT_IN.items():
    METHODS[_name] = weighting_method(_factory(), _name, f"per segment, w = {_formula}")


def method_with(name: str, **params: object) -> Method:
    """A built-in method with other parameters than its defaults: a Gramian weighting's
    keyword arguments (``weightings.py``), or GRU's ``beta`` and ``retain_coef``.

    Example:
        >>> import sago_kernels as sk
        >>> sk.method_with("cagrad", c=0.2)
        Method('cagrad(c=0.2)': per segment, w = ½ + c·|g₀|·(t, 1 − t)/|g_w|, c = 0.5: conflict-averse)
        >>> sk.method_with("gru_global", beta=0.9, retain_coef=0.0).ema
        EMAParams(beta=0.9, retain_coef=0.0)
    """
    with_params = sorted([*weightings.BUILT_IN, "gru", "gru_global"])
    if name not in with_params:
        raise ValueError(
            f"Parameter `name` should be one of {with_params} (the methods with parameters). "
            f"Found `name = {name!r}`."
        )
    label = ", ".join(f"{k}={v!r}" for k, v in params.items())
    if name in ("gru", "gru_global"):
        try:
            ema = EMAParams(**params)
        except TypeError as error:
            raise TypeError(f"{name} does not take these parameters: {error}") from None
        return _gru_method(f"{name}({label})", METHODS[name].scope, ema)
    factory, formula = weightings.BUILT_IN[name]
    try:
        weighting = factory(**params)
    except TypeError as error:
        raise TypeError(f"{name} does not take these parameters: {error}") from None
    return weighting_method(weighting, f"{name}({label})", f"per segment, w = {formula}")


MethodLike = str | Method | Callable[..., object]


def get_method(method: MethodLike) -> Method:
    """The method ``method`` names (or is); a callable is taken as a Gramian weighting
    (:func:`weighting_method`). A clear error for anything else."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    if callable(method) and not isinstance(method, str):
        return weighting_method(method)
    raise ValueError(
        f"Parameter `method` should be one of {sorted(METHODS)}, a `Method` or a Gramian "
        f"weighting (a callable, see `sk.weighting_method`). Found `method = {method!r}`."
    )


def methods() -> list[str]:
    """Names of all combine methods."""
    return list(METHODS)
