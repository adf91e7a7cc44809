"""Hypothesis strategies: layouts, gradient values with special values, weights, launch settings.

Layouts mix empty segments, size 1, odd sizes, sizes on both sides of every tile size the test
configurations use, one large segment among tiny ones, unaligned starts and gaps. Gaps between
segments are filled with NaN sentinels: a kernel that reads them poisons its sums, one that
writes them changes their bits, and both are checked.

Values come from a seeded numpy generator (drawn by hypothesis, so failures replay): normal
numbers over a wide exponent range, ±0, subnormals, pairs whose product underflows, equal
magnitudes with opposite signs, whole-zero segments, and optionally NaN and ±Inf.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from hypothesis import strategies as st

from sago_kernels import GradLayout
from sago_kernels.kernels import LaunchConfig, launch_config
from sago_kernels.methods import METHODS, Method
from sago_kernels.native import NativeConfig, native_config

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Largest decimal exponent per dtype, chosen so α·r + γ·f stays finite for |α|, |γ| <= 4 and the
# float32 dot products of a few thousand elements cannot overflow.
MAX_EXP = {torch.float32: 15, torch.bfloat16: 15, torch.float16: 3}
MIN_EXP = {torch.float32: -30, torch.bfloat16: -30, torch.float16: -6}
SUBNORMALS = {
    torch.float32: [1e-40, -3e-42, 1.4e-45],
    torch.bfloat16: [1e-39, -5e-40, 9.2e-41],
    torch.float16: [6e-8, -3e-5, 1.2e-7],
}

# Tiny tiles under the interpreter so every path (full tiles, tails, several tiles and chunks
# per segment, several row blocks in the reductions) is exercised on small buffers.
CONFIGS = (
    LaunchConfig(block=16, stats_block=16, target_chunks=4, reduce_rows=16, seg_block=16),
    LaunchConfig(block=64, stats_block=32, target_chunks=2, reduce_rows=16, seg_block=16),
    LaunchConfig(),
)


def configured(backend: str, config: LaunchConfig | None):
    """A context that runs ``backend`` with the chunking of ``config`` (None: the defaults).

    The native backend takes the tile size as its chunk length, so small buffers are cut into
    several chunks per segment there too.
    """
    if config is None or backend == "reference":
        return contextlib.nullcontext()
    if backend == "native":
        return native_config(NativeConfig(config.block, config.target_chunks))
    return launch_config(config)


SIZES = st.one_of(
    st.just(0),
    st.just(1),
    st.integers(2, 40),
    st.sampled_from([15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]),
)


@st.composite
def layouts(draw, max_segments: int = 6, big: tuple[int, int] = (100, 400)) -> GradLayout:
    sizes = draw(st.lists(SIZES, min_size=1, max_size=max_segments))
    if draw(st.booleans()):
        sizes.insert(draw(st.integers(0, len(sizes))), draw(st.integers(*big)))
    kind = draw(st.sampled_from(["padded", "packed", "gaps"]))
    if kind == "padded":
        return GradLayout.from_sizes(sizes, alignment=draw(st.sampled_from([16, 64])))
    if kind == "packed":
        return GradLayout.from_sizes(sizes, alignment=1)
    starts, cursor = [], draw(st.integers(0, 5))
    for n in sizes:
        starts.append(cursor)
        cursor += n + draw(st.integers(0, 7))
    return GradLayout(starts, sizes, cursor + draw(st.integers(0, 3)))


def gradient_values(seed: int, numel: int, dtype: torch.dtype, specials: bool) -> torch.Tensor:
    """One buffer's values; see the module docstring for the mix."""
    rng = np.random.default_rng(seed)
    lo, hi = MIN_EXP[dtype], MAX_EXP[dtype]
    scale = 10.0 ** rng.uniform(lo, hi, size=numel)
    # a segment-sized band of similar magnitudes is more realistic than pure log-uniform noise
    if rng.random() < 0.5:
        scale = np.full(numel, 10.0 ** rng.uniform(lo / 2, hi / 2))
    x = rng.standard_normal(numel) * scale
    kind = rng.random(numel)
    x[kind < 0.06] = 0.0
    x[(kind >= 0.06) & (kind < 0.08)] = -0.0
    sub = (kind >= 0.08) & (kind < 0.11)
    x[sub] = rng.choice(SUBNORMALS[dtype], size=int(sub.sum()))
    if specials:
        x[(kind >= 0.11) & (kind < 0.12)] = np.nan
        x[(kind >= 0.12) & (kind < 0.125)] = np.inf
        x[(kind >= 0.125) & (kind < 0.13)] = -np.inf
    return torch.from_numpy(x).to(dtype)


def fill_pair(
    layout: GradLayout, dtype, seed: int, specials: bool, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(retain, forget) for a layout: values in segments, NaN sentinels outside them."""
    r = gradient_values(seed, layout.numel, dtype, specials)
    f = gradient_values(seed + 1, layout.numel, dtype, specials)
    rng = np.random.default_rng(seed + 2)
    for s in layout.segments:
        if s.numel and rng.random() < 0.15:
            (r if rng.random() < 0.5 else f)[s.start : s.end] = 0.0
        if s.numel and rng.random() < 0.15:  # equal magnitudes, opposite signs: full conflict
            f[s.start : s.end] = -r[s.start : s.end]
        if s.numel > 2 and rng.random() < 0.15:  # products that underflow in float32
            r[s.start : s.start + 2] = torch.tensor([1e-25, -1e-25]).to(dtype)
            f[s.start : s.start + 2] = torch.tensor([-1e-25, -1e-25]).to(dtype)
    outside = torch.ones(layout.numel, dtype=torch.bool)
    for s in layout.segments:
        outside[s.start : s.end] = False
    r[outside] = float("nan")
    f[outside] = float("nan")
    return r.to(device), f.to(device)


def state_for(method: str | Method, like: torch.Tensor, *, zero: bool = False) -> dict:
    """``{"state": ...}`` for a method that keeps one (GRU), else ``{}``: a fresh buffer like
    ``like``, deterministic and non-zero (so the average's own term counts) unless ``zero`` (a
    first step, as a new ``GradientSynthesizer`` holds)."""
    m = method if isinstance(method, Method) else METHODS.get(method)
    if m is None or not m.needs_state:
        return {}
    if zero:
        return {"state": torch.zeros_like(like)}
    values = torch.randn(like.numel(), generator=torch.Generator().manual_seed(1234))
    return {"state": values.to(like.dtype).to(like.device)}


WEIGHTS = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 2.0, 0.125]), st.floats(-2.0, 4.0, width=32))
# eps = 0 is allowed (README): an all-zero segment then has d = n = 0, a 0/0 for a wrong clamp
EPS = st.sampled_from([1e-10, 0.0, 1e-6, 1e-3])
SEEDS = st.integers(0, 2**31 - 1)
