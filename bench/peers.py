"""The implementations a user could otherwise use, run on the same flat buffers.

1. ``fused``     — ``sago_kernels.combine_`` (Triton on CUDA); on a CPU, ``native`` is the
                   same call on the C++ backend (``make_fused(..., backend="native")``).
2. ``reference`` — ``sago_kernels.reference`` (eager torch, the CPU backend).
3. ``paper``     — eager per-parameter code written the way the paper's public code computes:
                   a Python loop over parameters, cloned gradients, boolean-mask indexing for
                   SAGO, a per-parameter ``.item()`` branch for PCGrad (written from the README's
                   formulas and the issue's description, not copied from anywhere).
4. ``compiled``  — ``torch.compile`` of the reference for a fixed layout (compile time is
                   reported separately and excluded from the timing).
   For ``gru``/``gru_global``: the GRU authors' eager step, written from their description
   (github.com/tmlr-group/GRU): the gradients flattened into one vector, the moving average
   updated out of place, the dot summed parameter by parameter with one ``.item()`` each, and
   the projection done in float64 on the host (their ``orthogonal_component_precise``).
5. ``torchjd``   — for the Gramian weightings (``upgrad``, ``mgda``, ...): TorchJD's aggregator
                   of the same name on each segment's Jacobian [γ·f; α·r], as a TorchJD user
                   applies it per module (its solvers run on the CPU: host syncs per segment).

Every peer has the signature ``fn(retain, forget) -> None`` after ``make(...)``: it writes g_final
into ``retain`` like the fused call. A GRU peer holds its own moving average, from zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import sago_kernels as sk
from sago_kernels.methods import METHODS

Peer = Callable[[torch.Tensor, torch.Tensor], None]


def _paper_style_one(
    r: torch.Tensor, f: torch.Tensor, method: str, alpha: float, gamma: float, eps: float
) -> torch.Tensor:
    r, f = r.clone(), f.clone()  # the public code clones every gradient
    if method in ("sago", "sago_prefer_retain"):
        conflict = ((f > 0) & (r < 0)) | ((f < 0) & (r > 0))
        g = torch.zeros_like(f)
        g[~conflict] = gamma * f[~conflict] + (
            alpha * r[~conflict] if method == "sago_prefer_retain" else 0
        )
        g[conflict] = alpha * r[conflict]
        return g
    if method == "sum":
        return gamma * f + alpha * r
    if method in ("pcgrad", "pcgrad_global"):
        d = torch.dot(f.flatten().float(), r.flatten().float())
        if d.item() < 0:  # host sync, one per parameter
            f = f - (d / (r.float().norm() ** 2 + eps)).to(f.dtype) * r
        return gamma * f + alpha * r
    d = torch.dot(r.flatten().float(), f.flatten().float())  # blur
    c = (d / (f.float().norm() ** 2 + eps)).item()
    return gamma * f + alpha * (r - c * f)


def make_gru_authors(
    layout: sk.GradLayout, method: str, alpha: float = 1.0, gamma: float = 1.0, eps: float = 1e-10
) -> Peer:
    """The GRU authors' style (see the module docstring): per segment for ``gru``, over the
    whole model for ``gru_global``."""
    ema = METHODS[method].ema
    global_scope = METHODS[method].scope == "global"
    average: list[torch.Tensor] = []

    def project(f: torch.Tensor, m: torch.Tensor, d: float) -> torch.Tensor:
        if d >= 0:
            return f
        f64, m64 = f.cpu().double(), m.cpu().double()  # host round trip, as their code
        g = f64 - (f64 @ m64) / (m64 @ m64 + eps) * m64
        return g.to(dtype=f.dtype, device=f.device)

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        r_views, f_views = layout.views(retain), layout.views(forget)
        r_all = torch.cat([v.flatten() for v in r_views])
        f_all = torch.cat([v.flatten() for v in f_views])
        m = ema.beta * r_all + ema.keep * (average[0] if average else torch.zeros_like(r_all))
        average[:] = [m]
        sizes = [v.numel() for v in r_views]
        dots = [(fs.float() @ ms.float()).item()  # one host sync per parameter
                for fs, ms in zip(f_all.split(sizes), m.split(sizes))]  # fmt: skip
        if global_scope:
            g = project(f_all, m, sum(dots))
        else:
            g = torch.cat([project(fs, ms, d) for fs, ms, d in
                           zip(f_all.split(sizes), m.split(sizes), dots)])  # fmt: skip
        g = gamma * g + (ema.retain_coef * alpha) * r_all
        for v, part in zip(r_views, g.split(sizes)):
            v.copy_(part.view_as(v))

    return run


def make_paper(
    layout: sk.GradLayout, method: str, alpha: float = 1.0, gamma: float = 1.0, eps: float = 1e-10
) -> Peer:
    if METHODS[method].needs_state:
        return make_gru_authors(layout, method, alpha, gamma, eps)
    global_scope = METHODS[method].scope == "global"

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        r_views, f_views = layout.views(retain), layout.views(forget)
        if global_scope:  # the public code flattens everything for the global variants
            r_all = torch.cat([v.flatten() for v in r_views])
            f_all = torch.cat([v.flatten() for v in f_views])
            g = _paper_style_one(r_all, f_all, method, alpha, gamma, eps)
            cursor = 0
            for v in r_views:
                v.copy_(g[cursor : cursor + v.numel()].view_as(v))
                cursor += v.numel()
            return
        for rv, fv in zip(r_views, f_views):
            rv.copy_(_paper_style_one(rv, fv, method, alpha, gamma, eps))

    return run


def make_fused(layout: sk.GradLayout, method: str, backend: str | None = None) -> Peer:
    states: dict[tuple, torch.Tensor] = {}  # a GRU method's moving average, per buffer kind

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        state = None
        if METHODS[method].needs_state:
            key = (retain.dtype, retain.device)
            if key not in states:  # allocated once, outside every later call
                states[key] = torch.zeros_like(retain)
            state = states[key]
        sk.combine_(retain, forget, layout=layout, method=method, backend=backend, state=state)

    return run


def make_reference(layout: sk.GradLayout, method: str) -> Peer:
    return make_fused(layout, method, backend="reference")


def _segment_ids(layout: sk.GradLayout, device: torch.device) -> torch.Tensor:
    """Element → segment index (padding maps to an extra dummy segment S)."""
    ids = torch.full((layout.numel,), layout.num_segments, dtype=torch.int64)
    for j, seg in enumerate(layout.segments):
        ids[seg.start : seg.end] = j
    return ids.to(device)


def make_compiled(
    layout: sk.GradLayout,
    method: str,
    device: torch.device,
    alpha: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-10,
) -> Peer:
    """``torch.compile`` of the reference's math written flat: a ``torch.where`` over the buffer
    for the gates, ``index_add`` over a segment-id map for the dots. (Compiling the reference's
    per-segment Python loop as is would unroll hundreds of segments per compile.)"""
    m = METHODS[method]
    seg = _segment_ids(layout, device)
    s = layout.num_segments + 1

    def flat(retain: torch.Tensor, forget: torch.Tensor) -> torch.Tensor:
        r, f = retain.float(), forget.float()
        if m.scope == "element":
            conflict = ((f > 0) & (r < 0)) | ((f < 0) & (r > 0))
            keep = gamma * f + (alpha * r if method in ("sum", "sago_prefer_retain") else 0.0)
            out = keep if method == "sum" else torch.where(conflict, alpha * r, keep)
            return out.to(retain.dtype)
        if m.scope == "global":  # one segment: plain sums
            d, n, mm = (f * r).sum(), (r * r).sum(), (f * f).sum()
        else:
            d = torch.zeros(s, device=r.device).index_add_(0, seg, f * r)
            n = torch.zeros(s, device=r.device).index_add_(0, seg, r * r)
            mm = torch.zeros(s, device=r.device).index_add_(0, seg, f * f)
        if method == "blur":
            c = d / (mm + eps)
            a, b = gamma - alpha * c, torch.full_like(c, alpha)
        else:
            c = torch.where(d < 0, d / (n + eps), torch.zeros_like(d))
            a, b = torch.full_like(c, gamma), alpha - gamma * c
        if m.scope == "global":
            return (a * f + b * r).to(retain.dtype)
        return (a[seg] * f + b[seg] * r).to(retain.dtype)

    torch._dynamo.reset()  # a fresh compile per peer: one code object serves every layout/method
    compiled = torch.compile(flat, dynamic=False)

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        retain.copy_(compiled(retain, forget))

    return run


def _torchjd_aggregator(method: str):
    import torchjd.aggregation as a

    return {
        "upgrad": a.UPGrad, "dualproj": a.DualProj, "mgda": a.MGDA, "imtl_g": a.IMTLG,
        "aligned_mtl": a.AlignedMTL, "cagrad": lambda: a.CAGrad(c=0.5),
        "nash_mtl": lambda: a.NashMTL(n_tasks=2), "pcgrad_symmetric": a.PCGrad, "config": a.ConFIG,
    }[method]()  # fmt: skip


TORCHJD_METHODS = (
    "upgrad", "dualproj", "mgda", "imtl_g", "aligned_mtl", "cagrad", "nash_mtl",
    "pcgrad_symmetric", "config",
)  # fmt: skip


def make_torchjd(
    layout: sk.GradLayout, method: str, alpha: float = 1.0, gamma: float = 1.0
) -> Peer:
    """TorchJD's aggregator per segment: stack the two gradients into a Jacobian, aggregate, copy
    the result back (what using TorchJD per module on flat buffers costs). 16-bit gradients are
    aggregated in float32: TorchJD's quadratic-programming projector refuses bfloat16."""
    aggregate = _torchjd_aggregator(method)

    def run(retain: torch.Tensor, forget: torch.Tensor) -> None:
        for rv, fv in zip(layout.segment_views(retain), layout.segment_views(forget)):
            if rv.numel() == 0:
                continue
            jacobian = torch.stack([gamma * fv, alpha * rv])
            if jacobian.dtype != torch.float64:
                jacobian = jacobian.float()
            rv.copy_(aggregate(jacobian))

    return run


PEERS = ("fused", "native", "reference", "paper", "compiled", "torchjd")
