"""Statistics and tables of the benchmark's runs: mean ± std over seeds per cell, the printed
table, and the paper's Tables 1-3 (rows, markdown).

The ``--paper`` preset runs only the cells of the paper's Tables 1-3 (:func:`paper_runs`):

- Table 1: each forget loss (GA, NPO, SimNPO, RMU) alone, + GD (``sum``), + PCGrad, + SAGO;
  columns forget ROUGE-L recall and exact memorisation (lower is more forgotten), forget quality,
  then model utility and retain ROUGE-L recall (retention); at matched forgetting and at the
  fixed budget, mean ± std over seeds with the step counts.
- Table 2: NPO + GD + GRU (the authors' whole-model ``gru_global``), RMU + BLUR, GA + GD + Global
  PCGrad (``pcgrad_global``), GA + GD + PCGrad and + SAGO as in the paper, then UPGrad (the
  Gramian aggregator) with GA and NPO, and Table 1's NPO and RMU rows with PCGrad and SAGO beside
  GRU and BLUR (same loss; no extra runs).
- Table 3: the cosines Forget-Retain, Comb-Forget and Comb-Retain of the whole model's gradients
  (the combine's own statistics, every step), averaged over the fixed budget's steps for GA + GD
  with the sum (GradDiff), PCGrad and SAGO; mean ± std over seeds.
"""

from __future__ import annotations

import statistics

from .protocol import FORGET_ONLY, GEOMETRY, PROTOCOLS

REPORTED = (
    ("forget_quality", "FQ", "{:.3g}"),
    ("model_utility", "MU", "{:.3f}"),
    ("forget_truth_ratio", "TR_f", "{:.3f}"),
    ("forget_rouge", "ROUGE_f", "{:.3f}"),
    ("forget_exact_memorization", "EM_f", "{:.3f}"),
    ("privleak", "PrivLeak", "{:.1f}"),
    ("forget_choice_accuracy", "acc_f (WMDP)", "{:.3f}"),
    ("retention_choice_accuracy", "acc_r (MMLU)", "{:.3f}"),
)
"""The printed columns; a column no cell has (WMDP's accuracies on TOFU data, TOFU's metrics
on WMDP) is left out."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per (loss, method, protocol), of the steps
    and of every metric (the printed table shows :data:`REPORTED`). A metric that is not
    available (``None``: no retain-only model) stays ``None``; a protocol a run does not have
    (matched forgetting without a reference) has no cell."""
    cells: dict[tuple, list[dict]] = {}
    for run in runs:
        for protocol in PROTOCOLS:
            if protocol in run["protocols"]:
                cells.setdefault((run["loss"], run["method"], protocol), []).append(
                    run["protocols"][protocol]
                )
    table = []
    for (loss, method, protocol), rows in cells.items():
        entry = {"loss": loss, "method": method, "protocol": protocol, "seeds": len(rows),
                 "reached": sum(r["reached"] for r in rows)}  # fmt: skip
        values = {"steps": [r["steps"] for r in rows]}
        for key in rows[0]["metrics"]:
            values[key] = [r["metrics"][key] for r in rows]
        for key, vals in values.items():
            if any(v is None for v in vals):
                entry[key] = entry[key + "_std"] = None
            else:
                entry[key], entry[key + "_std"] = mean_std(vals)
        table.append(entry)
    return table


def print_table(table: list[dict]) -> None:
    for protocol in PROTOCOLS:
        title = {
            "matched": "matched forgetting (forget tokens memorised <= the retain-only model's)",
            "fixed": "fixed step budget",
        }[protocol]
        rows = [e for e in table if e["protocol"] == protocol]
        if not rows:
            print(f"\n{title}: not available (no retain-only model: --retain-model)")
            continue
        print(f"\n{title}: mean ± std over seeds")
        shown = [c for c in REPORTED if any(c[0] in e for e in table)]
        header = f"{'loss':<8}{'method':<20}{'steps':>13}" + "".join(
            f"{label:>20}" for _, label, _ in shown
        )
        print(header)
        print("-" * len(header))
        for e in rows:
            cells = "".join(
                f"{(fmt.format(e[k]) + ' ± ' + fmt.format(e[k + '_std'])):>20}"
                if e.get(k) is not None else f"{'n/a':>20}"
                for k, _, fmt in shown
            )
            steps = f"{e['steps']:.1f} ± {e['steps_std']:.1f}"
            missed = e["seeds"] - e["reached"]
            flag = f"  ({missed} of {e['seeds']} seeds not reached)" if missed else ""
            print(f"{e['loss']:<8}{e['method']:<20}{steps:>13}{cells}{flag}")


# --------------------------------------------------------------------------- the paper's tables

PAPER_LOSSES = ("ga", "npo", "simnpo", "rmu")
LOSS_LABELS = {"ga": "GA", "npo": "NPO", "simnpo": "SimNPO", "rmu": "RMU"}
PAPER_TABLE1 = (
    (FORGET_ONLY, ""), ("sum", " + GD"), ("pcgrad", " + GD + PCGrad"), ("sago", " + GD + SAGO"),
)  # fmt: skip
"""Table 1's rows per forget loss: (method, label suffix); the forget-only row is the loss's
name alone, as in the paper (whose "+ PCGrad" and "+ SAGO" rows are written out here)."""
PAPER_TABLE2 = (
    ("NPO + GD + GRU", "npo", "gru_global"),
    ("RMU + BLUR", "rmu", "blur"),
    ("GA + GD + Global PCGrad", "ga", "pcgrad_global"),
    ("GA + GD + PCGrad", "ga", "pcgrad"),
    ("GA + GD + SAGO", "ga", "sago"),
    ("GA + GD + UPGrad", "ga", "upgrad"),
    ("NPO + GD + UPGrad", "npo", "upgrad"),
    ("NPO + GD + PCGrad", "npo", "pcgrad"),
    ("NPO + GD + SAGO", "npo", "sago"),
    ("RMU + GD + PCGrad", "rmu", "pcgrad"),
    ("RMU + GD + SAGO", "rmu", "sago"),
)
"""Table 2's rows (label, loss, method): the paper's five (GRU is the authors' whole-model
``gru_global``, Global PCGrad ``pcgrad_global``), UPGrad as the Gramian aggregator, then the
same-loss PCGrad and SAGO rows of Table 1 beside GRU (NPO) and BLUR (RMU)."""
PAPER_TABLE3 = (("GradDiff", "ga", "sum"), ("PCGrad", "ga", "pcgrad"), ("SAGO", "ga", "sago"))
"""Table 3's rows (label, loss, method): GA + GD with each synthesis."""
PAPER_COLUMNS = (
    ("forget_rouge", "forget ROUGE-L ↓", "{:.3f}"),
    ("forget_exact_memorization", "forget EM ↓", "{:.3f}"),
    ("forget_quality", "forget quality ↑", "{:.2g}"),
    ("model_utility", "model utility ↑", "{:.3f}"),
    ("retain_rouge", "retain ROUGE-L ↑", "{:.3f}"),
)
"""Columns of Tables 1 and 2: forget performance (the forget set's ROUGE-L recall and exact
memorisation, lower is more forgotten; forget quality, higher is closer to the retain-only
model), then retain performance (model utility, the retain set's ROUGE-L recall)."""


def paper_runs() -> list[tuple[str, str]]:
    """Every (loss, method) the ``--paper`` tables need, each once, in table order."""
    cells = [(loss, method) for loss in PAPER_LOSSES for method, _ in PAPER_TABLE1]
    cells += [(loss, method) for _, loss, method in PAPER_TABLE2 + PAPER_TABLE3]
    return list(dict.fromkeys(cells))


def paper_tables(runs: list[dict], summary: list[dict]) -> dict[str, list[dict]]:
    """The rows of Tables 1–3 from a run's summary (Tables 1, 2: one row per cell and protocol)
    and its runs (Table 3: each run's per-step cosines averaged over its steps, then mean ± std
    over seeds). A cell the run lacks raises ``KeyError`` naming it."""
    cells = {(e["loss"], e["method"], e["protocol"]): e for e in summary}

    def row(label: str, loss: str, method: str, protocol: str) -> dict:
        if (loss, method, protocol) not in cells:
            raise KeyError(f"the run has no {loss} / {method} cell (run it with --paper)")
        return {"label": label, **cells[(loss, method, protocol)]}

    table1 = [
        row(LOSS_LABELS[loss] + suffix, loss, method, protocol)
        for protocol in PROTOCOLS
        for loss in PAPER_LOSSES
        for method, suffix in PAPER_TABLE1
    ]
    table2 = [row(label, loss, method, protocol)
              for protocol in PROTOCOLS for label, loss, method in PAPER_TABLE2]  # fmt: skip
    table3 = []
    for label, loss, method in PAPER_TABLE3:
        mine = [r for r in runs if r["loss"] == loss and r["method"] == method]
        if not mine:
            raise KeyError(f"the run has no {loss} / {method} cell (run it with --paper)")
        entry = {"label": label, "loss": loss, "method": method, "seeds": len(mine),
                 "steps": len(mine[0]["geometry"]["cos_fr"])}  # fmt: skip
        for name in GEOMETRY:
            per_seed = [statistics.fmean(r["geometry"][name]) for r in mine]
            entry[name], entry[name + "_std"] = mean_std(per_seed)
        table3.append(entry)
    return {"table1": table1, "table2": table2, "table3": table3}


def _steps_cell(e: dict) -> str:
    missed = e["seeds"] - e["reached"]
    flag = f" ({missed}/{e['seeds']} not reached)" if missed else ""
    return f"{e['steps']:.1f} ± {e['steps_std']:.1f}{flag}"


def _cell(e: dict, key: str, fmt: str) -> str:
    return f"{fmt.format(e[key])} ± {fmt.format(e[key + '_std'])}"


def paper_markdown(tables: dict[str, list[dict]]) -> str:
    """Tables 1–3 as markdown (mean ± sample std over seeds)."""
    header = "| method | steps | " + " | ".join(label for _, label, _ in PAPER_COLUMNS) + " |"
    rule = "|" + " --- |" * (2 + len(PAPER_COLUMNS))
    titles = {
        "matched": "matched forgetting (forget tokens memorised <= the retain-only model's)",
        "fixed": "fixed budget",
    }
    lines = []
    for key, name in (("table1", "Table 1"), ("table2", "Table 2")):
        for protocol in PROTOCOLS:
            lines += ["", f"{name}, {titles[protocol]}: mean ± std over seeds", "", header, rule]
            for e in tables[key]:
                if e["protocol"] == protocol:
                    cells = " | ".join(_cell(e, k, fmt) for k, _, fmt in PAPER_COLUMNS)
                    lines.append(f"| {e['label']} | {_steps_cell(e)} | {cells} |")
    lines += [
        "", "Table 3, average cosine similarity over the fixed budget's steps (GA + GD): mean ± "
        "std over seeds", "",
        "| method | steps averaged | Forget–Retain | Comb–Forget | Comb–Retain |",
        "| --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for e in tables["table3"]:
        cells = " | ".join(_cell(e, k, "{:.3f}") for k in GEOMETRY)
        lines.append(f"| {e['label']} | {e['steps']} | {cells} |")
    return "\n".join(lines[1:]) + "\n"
