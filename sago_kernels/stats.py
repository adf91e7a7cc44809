"""Gradient geometry of a combine (paper Table 3), as device tensors.

A backend produces per-segment sums (f·r, r·r, f·f, o·o, o·r, o·f and the conflict count) from
the passes it already makes; :func:`geometry_table` turns them into norms and cosines. The values
stay on the device, so asking for statistics never synchronises; :meth:`CombineStats.to_dict` is
the one place that copies them to the host (for logging).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FIELDS = (
    "dot_fr",
    "norm_r",
    "norm_f",
    "norm_out",
    "cos_fr",
    "cos_out_r",
    "cos_out_f",
    "conflict_fraction",
)
"""Columns of a geometry table, in order. ``out`` is g_final before rounding to the buffer dtype."""


@dataclass(frozen=True)
class Geometry:
    """One row of geometry: each field a tensor, 0-d (global) or ``[num_segments]``."""

    dot_fr: torch.Tensor
    norm_r: torch.Tensor
    norm_f: torch.Tensor
    norm_out: torch.Tensor
    cos_fr: torch.Tensor
    cos_out_r: torch.Tensor
    cos_out_f: torch.Tensor
    conflict_fraction: torch.Tensor
    """Share of elements whose signs conflict (f_i·r_i < 0 by sign), whatever the method."""

    @classmethod
    def from_table(cls, table: torch.Tensor) -> Geometry:
        return cls(**dict(zip(FIELDS, table.unbind(-1))))


@dataclass(frozen=True)
class CombineStats:
    """Statistics of one combine: ``total`` (whole buffer) and ``per_segment`` (layout order)."""

    method: str
    total: Geometry
    per_segment: Geometry
    table: torch.Tensor
    """``[num_segments + 1, 8]`` float32: one row per segment then the total row, FIELDS order."""

    @classmethod
    def from_table(cls, method: str, table: torch.Tensor) -> CombineStats:
        return cls(
            method=method,
            total=Geometry.from_table(table[-1]),
            per_segment=Geometry.from_table(table[:-1]),
            table=table,
        )

    def to_dict(self) -> dict[str, float]:
        """Global statistics as Python floats (one device-to-host copy)."""
        return dict(zip(FIELDS, self.table[-1].tolist()))

    def format(self, names: list[str] | None = None, max_rows: int = 20) -> str:
        """A plain-text table: one line per segment (at most ``max_rows``), then the total."""
        fields = FIELDS
        rows = self.table.tolist()
        width = max([len("total"), *(len(n) for n in (names or []) if n)]) + 2
        lines = [f"{'segment':<{width}}" + "".join(f"{f:>18}" for f in fields)]
        for j, row in enumerate(rows[:-1][:max_rows]):
            label = names[j] if names and names[j] else str(j)
            lines.append(
                f"{label:<{width}}" + "".join(f"{row[FIELDS.index(f)]:>18.6g}" for f in fields)
            )
        if len(rows) - 1 > max_rows:
            lines.append(f"... {len(rows) - 1 - max_rows} more segments")
        lines.append(
            f"{'total':<{width}}" + "".join(f"{rows[-1][FIELDS.index(f)]:>18.6g}" for f in fields)
        )
        return "\n".join(lines)


def _safe_cos(dot: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """Cosine with cos(0-vector, ·) = 0; non-finite inputs stay non-finite."""
    den = norm_a * norm_b
    return torch.where(den == 0, torch.zeros_like(dot), dot / den)


def nan_where_norms_overflow(table: torch.Tensor) -> torch.Tensor:
    """The geometry table with every field built on a dot x·y (``dot_fr``, ``cos_fr``,
    ``cos_out_r``, ``cos_out_f``) set to NaN in the rows where ‖x‖ or ‖y‖ is not finite.

    Why: a float32 sum of x_i·y_i with mixed signs overflows or not depending on the summation
    order (each backend has its own), but ‖x‖² and ‖y‖² sum non-negative terms, and while both are
    finite no partial sum of x·y can overflow (Cauchy–Schwarz). So this rule gives every backend
    the same finite and non-finite fields (the combine's own dots follow the same rule,
    ``reference.segment_dots``). No host sync.
    """
    r, f, o = torch.isfinite(table[:, 1:4]).unbind(-1)  # norm_r, norm_f, norm_out
    rf, yes = r & f, torch.ones_like(r)
    # in FIELDS order: dot_fr, norm_r, norm_f, norm_out, cos_fr, cos_out_r, cos_out_f, fraction
    keep = torch.stack([rf, yes, yes, yes, rf, o & r, o & f, yes], dim=-1)
    return torch.where(keep, table, torch.full_like(table, float("nan")))


SEGMENT_SUMS = "segment_sums"
"""A backend's ``want_stats`` value asking for the raw per-segment sums ``([S, 6], [S])``
instead of the table: the one-buffer synthesizer combines one parameter per call and builds one
table for the whole step from them (:func:`geometry_table`), instead of a table per parameter."""


def geometry_table(
    sums: torch.Tensor, conflicts: torch.Tensor, numels: torch.Tensor
) -> torch.Tensor:
    """Turn per-segment sums into the ``[S + 1, 8]`` geometry table (float32, no host sync).

    ``sums`` is ``[S, 6]`` (f·r, r·r, f·f, o·o, o·r, o·f), ``conflicts`` and ``numels`` are
    ``[S]`` int64. The last row is the global geometry, from the column totals. Fields built on
    a dot whose vectors' norms overflow are NaN (:func:`nan_where_norms_overflow`).
    """
    sums = sums.to(torch.float32)
    totals = torch.cat([sums, sums.sum(0, keepdim=True)])
    counts = torch.cat([conflicts, conflicts.sum(0, keepdim=True)]).to(torch.float64)
    sizes = torch.cat([numels, numels.sum(0, keepdim=True)]).to(torch.float64)
    fr, rr, ff, oo, o_r, o_f = totals.unbind(-1)
    norm_r, norm_f = rr.sqrt(), ff.sqrt()
    # o·o can only go negative through rounding; keep NaN as NaN.
    norm_out = torch.where(oo < 0, torch.zeros_like(oo), oo).sqrt()
    fraction = torch.where(sizes > 0, counts / sizes.clamp_min(1), torch.zeros_like(counts))
    table = torch.stack(
        [
            fr,
            norm_r,
            norm_f,
            norm_out,
            _safe_cos(fr, norm_r, norm_f),
            _safe_cos(o_r, norm_out, norm_r),
            _safe_cos(o_f, norm_out, norm_f),
            fraction.to(torch.float32),
        ],
        dim=-1,
    )
    return nan_where_norms_overflow(table)

