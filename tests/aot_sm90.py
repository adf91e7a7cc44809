"""Compile the kernels for sm_90 without a GPU; print one JSON line of what the code looks like.

Run without TRITON_INTERPRET (see test_sm90_compile.py). Variants are listed here so the test
can parametrise over them at collection.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import tempfile

from sago_kernels.methods import PROJECTION_BLUR, PROJECTION_PCGRAD

# chunk-pass modes (mirrors sago_kernels/kernels/_tiles.py; checked in main())
SUM, SAGO, SAGO_PREFER_RETAIN, AFFINE, DOTS = 0, 1, 2, 8, 9

# (buffer pointer type, BF16_BITS, MODE, STATS)
CHUNK_VARIANTS = (
    [("*fp32", False, mode, False) for mode in (SUM, SAGO, SAGO_PREFER_RETAIN, AFFINE)]
    + [
        (io, bf16, mode, False)
        for io, bf16 in (("*i16", True), ("*fp16", False))
        for mode in (SAGO, AFFINE)
    ]
    + [
        (io, bf16, mode, True)
        for io, bf16 in (("*fp32", False), ("*i16", True))
        for mode in (DOTS, SAGO)
    ]
)
# (tile sizes and warps come from the launcher's default LaunchConfig in main())
SMALL_VARIANTS = {
    "segment_reduce": dict(),
    "coefficients_pcgrad": dict(PROJECTION=PROJECTION_PCGRAD, GLOBAL=False),
    "coefficients_pcgrad_global": dict(PROJECTION=PROJECTION_PCGRAD, GLOBAL=True),
    "coefficients_blur": dict(PROJECTION=PROJECTION_BLUR, GLOBAL=True),
    "geometry": dict(),
}

# argument name → Triton type; "io" stands for the buffer element type of the variant
ARG_TYPES = {
    "retain_ptr": "io", "forget_ptr": "io", "out_ptr": "io",
    "seg_start_ptr": "*i64", "seg_numel_ptr": "*i64", "seg_chunk_ptr": "*i64",
    "coef_ptr": "*fp32", "partial_ptr": "*fp32", "conflict_ptr": "*i64",
    "seg_sum_ptr": "*fp32", "seg_conflict_ptr": "*i64", "table_ptr": "*fp32",
    "num_segments": "i32", "search_steps": "i32", "chunk_elems": "i32",
    "alpha": "fp32", "gamma": "fp32", "eps": "fp32",
}  # fmt: skip


def chunk_variant_id(io: str, bf16: bool, mode: int, stats: bool) -> str:
    return f"{io.strip('*')}{'-bf16' if bf16 else ''}-mode{mode}{'-stats' if stats else ''}"


def _compile(kernel, io: str, constexprs: dict, num_warps: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(kernel.fn).parameters)
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        kind = ARG_TYPES[name]
        signature[name] = io if kind == "io" else kind
        if signature[name].startswith("*") or name == "chunk_elems":
            attrs[(i,)] = [
                ["tt.divisibility", 16]
            ]  # what the launcher's tensors and chunks satisfy
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "enable_fp_fusion": False}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


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
    from sago_kernels.kernels import _tiles
    from sago_kernels.kernels.chunk_pass import _chunk_pass_kernel
    from sago_kernels.kernels.launch import DEFAULT_CONFIG as config
    from sago_kernels.kernels.reductions import (
        _coefficients_kernel,
        _geometry_kernel,
        _segment_reduce_kernel,
    )

    modes = (
        _tiles.MODE_SUM,
        _tiles.MODE_SAGO,
        _tiles.MODE_SAGO_PREFER_RETAIN,
        _tiles.MODE_AFFINE,
        _tiles.MODE_DOTS,
    )
    assert [m.value for m in modes] == [SUM, SAGO, SAGO_PREFER_RETAIN, AFFINE, DOTS]
    result = {}
    for io, bf16, mode, stats in CHUNK_VARIANTS:
        block = min(config.stats_block, config.block) if stats else config.block
        constexprs = dict(MODE=mode, STATS=stats, BF16_BITS=bf16, ALIGN=16, BLOCK=block)
        result[chunk_variant_id(io, bf16, mode, stats)] = _describe(
            _compile(_chunk_pass_kernel, io, constexprs, config.num_warps)
        )
    kernels = {"segment_reduce": _segment_reduce_kernel, "geometry": _geometry_kernel}
    for name, constexprs in SMALL_VARIANTS.items():
        kernel = kernels.get(name, _coefficients_kernel)
        if name == "segment_reduce":  # launched with Triton's default 4 warps
            constexprs, warps = dict(ROWS=config.reduce_rows), 4
        else:  # the one-program kernels
            constexprs, warps = {**constexprs, "SEG_BLOCK": config.seg_block}, config.seg_warps
        result[name] = _describe(_compile(kernel, "*fp32", constexprs, warps))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
