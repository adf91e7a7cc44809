"""sago_kernels: fused, in-place, sync-free gradient synthesis for LLM unlearning.

Combine a retain gradient g_r and a forget gradient g_f held in flat buffers into g_final with
one of the paper's methods (SUM/GradDiff, SAGO, PCGrad, BLUR), in one fused Triton call on GPU.

    >>> import torch, sago_kernels as sk
    >>> layout = sk.GradLayout.from_sizes([4, 3])
    >>> retain, forget = layout.new_buffer(), layout.new_buffer()
    >>> out = sk.combine_(retain, forget, layout=layout, method="pcgrad")
"""

from . import reference, unlearning
from .combine import combine_
from .dispatch import backends
from .grads import combine_grads_
from .layout import DEFAULT_ALIGNMENT, GradLayout, ParamSlot, Segment
from .methods import METHODS, Method, method_with, methods, weighting_method
from .stats import FIELDS, CombineStats, Geometry
from .synthesizer import GradientSynthesizer
from .unlearning import StepResult, losses, unlearning_step
from .weightings import GradVac, torchjd_weighting

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ALIGNMENT",
    "FIELDS",
    "METHODS",
    "CombineStats",
    "Geometry",
    "GradVac",
    "GradLayout",
    "GradientSynthesizer",
    "Method",
    "ParamSlot",
    "Segment",
    "backends",
    "combine_",
    "combine_grads_",
    "StepResult",
    "losses",
    "method_with",
    "methods",
    "reference",
    "unlearning_step",
    "torchjd_weighting",
    "unlearning",
    "weighting_method",
]
