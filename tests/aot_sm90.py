"""Compile every kernel the launcher launches, for sm_90, without a GPU; print one JSON line.

A stub driver reports an H100/H200 target and each launch becomes Triton's warm-up (compile,
do not run). So the launcher's own calls go through compiled-mode argument binding, which,
unlike the interpreter, rejects unknown launch options and specialises on argument values and
alignment, and then through the real Triton → PTX → cubin pipeline. For every distinct
compiled kernel the line says whether its PTX has 16-byte vector loads and stores and what
cuobjdump reports of its registers, stack and local memory.

Run without TRITON_INTERPRET (see test_sm90_compile.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile


class _StubDriver:
    """What ``JITFunction.run`` asks of the active driver before it compiles, nothing more."""

    def __init__(self, target) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _describe(compiled) -> dict:
    import triton

    ptx = compiled.asm["ptx"]
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(compiled.asm["cubin"])
        fh.flush()
        usage = subprocess.run(
            [tool, "--dump-resource-usage", fh.name], capture_output=True, text=True, check=True
        ).stdout
    return {
        "ld_v4": bool(re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx)),
        "st_v4": bool(re.search(r"st\.global(\.\w+)*\.v4\.b32", ptx)),
        "usage": " ".join(re.findall(r"(?:REG|STACK|SHARED|LOCAL):\d+", usage)),
    }


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without the interpreter"
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import KernelInterface

    import sago_kernels as sk
    from sago_kernels.kernels.launch import DEFAULT_CONFIG, LaunchConfig, combine_triton
    from sago_kernels.methods import METHODS

    driver.set_active(_StubDriver(GPUTarget("cuda", 90, 32)))
    variants: dict[str, dict] = {}
    launches = 0

    def warm_up_instead(self, grid):
        def launch(*args, **kwargs):
            nonlocal launches
            launches += 1
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            io = next(a for a in args if isinstance(a, torch.Tensor)).dtype
            constexprs = {k: v for k, v in kwargs.items() if k.isupper()}
            name = f"{self.fn.__name__}|{str(io)[6:]}|{json.dumps(constexprs, sort_keys=True)}"
            name += f"|warps={kwargs.get('num_warps', 4)}"
            if name not in variants:
                variants[name] = {
                    "kernel": self.fn.__name__, "io": str(io)[6:], "constexprs": constexprs,
                    **_describe(kernel),
                }  # fmt: skip
            return kernel

        return launch

    KernelInterface.__getitem__ = warm_up_instead
    layouts = {
        16: sk.GradLayout.from_sizes([100, 3, 70_000, 0, 17], alignment=16),
        1: sk.GradLayout.from_sizes([101, 3, 70_001, 0, 17], alignment=1),
    }
    small = LaunchConfig(block=16, stats_block=16, target_chunks=4, reduce_rows=16, seg_block=16)
    cases = [
        (layout, dtype, method, stats, DEFAULT_CONFIG)
        for layout in layouts.values()
        for dtype in (torch.float32, torch.bfloat16, torch.float16)
        for method in METHODS.values()
        for stats in (False, True)
    ] + [
        (layouts[16], torch.float32, METHODS[name], True, small)
        for name in ("sago", "pcgrad", "blur")
    ]  # fmt: skip
    for layout, dtype, method, stats, config in cases:
        r, f = layout.new_buffer(dtype), layout.new_buffer(dtype)
        state = layout.new_buffer(dtype) if method.needs_state else None
        combine_triton(r, f, r, layout, method, 1.0, 1.0, 1e-8, stats, state=state, config=config)
    # the sharded path: a reduction between launches and the global segment lengths
    layout = layouts[16]
    r, f = layout.new_buffer(torch.bfloat16), layout.new_buffer(torch.bfloat16)
    combine_triton(
        r, f, r, layout, METHODS["pcgrad_global"], 1.0, 1.0, 1e-8, True,
        reduce=lambda t: None, seg_numels=layout.numel_table(torch.device("cpu")),
    )  # fmt: skip
    print(json.dumps({"launches": launches, "variants": list(variants.values())}))


if __name__ == "__main__":
    main()
