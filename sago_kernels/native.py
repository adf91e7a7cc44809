"""The native CPU backend: ``csrc/`` (C++17, OpenMP) built by CMake, loaded with ctypes.

Why ctypes and a plain C ABI rather than a torch extension: the library needs no torch headers,
so it builds in seconds with any C++17 compiler, is independent of the installed torch's ABI,
and a missing compiler costs nothing but the fallback. Tensors travel as data pointers; every
check (dtype, lengths, layout, aliasing) has been made in Python before the call.

One call is one fused pass for element-wise methods and two for projection methods (dots, then
the write), over a fixed list of chunks. The chunking depends only on the layout, never on the
thread count, and per-chunk sums are added in chunk order: results are bitwise identical for
any ``torch.get_num_threads()``. Temporaries are O(chunks + segments); nothing is allocated in
proportion to the buffers.

Where the library is looked for: ``$SAGO_NATIVE_LIB`` if set (``0`` disables the backend), else
the package folder (``pip install`` builds it there; see ``CMakeLists.txt``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import gru, weightings
from ._scoped import ScopedSetting
from .layout import GradLayout
from .methods import Method
from .sharding import Reduce
from .stats import SEGMENT_SUMS, geometry_table

ABI = 6  # SAGO_NATIVE_ABI in csrc/sago_native.h
NUM_SUMS = 6
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_SCOPES = {"element": 0, "segment": 1, "global": 2}
_STATUS = {
    1: "ABI mismatch", 2: "unsupported dtype", 3: "unknown method code", 4: "out of memory",
    5: "unknown phase",
}  # fmt: skip
PHASE_ALL, PHASE_DOTS, PHASE_WRITE, PHASE_WRITE_COEF, PHASE_DOTS_EMA, PHASE_WRITE_EMA = range(6)


class _CombineArgs(ctypes.Structure):
    """``SagoCombineArgs`` of ``sago_native.h``, field for field."""

    _fields_ = [
        ("abi", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("scope", ctypes.c_int32),
        ("code", ctypes.c_int32),
        ("want_stats", ctypes.c_int32),
        ("num_threads", ctypes.c_int32),
        ("isa", ctypes.c_int32),
        ("retain", ctypes.c_void_p),
        ("forget", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("num_segments", ctypes.c_int64),
        ("seg_chunk", ctypes.c_void_p),
        ("num_chunks", ctypes.c_int64),
        ("chunk_start", ctypes.c_void_p),
        ("chunk_len", ctypes.c_void_p),
        ("chunk_seg", ctypes.c_void_p),
        ("alpha", ctypes.c_float),
        ("gamma", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("seg_sums", ctypes.c_void_p),
        ("seg_conflicts", ctypes.c_void_p),
        ("phase", ctypes.c_int32),
        ("seg_dots", ctypes.c_void_p),
        ("seg_coef", ctypes.c_void_p),
        ("state", ctypes.c_void_p),
        ("beta", ctypes.c_float),
        ("keep", ctypes.c_float),
        ("inv_scale", ctypes.c_void_p),
    ]


# --------------------------------------------------------------------------- loading


def library_names() -> list[str]:
    """File names a build may have: setup.py's extension name, then CMake's default."""
    return [f"_sago_native{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES] + [
        "libsago_native.so",
        "libsago_native.dylib",
        "sago_native.dll",
    ]


def _find_library() -> tuple[Path | None, str]:
    override = os.environ.get("SAGO_NATIVE_LIB")
    if override == "0":
        return None, "disabled by SAGO_NATIVE_LIB=0"
    if override:
        path = Path(override)
        return (path, "") if path.is_file() else (None, f"SAGO_NATIVE_LIB={override} not found")
    package = Path(__file__).resolve().parent
    for name in library_names():
        if (package / name).is_file():
            return package / name, ""
    return None, (
        "the library was not built (no C++ compiler or CMake at install time?); "
        "reinstall with `pip install -e .` or build it with CMake, see the README"
    )


def _load() -> tuple[ctypes.CDLL | None, str]:
    path, why = _find_library()
    if path is None:
        return None, why
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        return None, f"{path} could not be loaded: {error}"
    try:
        lib.sago_native_abi.restype = ctypes.c_int32
        found = lib.sago_native_abi()
    except AttributeError:
        return None, f"{path} is not a sago_kernels native library"
    if found != ABI:
        return None, f"{path} was built from other sources (ABI {found}, need {ABI}); rebuild it"
    lib.sago_native_max_threads.restype = ctypes.c_int32
    lib.sago_native_isa.restype = ctypes.c_int32
    lib.sago_native_isa.argtypes = [ctypes.c_int32]
    lib.sago_native_combine.restype = ctypes.c_int32
    lib.sago_native_combine.argtypes = [ctypes.POINTER(_CombineArgs)]
    for name in ("sago_native_widen", "sago_native_narrow"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int32
        fn.argtypes = [ctypes.c_int32] * 2 + [ctypes.c_void_p] * 2 + [ctypes.c_int64]
    lib.sago_native_fma.restype = ctypes.c_int32
    lib.sago_native_fma.argtypes = [ctypes.c_int32] + [ctypes.c_void_p] * 4 + [ctypes.c_int64]
    return lib, ""


_LIB: ctypes.CDLL | None = None
_WHY_NOT = ""
_LOADED = False


def library() -> ctypes.CDLL | None:
    """The loaded library, or ``None`` (then :func:`unavailable_reason` says why)."""
    global _LIB, _WHY_NOT, _LOADED
    if not _LOADED:
        _LIB, _WHY_NOT = _load()
        _LOADED = True
    return _LIB


def available() -> bool:
    return library() is not None


ISAS = ("baseline", "avx2", "avx512", "avx512_bf16")
"""Instruction sets the kernels are built for (x86-64), each a superset of the one before
(``avx512_bf16``: AVX-512 with the CPU's own float32 → bfloat16 conversion); all give the same
bits."""


def _wanted_isa() -> int:
    """``$SAGO_NATIVE_ISA`` (the highest instruction set to use), or -1 for the best there is."""
    name = os.environ.get("SAGO_NATIVE_ISA", "")
    if not name:
        return -1
    if name not in ISAS:
        raise ValueError(f"SAGO_NATIVE_ISA should be one of {ISAS}. Found {name!r}.")
    return ISAS.index(name)


def isa() -> str:
    """The instruction set the native combine runs with here (``SAGO_NATIVE_ISA`` caps it)."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is not available: {unavailable_reason()}")
    return ISAS[lib.sago_native_isa(_wanted_isa())]


def unavailable_reason() -> str:
    """Why the native backend is not available ('' when it is)."""
    library()
    return _WHY_NOT


# --------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class NativeConfig:
    """How a layout is cut into chunks (the unit of work of one thread).

    A segment is cut into chunks of ``chunk_elems`` elements, ``chunk_elems`` growing with the
    layout so there are about ``target_chunks`` (plus one per small segment), and never below
    ``min_chunk_elems``. Only the layout decides the chunks, so results do not depend on the
    number of threads.
    """

    min_chunk_elems: int = 1 << 15
    target_chunks: int = 1024

    def __post_init__(self) -> None:
        if not 16 <= self.min_chunk_elems <= 1 << 30 or self.min_chunk_elems % 16:
            raise ValueError(
                "NativeConfig.min_chunk_elems should be a multiple of 16 in [16, 2**30]. "
                f"Found {self.min_chunk_elems}."
            )
        if self.target_chunks < 1:
            raise ValueError(
                f"NativeConfig.target_chunks should be >= 1. Found {self.target_chunks}."
            )

    def chunk_elems(self, segment_numel: int) -> int:
        per_chunk = -(-segment_numel // self.target_chunks)
        # at most 2**30 elements: the library counts conflicts per lane in 32 bits
        return min(max(self.min_chunk_elems, -(-per_chunk // 16) * 16), 1 << 30)


DEFAULT_CONFIG = NativeConfig()
_CONFIG = ScopedSetting(DEFAULT_CONFIG)


def native_config(config: NativeConfig) -> contextlib.AbstractContextManager[NativeConfig]:
    """Run the native combines inside the ``with`` block with ``config`` (tests, tuning)."""
    return _CONFIG.use(config)


@dataclass(frozen=True)
class _Plan:
    seg_chunk: torch.Tensor  # [S + 1] int64
    chunk_start: torch.Tensor  # [C] int64
    chunk_len: torch.Tensor  # [C] int64
    chunk_seg: torch.Tensor  # [C] int64


def _plan(layout: GradLayout, chunk_elems: int) -> _Plan:
    """The layout's chunk tables (O(chunks + segments) integers), cached on the layout."""
    key = ("native-plan", chunk_elems)
    plan = layout._cache.get(key)
    if plan is None:
        seg_chunk, starts, lengths, owners = [0], [], [], []
        for j, s in enumerate(layout.segments):
            for first in range(0, s.numel, chunk_elems):
                starts.append(s.start + first)
                lengths.append(min(chunk_elems, s.numel - first))
                owners.append(j)
            seg_chunk.append(len(starts))

        def table(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)

        plan = _Plan(table(seg_chunk), table(starts), table(lengths), table(owners))
        layout._cache[key] = plan
    return plan


# --------------------------------------------------------------------------- the backend


def combine_native(
    retain: torch.Tensor,
    forget: torch.Tensor,
    target: torch.Tensor,
    layout: GradLayout,
    method: Method,
    alpha: float,
    gamma: float,
    eps: float,
    want_stats: bool,
    reduce: Reduce | None = None,
    seg_numels: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    *,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Write g_final into ``target`` with the native library; return the geometry table if asked.

    Inputs are assumed validated (``_validation.py``): contiguous CPU buffers of one dtype and
    length, a layout that fits them. Uses ``torch.get_num_threads()`` threads. ``reduce`` and
    ``seg_numels``: sharded buffers (``sharding.py``); projection methods then run the dots pass,
    reduce the dots over the ranks, and run the write pass with them. ``state``: GRU's moving
    average (``gru.py``), read by both passes and updated by the write pass.

    ``inv_scale`` (a 1-element float32 CPU tensor, a gradient scaler's 1/scale): the unscale
    fused into the passes, every f and r element multiplied by it in float32 as it is read, so
    with a power of two the result is bitwise that of the pre-divided buffers. ``found_inf``
    (the same kind of tensor): GRU sets it when a segment's r·r or f·f is not finite and then
    keeps every segment's state (``gru.coefficients``, ``weightings.coefficients``: GradVac's
    φ̂); for the other methods the caller derives it from the statistics.
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is not available: {unavailable_reason()}")
    plan = _plan(layout, _CONFIG.value.chunk_elems(layout.segment_numel))
    s = layout.num_segments
    sums = torch.zeros((s, NUM_SUMS), dtype=torch.float64) if want_stats else None
    conflicts = torch.zeros(s, dtype=torch.int64) if want_stats else None
    args = _CombineArgs(
        abi=ABI,
        dtype=_DTYPES[retain.dtype],
        scope=_SCOPES[method.scope],
        code=method.code,
        want_stats=int(bool(want_stats)),
        num_threads=torch.get_num_threads(),
        isa=_wanted_isa(),
        retain=retain.data_ptr(),
        forget=forget.data_ptr(),
        out=target.data_ptr(),
        num_segments=s,
        seg_chunk=plan.seg_chunk.data_ptr(),
        num_chunks=plan.chunk_start.numel(),
        chunk_start=plan.chunk_start.data_ptr(),
        chunk_len=plan.chunk_len.data_ptr(),
        chunk_seg=plan.chunk_seg.data_ptr(),
        alpha=alpha,
        gamma=gamma,
        eps=eps,
        seg_sums=sums.data_ptr() if sums is not None else None,
        seg_conflicts=conflicts.data_ptr() if conflicts is not None else None,
        phase=PHASE_ALL,
        inv_scale=inv_scale.data_ptr() if inv_scale is not None else None,
    )
    if method.ema is not None:
        # GRU: the dots of f, r and m' (m' recomputed, not stored), the coefficients in torch,
        # then the write pass of g_final and m'
        dots = torch.zeros((s, gru.NUM_DOTS), dtype=torch.float64)
        args.state, args.beta, args.keep = state.data_ptr(), method.ema.beta, method.ema.keep
        args.seg_dots, args.phase = dots.data_ptr(), PHASE_DOTS_EMA
        _check(lib.sago_native_combine(ctypes.byref(args)))
        local_dots = dots[:, :3].clone() if want_stats else None
        if reduce is not None:
            reduce(dots)
        coef = gru.coefficients(
            dots.to(torch.float32), alpha, gamma, eps, method.ema.retain_coef,
            method.scope == "global", found_inf=found_inf,
        )  # fmt: skip
        args.seg_coef, args.phase = coef.data_ptr(), PHASE_WRITE_EMA
        _check(lib.sago_native_combine(ctypes.byref(args)))
        if want_stats:
            sums[:, :3] = local_dots  # the write pass sums only o·o, o·r, o·f
    elif method.weighting is not None or (reduce is not None and method.is_projection):
        # the dots pass, then (over the ranks' sum of the dots) the write pass: with the
        # library's own weights, or with a Gramian weighting's, computed here in torch
        dots = torch.zeros((s, 3), dtype=torch.float64)
        args.seg_dots = dots.data_ptr()
        args.phase = PHASE_DOTS
        _check(lib.sago_native_combine(ctypes.byref(args)))
        local_dots = dots.clone() if want_stats else None
        if reduce is not None:
            reduce(dots)
        args.phase = PHASE_WRITE
        if method.weighting is not None:
            # rounded to float32 (±inf past its range) as the other backends' dots
            coef = weightings.coefficients(
                dots.to(torch.float32), method.weighting, alpha, gamma, method.scope == "global",
                found_inf,
            ).contiguous()
            args.seg_coef, args.phase = coef.data_ptr(), PHASE_WRITE_COEF
        _check(lib.sago_native_combine(ctypes.byref(args)))
        if want_stats:
            sums[:, :3] = local_dots  # the write pass sums only o·o, o·r, o·f
    else:
        _check(lib.sago_native_combine(ctypes.byref(args)))
    if not want_stats:
        return None
    if reduce is not None:
        reduce(sums)
        reduce(conflicts)
    if want_stats == SEGMENT_SUMS:
        return sums, conflicts
    if seg_numels is None:
        seg_numels = layout.numel_table("cpu")
    return geometry_table(sums, conflicts, seg_numels)


def _check(status: int) -> None:
    if status:
        raise RuntimeError(f"sago_native_combine failed: {_STATUS.get(status, status)}")


def _convert(name: str, src: torch.Tensor, dtype: torch.dtype, out_dtype: torch.dtype):
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is not available: {unavailable_reason()}")
    src = src.contiguous()
    out = torch.empty(src.shape, dtype=out_dtype)
    status = getattr(lib, name)(
        _wanted_isa(), _DTYPES[dtype], src.data_ptr(), out.data_ptr(), src.numel()
    )
    if status:
        raise RuntimeError(f"{name} failed: {_STATUS.get(status, status)}")
    return out


def widen(words: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 values of bfloat16/float16 ``words`` (int16), exactly as the combine reads them."""
    return _convert("sago_native_widen", words.view(torch.int16), dtype, torch.float32)


def fused_multiply_add(x: torch.Tensor, y: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """acc + x·y in float32 rounded once, exactly as the combine's sums add their products."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native backend is not available: {unavailable_reason()}")
    x, y, acc = (t.to(torch.float32).contiguous() for t in (x, y, acc))
    out = torch.empty_like(x)
    lib.sago_native_fma(
        _wanted_isa(), x.data_ptr(), y.data_ptr(), acc.data_ptr(), out.data_ptr(), x.numel()
    )
    return out


def narrow(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` (float32) rounded to ``dtype`` as the combine stores them."""
    words = _convert("sago_native_narrow", values.to(torch.float32), dtype, torch.int16)
    return words.view(dtype)
