"""The benchmark's plots: forget quality against model utility (as the field plots it), the
forget set's memorised tokens over steps, and Table 3's cosines per step."""

from __future__ import annotations

import statistics
from pathlib import Path

from .protocol import GEOMETRY, PROTOCOLS
from .tables import PAPER_TABLE3


def plot_geometry(runs: list[dict], out: Path) -> Path | None:
    """Table 3's cosines per step (mean over seeds) for each of its rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    titles = {"cos_fr": "Forget–Retain", "cos_out_f": "Comb–Forget", "cos_out_r": "Comb–Retain"}
    fig, axes = plt.subplots(1, len(GEOMETRY), figsize=(4 * len(GEOMETRY), 3.5), squeeze=False)
    for i, (label, loss, method) in enumerate(PAPER_TABLE3):
        mine = [r for r in runs if r["loss"] == loss and r["method"] == method]
        for j, name in enumerate(GEOMETRY):
            per_step = [statistics.fmean(v) for v in zip(*(r["geometry"][name] for r in mine))]
            axes[0][j].plot(range(1, len(per_step) + 1), per_step, label=label, color=f"C{i}")
    for j, name in enumerate(GEOMETRY):
        axes[0][j].set_title(f"{titles[name]} cosine (GA + GD)")
        axes[0][j].set_xlabel("step")
        axes[0][j].axhline(0.0, color="grey", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "cosines.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(runs: list[dict], table: list[dict], out: Path) -> list[Path]:
    """Forget quality against model utility per method (as the field plots it), and the forget
    set's memorised tokens over steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    losses = sorted({e["loss"] for e in table})
    methods = list(dict.fromkeys(e["method"] for e in table))
    fig, axes = plt.subplots(len(PROTOCOLS), len(losses), figsize=(4 * len(losses), 7),
                             squeeze=False)  # fmt: skip
    for i, protocol in enumerate(PROTOCOLS):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            for e in table:
                if (e["protocol"] == protocol and e["loss"] == loss
                        and e.get("forget_quality") is not None
                        and e.get("model_utility") is not None):  # fmt: skip
                    ax.errorbar(
                        e["model_utility"], max(e["forget_quality"], 1e-12),
                        xerr=e["model_utility_std"], yerr=e["forget_quality_std"], fmt="o",
                        label=e["method"], color=f"C{methods.index(e['method'])}",
                    )  # fmt: skip
            ax.set_yscale("log")
            ax.set_title(f"{loss}, {protocol}")
            ax.set_xlabel("model utility")
            ax.set_ylabel("forget quality (KS p-value)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "forget_quality_vs_utility.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.5), squeeze=False)
    for j, loss in enumerate(losses):
        ax = axes[0][j]
        for run in runs:
            if run["loss"] == loss and run["seed"] == runs[0]["seed"]:
                steps = [c["step"] for c in run["curve"]]
                ax.plot(steps, [c["forget_memorised"] for c in run["curve"]], label=run["method"],
                        color=f"C{methods.index(run['method'])}")  # fmt: skip
        ax.set_title(f"{loss}: forget tokens memorised (seed {runs[0]['seed']})")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "forget_curves.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
