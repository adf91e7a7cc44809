"""Unlearning built on the gradient-synthesis layer: the field's losses, paired data, one
Algorithm 1 step, the ``transformers`` Trainer, the synthetic corpora and the demo.

The kernel layer (``sago_kernels``: layouts, methods, the combine and its backends, the
synthesizer) knows nothing of language models; this package is where losses over a causal LM's
logits, batches of forget/retain pairs and experiments live. Its public names are re-exported
from ``sago_kernels`` (``sk.losses``, ``sk.unlearning_step``, ...). ``trainer`` needs
``transformers`` and is imported on its own: ``from sago_kernels.unlearning.trainer import
UnlearningTrainer``.
"""

from . import losses
from .algorithm import StepResult, unlearning_step

__all__ = ["StepResult", "losses", "unlearning_step"]
