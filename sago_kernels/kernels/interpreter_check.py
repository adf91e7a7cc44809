"""Can this Triton's interpreter run our kernels? One tiny kernel decides, once per process.

Under ``TRITON_INTERPRET=1`` scalar kernel arguments travel as one-element numpy arrays, and a
loop bound needs them as Python ints. Triton 3.6 and older convert with ``int(array)``, which
numpy 2.4 refuses for arrays with a dimension; our kernels loop to runtime bounds (the segment
search, the tiles of a chunk), so with that pairing every interpreted combine would fail deep
inside Triton. Checking once turns that into a clear reason (and the automatic backend choice
moves on) instead of a traceback from the interpreter. Compiled kernels on a GPU are unaffected.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _loop_to_scalar_bound(out_ptr, n):
    acc = tl.zeros([1], tl.int32)
    for i in range(n):
        acc += i
    tl.store(out_ptr + tl.arange(0, 1), acc)


@functools.cache
def interpreter_problem() -> str | None:
    """Why the interpreter cannot run the kernels here, or None when it can."""
    if type(_loop_to_scalar_bound).__name__ != "InterpretedFunction":
        return (
            "TRITON_INTERPRET=1 was set after `import triton`, so the kernels were compiled for "
            "a GPU; set it before triton is first imported"
        )
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _loop_to_scalar_bound[(1,)](out, 4)
        if int(out[0]) == 6:
            return None
        error = f"a loop to a scalar bound summed to {int(out[0])}, not 6"
    except Exception as exc:  # noqa: BLE001 - any failure means the same: not usable
        error = f"{type(exc).__name__}: {exc}"
    if "0-dimensional" in error:
        import numpy

        return (
            f"Triton {triton.__version__}'s interpreter cannot turn scalar arguments into loop "
            f"bounds with numpy {numpy.__version__} ({error}); numpy >= 2.4 needs Triton >= 3.7: "
            "`pip install 'triton>=3.7'` or `pip install 'numpy<2.4'`"
        )
    return (
        f"Triton's interpreter failed on a one-loop test kernel ({error}; TRITON_INTERPRET=1 "
        "must be set before triton is first imported)"
    )
