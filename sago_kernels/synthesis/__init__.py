"""The parts of ``GradientSynthesizer`` below its core (``sago_kernels/synthesizer.py``).

- ``params.py``: what the synthesizer takes as its parameters, checked;
- ``engine.py``: the interface between the core and the engine that trains the model (where the
  gradients live, how they are reduced, how ``.grad`` reaches the buffers), and one module per
  engine: ``local.py`` (one process, or parameters sharded by hand), ``ddp.py``, ``fsdp2.py``,
  ``deepspeed.py`` (ZeRO stages 1-3);
- ``one_buffer.py``: one-buffer mode's per-parameter combines inside the retain backward.
"""

from __future__ import annotations

from .ddp import DDPEngine
from .deepspeed import DeepSpeedEngineAdapter
from .engine import Engine
from .fsdp2 import FSDP2Engine
from .local import LocalEngine
from .params import NamedParams

ENGINES: tuple[type[Engine], ...] = (DeepSpeedEngineAdapter, DDPEngine, FSDP2Engine)
"""The engines tried, in order, before the single-process one (:class:`LocalEngine`)."""


def select_engine(
    model_or_params: object,
    trainable: NamedParams,
    *,
    data_parallel_group: object | None,
    process_group: object | None,
) -> Engine:
    """The engine that trains ``model_or_params`` (groups not yet checked: see
    :meth:`Engine.check_groups`)."""
    groups = dict(data_parallel_group=data_parallel_group, process_group=process_group)
    for kind in ENGINES:
        engine = kind.detect(model_or_params, trainable, **groups)
        if engine is not None:
            return engine
    return LocalEngine.detect(model_or_params, trainable, **groups)


__all__ = ["ENGINES", "Engine", "LocalEngine", "select_engine"]
