"""The synthesizer's state across steps, as checkpoints carry it: what ``state_dict`` records
about the layout, and every check ``load_state_dict`` makes before it writes anything."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from ..layout import GradLayout

KEYS = ("ema", "ema_params", "weighting", "layout")


def layout_signature(layout: GradLayout) -> dict[str, list]:
    """Each segment's name and length and each parameter slot's name and shape: a state
    belongs to the layout it was made on (a GRU average of ``Linear(8, 4)`` has as many
    elements as one of ``Linear(4, 8)``, but not the same segments)."""
    return {
        "segments": [[s.name, s.numel] for s in layout.segments],
        "params": [[p.name, list(p.shape)] for p in layout.params],
    }


def _check_layout(saved: object, layout: GradLayout) -> None:
    here = layout_signature(layout)
    if not isinstance(saved, Mapping) or set(saved) != set(here):
        raise ValueError(
            'The state\'s "layout" should be what `synth.state_dict()` records (segments and '
            f"parameters). Found {saved!r}."
        )
    describe = {
        "segments": lambda entry: f"`{entry[0]}` of {entry[1]} elements",
        "params": lambda entry: f"`{entry[0]}` of shape {entry[1]}",
    }
    for key, name in (("segments", "segment"), ("params", "parameter")):
        mine, theirs = here[key], [list(entry) for entry in saved[key]]
        if len(theirs) != len(mine):
            raise ValueError(
                f"The state was saved on a layout of {len(theirs)} {key}; this synthesizer's "
                f"has {len(mine)}. Load it into a synthesizer of the same model, parameters and "
                "granularity."
            )
        for j, (a, b) in enumerate(zip(theirs, mine)):
            if a != b:
                raise ValueError(
                    f"The state was saved on another layout: its {name} {j} is "
                    f"{describe[key](a)}, this synthesizer's is {describe[key](b)}. Load it "
                    "into a synthesizer of the same model, parameters and granularity."
                )


def check(
    state: object,
    layout: GradLayout,
    ema_buffer: torch.Tensor | None,
    has_weighting: bool,
    method: str,
    ema_params: object | None = None,
) -> None:
    """Refuse a state that does not fit, before anything is written. ``ema_params``: the
    method's GRU parameters, which the saved average must have been made with (an average
    of β = 0.8 continued at β = 0.9 is neither run)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"Parameter `state` should be a mapping. Found `{type(state).__name__}`.")
    unknown = set(state) - set(KEYS)
    if unknown:
        raise ValueError(f"Unknown keys in the synthesizer's state: {sorted(unknown)}.")
    ema = state.get("ema")
    if (ema is None) != (ema_buffer is None):
        has = "has" if ema is not None else "lacks"
        keeps = "keeps none" if ema is not None else "keeps one"
        raise ValueError(
            f'The state {has} a moving average ("ema"), but method {method} {keeps}: load it '
            "into a synthesizer built with the same method."
        )
    if ema is not None:
        if not isinstance(ema, torch.Tensor) or ema.shape != ema_buffer.shape:
            raise ValueError(
                "The state's moving average should be a tensor of shape "
                f"{tuple(ema_buffer.shape)} (this layout). Found "
                f"{getattr(ema, 'shape', type(ema).__name__)}."
            )
        if not ema.is_floating_point():
            raise TypeError(
                f"The state's moving average should be a floating-point tensor. Found dtype "
                f"{ema.dtype}."
            )
        if not bool(torch.isfinite(ema).all()):
            raise ValueError(
                "The state's moving average should be finite: a run never makes it otherwise "
                "(a segment whose step is not finite keeps its average). Found non-finite "
                "values; the state is corrupt."
            )
        saved = state.get("ema_params")
        want = {"beta": ema_params.beta, "retain_coef": ema_params.retain_coef}
        if not isinstance(saved, Mapping) or set(saved) != set(want):
            raise ValueError(
                'The state\'s moving average should come with its "ema_params" (GRU\'s beta and '
                f"retain_coef, as `synth.state_dict()` records them). Found {saved!r}."
            )
        for name, value in want.items():
            if saved[name] != value:
                raise ValueError(
                    f"The state's moving average was made with {name} = {saved[name]!r}; this "
                    f"synthesizer's method has {name} = {value!r}. Build it with the run's "
                    f"parameters (sk.method_with(..., {name}={saved[name]!r}))."
                )
    weighting = state.get("weighting")
    if (weighting is None) == has_weighting:
        has = "has" if weighting is not None else "lacks"
        keeps = "keeps no weighting state" if weighting is not None else "keeps one"
        raise ValueError(
            f'The state {has} a weighting\'s state ("weighting"), but method {method} {keeps}: '
            "load it into a synthesizer built with the same method."
        )
    if ema is not None or weighting is not None:
        if "layout" not in state:
            raise ValueError(
                'The state lacks its "layout" (each segment\'s name and length), so it cannot be '
                "checked against this synthesizer's: save it with `synth.state_dict()`."
            )
        _check_layout(state["layout"], layout)


def load_weighting(weighting: object, state: object, segments: int) -> None:
    """Hand the weighting its state; one that takes ``segments`` checks it holds one entry per
    segment of the combine (one for a global method) before writing."""
    load = weighting.load_state_dict
    if "segments" in inspect.signature(load).parameters:
        load(state, segments=segments)
    else:
        load(state)
