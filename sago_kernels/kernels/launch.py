"""The Triton backend: plan the chunks of a layout and launch the kernels for one combine.

Launches per call (N = elements in segments, s = itemsize, S = segments, C = chunks ≤ S + 16384):

| method kind            | stats=False                      | stats=True                        |
|------------------------|----------------------------------|-----------------------------------|
| element-wise (3 gates) | 1 launch, 3N·s bytes             | 3 launches, 3N·s + O(C + S) bytes |
| projection             | 4 launches, 5N·s + O(C + S) bytes| 6 launches, 5N·s + O(C + S) bytes |

Gramian weightings (``weightings.py``): the projection launches, with the coefficients kernel
replaced by O(S) torch ops on the device (one launch fewer, a few small torch kernels more).
GRU (``gru.py``): the same, with the state m read by both chunk passes and written by the
second: 8N·s bytes (dots pass: f, r, m; write pass: f, r, m in, g_final and m' out).

Projection: chunk pass (dots) → per-segment sums → coefficients → chunk pass (write). With
stats, the write pass also emits sums, reduced by one more per-segment launch and the geometry
kernel. Temporaries are O(C + S) floats; nothing proportional to N is allocated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .. import gru, weightings
from .._scoped import ScopedSetting
from ..layout import GradLayout
from ..methods import Method
from ..sharding import Reduce
from ..stats import SEGMENT_SUMS, nan_where_norms_overflow
from . import _tiles
from .chunk_pass import _chunk_pass_kernel
from .reductions import _coefficients_kernel, _geometry_kernel, _segment_reduce_kernel


@dataclass(frozen=True)
class LaunchConfig:
    """Launch settings. Defaults are a fixed table, not autotuned: autotuning an in-place kernel
    re-runs it on live gradients. ``bench/tune.py`` sweeps them on a GPU; ``target_chunks`` comes
    from its first sweep (H200, 7B Llama layout, bf16 SAGO: 16384 chunks beat 4096 by 0.6-2.4
    points of copy bandwidth with every good tile setting, a shorter last wave). The tile and
    warps are kept: 4096 x 8 warps and 2048 x 4 were the best two swept and within the
    run-to-run spread of each other (``bench/RESULTS.md``).

    ``block``: elements per tile; ``stats_block``: the tile of passes that also sum statistics,
    capped at ``block`` (six float32 accumulators: at 4096 they need ~195 registers a thread on
    sm_90, one program per SM; 2048 halves that); ``num_warps``: warps per chunk-pass program;
    ``target_chunks``: how many chunks the buffer is cut into (plus one per small segment), so
    the partial sums stay O(segments) whatever N; ``max_chunk_elems`` keeps per-chunk counts and
    tile offsets in 32 bits; ``seg_block`` and ``seg_warps``: the tile and warps of the
    one-program coefficient and geometry kernels (the geometry kernel's eight accumulators
    spill at 1024 segments a tile on 4 warps; 8 warps hold them in ~150 registers).
    """

    block: int = 4096
    stats_block: int = 2048
    num_warps: int = 8
    target_chunks: int = 16384
    max_chunk_elems: int = 1 << 24
    reduce_rows: int = 64
    seg_block: int = 1024
    seg_warps: int = 8

    def __post_init__(self) -> None:
        for name in ("block", "stats_block", "reduce_rows", "seg_block"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise ValueError(
                    f"LaunchConfig.{name} should be a power of two >= 16. Found {value}."
                )
        if self.max_chunk_elems < self.block or self.max_chunk_elems > 1 << 30:
            raise ValueError("LaunchConfig.max_chunk_elems should be in [block, 2**30].")
        for name in ("num_warps", "seg_warps"):
            value = getattr(self, name)
            if value < 1 or value > 32 or value & (value - 1):
                raise ValueError(
                    f"LaunchConfig.{name} should be a power of two in [1, 32]. Found {value}."
                )

    def chunk_elems(self, segment_numel: int) -> int:
        """Chunk length (a multiple of ``block``) for a layout of ``segment_numel`` elements."""
        tiles = max(1, -(-segment_numel // (self.target_chunks * self.block)))
        return min(tiles * self.block, self.max_chunk_elems // self.block * self.block)


DEFAULT_CONFIG = LaunchConfig()
_CONFIG = ScopedSetting(DEFAULT_CONFIG)


def launch_config(config: LaunchConfig) -> contextlib.AbstractContextManager[LaunchConfig]:
    """Run the combines inside the ``with`` block with ``config`` (tests, offline tuning).

    Example:
        >>> with launch_config(LaunchConfig(block=1024, num_warps=4)):
        ...     pass  # sk.combine_(...) here uses 1024-element tiles
    """
    return _CONFIG.use(config)


@dataclass(frozen=True)
class ChunkPlan:
    """Device tables of a layout for one chunk length: O(segments) int64."""

    seg_start: torch.Tensor
    seg_numel: torch.Tensor
    seg_chunk: torch.Tensor  # [S + 1]: first chunk of each segment, then the chunk count
    num_chunks: int
    chunk_elems: int
    search_steps: int
    align: int


def chunk_plan(layout: GradLayout, device: torch.device, config: LaunchConfig) -> ChunkPlan:
    """The layout's tables on ``device``, built once and cached on the layout.

    The first call per (layout, device) copies O(S) integers to the device (one host sync);
    every later combine with the same layout reuses them.
    """
    chunk_elems = config.chunk_elems(layout.segment_numel)
    key = ("triton-plan", str(device), chunk_elems)
    plan = layout._cache.get(key)
    if plan is None:
        firsts, count = [], 0
        for n in layout.numels:
            firsts.append(count)
            count += -(-n // chunk_elems)
        table = torch.tensor([*layout.starts, *layout.numels, *firsts, count], dtype=torch.int64)
        table = table.to(device)
        s = layout.num_segments
        plan = ChunkPlan(
            seg_start=table[:s],
            seg_numel=table[s : 2 * s],
            seg_chunk=table[2 * s :],
            num_chunks=count,
            chunk_elems=chunk_elems,
            search_steps=(s - 1).bit_length(),
            # The hint is 16 (every start 16-element aligned: full-width vectors for any dtype)
            # or 1; two values, not five, keep the number of compiled variants down.
            align=16 if layout.start_alignment % 16 == 0 else 1,
        )
        layout._cache[key] = plan
    return plan


def _io_view(t: torch.Tensor) -> torch.Tensor:
    """bf16 buffers travel as int16 words (see chunk_pass.py); others as they are."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def combine_triton(
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
    config: LaunchConfig | None = None,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Write g_final into ``target`` (may be ``retain``); return the geometry table if asked.

    Inputs are assumed validated (see ``_validation.py``): same dtype/device/length, contiguous,
    finite scalars. Never synchronises with the host once the layout's plan is cached.
    ``reduce`` and ``seg_numels``: sharded buffers (``sharding.py``): the per-segment dots and
    the statistics' sums are summed over the ranks between the launches. ``state``: GRU's
    moving average (``gru.py``), read by both chunk passes and updated by the write pass.
    ``inv_scale``: a loss scaler's 1/scale (one float32 element on the device), multiplied into
    r and f as every chunk pass reads them (a ``SCALED`` variant; one scalar load a program).
    ``found_inf``: handed to a stateful method's O(segments) step (``gru``, ``weightings``).
    """
    config = _CONFIG.value if config is None else config
    device = retain.device
    plan = chunk_plan(layout, device, config)
    s = layout.num_segments
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    r, f, o = _io_view(retain), _io_view(forget), _io_view(target)
    m = _io_view(state) if state is not None else r  # never read unless the method is GRU
    ema = method.ema
    beta, keep = (ema.beta, ema.keep) if ema is not None else (0.0, 0.0)
    bf16 = retain.dtype == torch.bfloat16
    # Pointer arguments a variant never reads; real allocations keep the pointers valid.
    unused_f32, unused_i64 = torch.empty(8, **f32), torch.empty(1, **i64)
    scale = inv_scale if inv_scale is not None else unused_f32

    def chunk_pass(mode: int, coef: torch.Tensor, stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
        stats = bool(stats)  # a constexpr: SEGMENT_SUMS compiles as True
        block = min(config.stats_block, config.block) if stats else config.block
        if stats:
            partial = torch.empty((max(plan.num_chunks, 1), 8), **f32)
            conflicts = torch.empty(max(plan.num_chunks, 1), **i64)
        else:
            partial, conflicts = unused_f32, unused_i64
        if plan.num_chunks:
            _chunk_pass_kernel[(plan.num_chunks,)](
                r, f, o, m,
                plan.seg_start, plan.seg_numel, plan.seg_chunk, coef, partial, conflicts,
                scale, s, plan.search_steps, plan.chunk_elems, alpha, gamma, beta, keep,
                MODE=mode, STATS=stats, BF16_BITS=bf16, ALIGN=plan.align, BLOCK=block,
                SCALED=inv_scale is not None, num_warps=config.num_warps, enable_fp_fusion=False,
            )  # fmt: skip
        return partial, conflicts

    def segment_sums(
        partial: torch.Tensor, conflicts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.empty((s, 8), **f32)
        seg_conflicts = torch.empty(s, **i64)
        _segment_reduce_kernel[(s,)](
            partial, conflicts, plan.seg_chunk, sums, seg_conflicts, ROWS=config.reduce_rows
        )
        return sums, seg_conflicts

    if ema is not None:  # GRU: dots of f, r and m', coefficients in torch, write g_final and m'
        sums = segment_sums(*chunk_pass(_tiles.MODE_DOTS_EMA.value, unused_f32, True))[0]
        dots = sums[:, [0, 1, 2, 4, 3]]  # f·r, r·r, f·f, f·m', m'·m' (gru.NUM_DOTS)
        if reduce is not None:
            reduce(dots)
        coef = gru.coefficients(
            dots, alpha, gamma, eps, ema.retain_coef, method.scope == "global", found_inf
        )
        partial, conflicts = chunk_pass(_tiles.MODE_AFFINE_EMA.value, coef, want_stats)
    elif method.is_projection:
        dots = segment_sums(*chunk_pass(_tiles.MODE_DOTS.value, unused_f32, True))[0]
        if reduce is not None:
            reduce(dots)
        if method.weighting is not None:  # a Gramian weighting: its O(S) step in torch
            coef = weightings.coefficients(
                dots[:, :3], method.weighting, alpha, gamma, method.scope == "global", found_inf
            )
        else:
            dots = _nan_unless_norms_finite(dots, method.scope == "global")
            coef = torch.empty((s, 2), **f32)
            _coefficients_kernel[(1,)](
                dots, coef, s, alpha, gamma, eps,
                PROJECTION=method.code, GLOBAL=method.scope == "global",
                SEG_BLOCK=config.seg_block, num_warps=config.seg_warps, enable_fp_fusion=False,
            )  # fmt: skip
        partial, conflicts = chunk_pass(_tiles.MODE_AFFINE.value, coef, want_stats)
    else:
        partial, conflicts = chunk_pass(method.code, unused_f32, want_stats)

    if not want_stats:
        return None
    sums, seg_conflicts = segment_sums(partial, conflicts)
    if reduce is not None:
        reduce(sums)
        reduce(seg_conflicts)
    if want_stats == SEGMENT_SUMS:
        return sums[:, :6], seg_conflicts  # rows are padded to 8 columns
    table = torch.empty((s + 1, 8), **f32)
    _geometry_kernel[(1,)](
        sums, seg_conflicts, plan.seg_numel if seg_numels is None else seg_numels, table, s,
        SEG_BLOCK=config.seg_block, num_warps=config.seg_warps, enable_fp_fusion=False,
    )  # fmt: skip
    return nan_where_norms_overflow(table)


def _nan_unless_norms_finite(dots: torch.Tensor, whole: bool) -> torch.Tensor:
    """The per-segment sums with f·r set to NaN where r·r or f·f is not finite (over all segments
    when ``whole``, as a global method sees them), so the coefficient kernel writes those segments
    as NaN: the rule of ``reference.segment_dots``, which makes the outcome independent of the
    order f·r was summed in. O(segments), on the device, no host sync."""
    norms = dots[:, 1:3].sum(0, keepdim=True) if whole else dots[:, 1:3]
    ok = torch.isfinite(norms).all(-1)
    fixed = dots.clone()
    fixed[:, 0] = torch.where(ok, dots[:, 0], torch.full_like(dots[:, 0], float("nan")))
    return fixed
