"""What ``GradientSynthesizer`` takes as its parameters, checked: a module, or what an optimizer
takes (parameters, or ``(name, parameter)`` pairs), split into the ones with a buffer slot and the
frozen ones it watches for ``requires_grad`` changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

NamedParams = list[tuple[str, torch.Tensor]]

_ARG = "model_or_params"
_FORMS = (
    "a torch.nn.Module, an iterable of parameters (as `model.parameters()` gives) or of "
    "(name, parameter) pairs (as `model.named_parameters()` gives)"
)


def _describe(item: object) -> str:
    if isinstance(item, tuple):
        return f"a tuple of {len(item)} ({', '.join(type(x).__name__ for x in item)})"
    return f"a {type(item).__name__}"


def given_params(model_or_params: object) -> tuple[NamedParams, torch.nn.Module | None]:
    """Every ``(name, tensor)`` given, in order, each checked to be a parameter; and the module
    (if one was given) whose parameters the synthesizer watches for ``requires_grad`` changes.

    Plain parameters are named by position ("0", "1", ...), as an optimizer numbers them.
    """
    if isinstance(model_or_params, torch.nn.Module):
        return list(model_or_params.named_parameters()), model_or_params
    if isinstance(model_or_params, torch.Tensor):
        raise TypeError(
            f"Parameter `{_ARG}` should be {_FORMS}. Found a single tensor; pass `[tensor]`."
        )
    if isinstance(model_or_params, Mapping):
        items = list(model_or_params.items())
    elif isinstance(model_or_params, Iterable) and not isinstance(model_or_params, (str, bytes)):
        items = list(model_or_params)
    else:
        raise TypeError(
            f"Parameter `{_ARG}` should be {_FORMS}. Found {_describe(model_or_params)}."
        )
    named: NamedParams = []
    pairs = None
    for i, item in enumerate(items):
        is_pair = (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], torch.Tensor)
        )
        if not is_pair and not isinstance(item, torch.Tensor):
            hint = (
                " (an optimizer's parameter group? pass `group['params']`)"
                if isinstance(item, Mapping)
                else ""
            )
            raise TypeError(
                f"Parameter `{_ARG}` should be {_FORMS}. Found `{_ARG}[{i}]` = "
                f"{_describe(item)}{hint}."
            )
        if pairs is not None and pairs != is_pair:
            raise TypeError(
                f"Parameter `{_ARG}` should hold only parameters or only (name, parameter) "
                f"pairs. Found both (`{_ARG}[{i}]` differs from the items before it)."
            )
        pairs = is_pair
        name, p = item if is_pair else (str(i), item)
        if not isinstance(p, torch.nn.Parameter) and not p.requires_grad:
            raise TypeError(
                f"Parameter `{_ARG}` should hold parameters (nn.Parameter, or leaf tensors that "
                f"require grad). Found `{name}`: a tensor with requires_grad=False that is not an "
                "nn.Parameter (a buffer or data?); leave it out."
            )
        if not p.is_leaf:
            raise ValueError(
                f"Parameter `{_ARG}` should hold leaf tensors: autograd only fills `.grad` of "
                f"leaves. Found `{name}`, computed from other tensors (grad_fn="
                f"{type(p.grad_fn).__name__}); pass the parameter it was computed from."
            )
        named.append((name, p))
    return named, None


def split_trainable(named: NamedParams) -> tuple[NamedParams, NamedParams]:
    """(trainable, frozen): one slot per distinct trainable parameter (a tied weight listed again
    keeps its first name), in order; the frozen ones are watched for being unfrozen later."""
    trainable: NamedParams = []
    frozen: NamedParams = []
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad:
            frozen.append((name, p))
        elif id(p) not in seen:
            seen.add(id(p))
            trainable.append((name, p))
    if not trainable:
        raise ValueError("The model has no trainable parameters (requires_grad=True).")
    return trainable, frozen


def common_dtype_and_device(trainable: NamedParams) -> tuple[torch.dtype, torch.device]:
    """The one dtype and device of the trainable parameters, as flat buffers need."""
    dtypes = {p.dtype for _, p in trainable}
    devices = {p.device for _, p in trainable}
    if len(dtypes) != 1 or len(devices) != 1:
        raise ValueError(
            "All trainable parameters should share one dtype and device, as flat buffers "
            f"need. Found dtypes {sorted(map(str, dtypes))} on {sorted(map(str, devices))}; "
            "cast the model (e.g. `model.to(torch.bfloat16)`) or freeze the odd ones."
        )
    return next(iter(dtypes)), next(iter(devices))
