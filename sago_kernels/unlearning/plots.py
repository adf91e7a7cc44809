"""The benchmark's plots, from a results JSON: the Pareto fronts as the paper's Figures 3-4, Table
3's cosines per step, and the early stop's forgetting curves. Every plot shows all seeds (mean
with the standard deviation as error bars or a band), one legend for the figure, and an arrow to
the better corner or side."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from .evaluation import METRICS
from .protocol import GEOMETRY
from .tables import GEOMETRY_LABELS, LOSS_LABELS, METHOD_LABELS, _order, label

MARKERS = {"sago": "*", "pcgrad": "s", "sum": "o", "forget_only": "v", "pcgrad_global": "D",
           "gru_global": "P", "blur": "X", "upgrad": "^"}  # fmt: skip


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _better_arrow(ax, text: str, xy: tuple[float, float], xytext: tuple[float, float]) -> None:
    ax.annotate(text, xy=xy, xytext=xytext, xycoords="axes fraction",
                textcoords="axes fraction", fontsize=8, color="0.3",
                arrowprops={"arrowstyle": "->", "color": "0.3"})  # fmt: skip


def plot_fronts(results: dict, fronts: dict, out: Path, plt) -> Path:
    """One panel per loss: each method's grid points (mean over seeds ± std on both axes),
    the front of those means, GD's forgetting at the sources' weights (dashed) and the target
    model's retention (grey)."""
    x_key, y_key = fronts["x"], fronts["y"]
    losses = list(fronts["losses"])
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.8), squeeze=False)
    handles = {}
    target = results["analysis"]["reference_models"]["target_model"].get(y_key)
    methods_all = list(dict.fromkeys(m for f in fronts["losses"].values() for m in f["methods"]))
    colours = {m: f"C{i}" for i, m in enumerate(methods_all)}
    for ax, loss in zip(axes[0], losses):
        f = fronts["losses"][loss]
        for _, method in _order(losses, [(loss, m) for m in f["methods"]]):
            seeds = f["methods"][method]["seeds"]
            by_point: dict[tuple, list[tuple[float, float]]] = {}
            for record in seeds.values():
                for p in record["points"]:
                    key = (p["gamma_scale"], p["alpha_scale"])
                    by_point.setdefault(key, []).append((p["x"], p["y"]))
            means = []
            for values in by_point.values():
                (mx, sx), (my, sy) = (_mean_std([v[0] for v in values]),
                                      _mean_std([v[1] for v in values]))  # fmt: skip
                means.append((mx, my))
                h = ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt=MARKERS.get(method, "o"),
                                color=colours[method], ms=9 if method == "sago" else 6,
                                capsize=2, lw=0.8)  # fmt: skip
            handles.setdefault(METHOD_LABELS.get(method, method) if method != "forget_only"
                               else "forget loss alone", h)  # fmt: skip
            from .analysis import pareto_front

            front = pareto_front(means)
            ax.plot([p[0] for p in front], [p[1] for p in front], color=colours[method],
                    lw=1, ls="-" if method == "sago" else "--")  # fmt: skip
        for name, style in (("gd", ":"), ("retain_only", "-.")):
            if f["levels"][name]:
                ax.axvline(statistics.fmean(f["levels"][name].values()), color="0.5", ls=style,
                           lw=1)  # fmt: skip
        if target is not None:
            ax.axhline(target[0], color="0.6", ls="--", lw=1)
        ax.set_title(LOSS_LABELS.get(loss, loss))
        ax.set_xlabel(f"{x_key} {METRICS[x_key].arrow}")
        ax.set_ylabel(f"{y_key} {METRICS[y_key].arrow}")
        _better_arrow(ax, "better", (0.05, 0.95), (0.25, 0.75))
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 6), fontsize=8, frameon=False)  # fmt: skip
    caption = ("Fixed budget, grid of γ and α: mean ± std over seeds; dotted: GD's forgetting "
               "at the sources' weights; dash-dotted: the retain-only model's; grey dashed: "
               "the target model's retention")  # fmt: skip
    fig.suptitle(textwrap.fill(caption, int(18 * 4.2 * len(losses))), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 0.9))
    path = out / f"front_{y_key}_vs_{x_key}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_geometry(results: dict, out: Path, plt) -> Path | None:
    """Table 3's cosines per step: mean over seeds with a ± std band, per method."""
    runs = [r for r in results["runs"] if r["loss"] == "ga" and r["geometry"] is not None
            and r["gamma_scale"] == r["alpha_scale"] == 1.0
            and r["method"] in ("sum", "pcgrad", "sago")]  # fmt: skip
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(GEOMETRY), figsize=(4 * len(GEOMETRY), 3.5), squeeze=False)
    handles = {}
    for i, method in enumerate(("sum", "pcgrad", "sago")):
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        for j, name in enumerate(GEOMETRY):
            per_step = list(zip(*(r["geometry"][name] for r in mine)))
            mean = [statistics.fmean(v) for v in per_step]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_step]
            steps = range(1, len(mean) + 1)
            (h,) = axes[0][j].plot(steps, mean, color=f"C{i}")
            axes[0][j].fill_between(steps, [m - s for m, s in zip(mean, std)],
                                    [m + s for m, s in zip(mean, std)], color=f"C{i}",
                                    alpha=0.2)  # fmt: skip
            handles[{"sum": "GradDiff"}.get(method, METHOD_LABELS[method])] = h
    for j, name in enumerate(GEOMETRY):
        axes[0][j].set_title(f"{GEOMETRY_LABELS[name]} cosine (GA + GD)", fontsize=9)
        axes[0][j].set_xlabel("step")
        axes[0][j].axhline(0.0, color="grey", lw=0.5)
    _better_arrow(axes[0][2], "higher: retention kept", (0.5, 0.97), (0.5, 0.75))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8,
               frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = out / "cosines.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(results: dict, out: Path, plt) -> Path | None:
    """The early-stop runs' forget tokens still memorised per step: mean ± std over seeds, and
    the retain-only model's level (the stop)."""
    runs = [r for r in results["runs"] if r.get("curve")]
    if not runs:
        return None
    losses = list(dict.fromkeys(r["loss"] for r in runs))
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.5), squeeze=False)
    handles = {}
    levels = [s["retain_model"]["memorised_forget_tokens"] for s in results["seeds"]]
    for ax, loss in zip(axes[0], losses):
        mine = [r for r in runs if r["loss"] == loss]
        cells = _order(losses, list(dict.fromkeys((loss, r["method"]) for r in mine)))
        for i, (_, method) in enumerate(cells):
            curves = [[c["forget_tokens_memorised"] / r["forget_tokens"] for c in r["curve"]]
                      for r in mine if r["method"] == method]  # fmt: skip
            per_step = list(zip(*curves))
            mean = [statistics.fmean(v) for v in per_step]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_step]
            (h,) = ax.plot(range(len(mean)), mean, color=f"C{i}")
            ax.fill_between(range(len(mean)), [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], color=f"C{i}", alpha=0.2)
            handles[label("x", method).removeprefix("x").lstrip(" +") or "forget loss alone"] = h
        total = mine[0]["forget_tokens"]
        ax.axhline(statistics.fmean(levels) / total, color="0.5", ls=":", lw=1)
        ax.set_title(f"{LOSS_LABELS.get(loss, loss)}: forget tokens memorised ↓", fontsize=9)
        ax.set_xlabel("step")
        _better_arrow(ax, "faster forgetting", (0.3, 0.05), (0.55, 0.3))
    fig.legend(list(handles.values()), list(handles), loc="lower center",
               ncol=min(len(handles), 6), fontsize=8, frameon=False)  # fmt: skip
    caption = ("Sources' weights: mean ± std over seeds; dotted: the retain-only model (the "
               "early stop)")  # fmt: skip
    fig.suptitle(textwrap.fill(caption, int(18 * 4.2 * len(losses))), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 0.92))
    path = out / "forget_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(results: dict, per_example: dict | None, out: Path) -> list[Path]:
    """Every plot a results JSON supports; none when matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return []
    paths = [plot_fronts(results, f, out, plt) for f in results["analysis"]["fronts"]]
    paths += [p for p in (plot_geometry(results, out, plt), plot_curves(results, out, plt)) if p]
    return paths
