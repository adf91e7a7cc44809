"""The offline TOFU-style benchmark (``sago_kernels.unlearning.benchmark``): refusals before any
training, a tiny end-to-end run whose JSON recomputes its own metrics, the forget-only baseline,
and the ``--paper`` preset's runs and tables."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("faker")
pytest.importorskip("rouge_score")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


def _run(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0"}
    return subprocess.run(
        [sys.executable, "-m", "sago_kernels.unlearning.benchmark", *flags],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--methods", "sagoo"], "--methods: unknown ['sagoo']"),
        (["--losses", "gaa"], "--losses: unknown ['gaa']"),
        (["--steps", "0"], "--steps should be >= 1"),
        (["--seeds", "1", "1"], "--seeds should be distinct"),
        (["--width", "30"], "--width should be a multiple of 4"),
        (["--rmu-layer", "9"], "--rmu-layer should be in"),
        (["--paper", "--methods", "sum"], "--paper runs exactly the tables' cells"),
        (["--paper", "--losses", "ga"], "--paper runs exactly the tables' cells"),
        (["--paper", "--quick"], "--paper runs exactly the tables' cells"),
        (["--paper", "--steps", "0"], "--steps should be >= 1"),
        (["--paper", "--width", "30"], "--width should be a multiple of 4"),
        (["--methods", "forget_onl"], "--methods: unknown ['forget_onl']"),
    ],
)
def test_bad_flags_are_refused_before_anything_is_trained(flags, message):
    done = _run(*flags, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "seed 0" not in done.stdout + done.stderr, "refused only after pre-training"


def test_cuda_without_a_device_is_a_clear_refusal():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run("--device", "cuda", timeout=120)
    assert done.returncode == 2
    assert "no CUDA device is available" in done.stderr and "Traceback" not in done.stderr


def test_help_names_every_flag():
    done = _run("--help", timeout=120)
    assert done.returncode == 0
    for flag in ("--quick", "--paper", "--losses", "--methods", "--seeds", "--steps", "--device",
                 "--out", "--forget-percent", "--backend"):  # fmt: skip
        assert flag in done.stdout


def test_a_tiny_run_writes_everything_needed_to_recompute_its_metrics(tmp_path):
    from scipy.stats import ks_2samp
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "out"
    done = _run(
        "--seeds", "0", "1", "--losses", "ga", "npo", "--methods", "sum", "sago",
        "--authors", "10", "--qa-per-author", "2", "--world-facts", "8", "--steps", "4",
        "--pretrain-epochs", "10", "--eval-retain", "8", "--width", "32", "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "combine backend" in done.stdout
    assert "matched forgetting" in done.stdout and "fixed step budget" in done.stdout
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2
    assert (out / "forget_quality_vs_utility.png").exists()
    assert (out / "forget_curves.png").exists()
    seeds = {s["seed"]: s for s in result["seeds"]}
    for run in result["runs"]:
        reference = seeds[run["seed"]]["retain_model"]
        for protocol in ("matched", "fixed"):
            cell = run["protocols"][protocol]
            metrics, per_example = cell["metrics"], cell["per_example"]
            # forget quality: the KS p-value of the two stored truth-ratio samples
            want = ks_2samp(
                per_example["truth_ratio_forget"],
                reference["per_example"]["truth_ratio_forget"],
            ).pvalue
            assert metrics["forget_quality"] == pytest.approx(want, rel=1e-9, abs=1e-300)
            # MIA: the AUC of the stored scores with their membership (forget = member)
            for kind, scores in per_example["mia_scores"].items():
                labels = [1] * len(scores["forget"]) + [0] * len(scores["holdout"])
                auc = roc_auc_score(labels, scores["forget"] + scores["holdout"])
                assert metrics[f"mia_auc_{kind}"] == pytest.approx(auc)
        # matched forgetting is the first step at the retain-only model's count, not later
        matched = run["protocols"]["matched"]
        target = reference["memorised_forget_tokens"]
        hits = {c["step"]: c["forget_tokens_memorised"] for c in run["curve"]}
        if matched["reached"]:
            assert hits[matched["steps"]] <= target
            assert all(hits[s] > target for s in range(1, matched["steps"]))
        else:
            assert all(hits[s] > target for s in range(1, run["protocols"]["fixed"]["steps"] + 1))
    summary = {(e["loss"], e["method"], e["protocol"]): e for e in result["summary"]}
    assert len(summary) == 2 * 2 * 2
    cell = summary[("ga", "sum", "fixed")]
    values = [r["protocols"]["fixed"]["metrics"]["model_utility"]
              for r in result["runs"] if r["loss"] == "ga" and r["method"] == "sum"]  # fmt: skip
    assert cell["seeds"] == 2
    assert cell["model_utility"] == pytest.approx(sum(values) / 2)


# ------------------------------------------------------------------- the forget-only baseline

TINY = ["--authors", "10", "--qa-per-author", "2", "--world-facts", "8", "--steps", "4",
        "--pretrain-epochs", "3", "--eval-retain", "8", "--width", "32"]  # fmt: skip


def _tiny_setup(*flags: str):
    """(the protocol module, args, data, target model) of a tiny seed-0 run, without
    pre-training (unlearning from random weights is enough to compare two ways of taking the
    same steps)."""
    from sago_kernels.unlearning import benchmark as B
    from sago_kernels.unlearning import protocol as P
    from sago_kernels.unlearning.synthetic import synthetic_data

    args = B.parse_args([*TINY, *flags])
    data = synthetic_data(seed=0, authors=10, forget_percent=10, qa_per_author=2, world_facts=8,
                          eval_retain=8)  # fmt: skip
    target = P.tiny_lm(data.tokenizer.vocab_size, 64, args, seed=0).eval().requires_grad_(False)
    return P, args, data, target


def _final_weights(P, args, data, target, loss, method):
    """Unlearn with a stand-in evaluator that keeps the weights at the budget (never matched),
    counting the backward passes through the model."""
    kept, backwards = [], []

    def evaluator(model, reference):
        kept.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"metrics": {}, "per_example": {}}

    def deepcopy_with_a_counter(module):  # the model unlearn() steps, with a backward counter
        model = copy.deepcopy(module).requires_grad_(True)
        model.transformer.wpe.weight.register_hook(lambda grad: backwards.append(1))
        return model

    saved, P.copy = P.copy, types.SimpleNamespace(deepcopy=deepcopy_with_a_counter)
    try:
        run = P.unlearn(target, data, evaluator, {"memorised_forget_tokens": -1}, loss, method,
                        0, args)  # fmt: skip
    finally:
        P.copy = saved
    return run, kept[-1], len(backwards)


@pytest.mark.parametrize("loss", ["ga", "simnpo"])
def test_forget_only_does_no_retain_backward_and_equals_a_plain_forget_loss_run(loss, monkeypatch):
    import dataclasses

    import torch

    from sago_kernels.unlearning import losses

    P, args, data, target = _tiny_setup()

    def no_retain_loss(*a, **k):
        raise AssertionError("the forget-only baseline ran a retain loss")

    for name, entry in list(losses.RETAIN_LOSSES.items()):
        monkeypatch.setitem(
            losses.RETAIN_LOSSES, name, dataclasses.replace(entry, fn=no_retain_loss)
        )
    monkeypatch.setattr(P, "unlearning_step", no_retain_loss)
    monkeypatch.setattr(P, "GradientSynthesizer", no_retain_loss)
    run, weights, backwards = _final_weights(P, args, data, target, loss, P.FORGET_ONLY)
    assert backwards == args.steps, "one backward a step: the forget loss's, nothing else"
    assert run["geometry"] is None and run["method"] == "forget_only"
    monkeypatch.undo()

    # the same steps by hand: the benchmark's batch draws (retain drawn, unused), γ·∇L_f, AdamW
    gamma = losses.SUGGESTED_GAMMA[loss]
    model = copy.deepcopy(target).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    pad_id = data.tokenizer.pad_id
    forget_all = P.pad(data.examples(["forget"]), pad_id, "cpu")
    retain_all = P.pad(data.examples(["retain", "world"]), pad_id, "cpu")
    g = torch.Generator().manual_seed(sorted(losses.FORGET_LOSSES).index(loss))
    fn, hparams = losses.FORGET_LOSSES[loss].fn, losses.FORGET_LOSSES[loss].defaults
    for _ in range(args.steps):
        idx = torch.randint(len(forget_all["input_ids"]), (args.batch,), generator=g)
        torch.randint(len(retain_all["input_ids"]), (args.batch,), generator=g)
        batch = {k: v[idx] for k, v in forget_all.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fn(logits, batch["labels"], **hparams).backward()
        for p in model.parameters():
            p.grad.mul_(gamma)
        opt.step()
        opt.zero_grad()
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value), name
    assert not torch.equal(weights["lm_head.weight"], target.state_dict()["lm_head.weight"])


def test_forget_only_equals_the_sum_without_its_retain_term():
    """γ·g_f alone is the ``sum`` combine with α = 0 (which still pays for the retain pass)."""
    import torch

    P, args, data, target = _tiny_setup("--alpha", "0")
    _, alone, backwards_alone = _final_weights(P, args, data, target, "ga", P.FORGET_ONLY)
    run, summed, backwards_sum = _final_weights(P, args, data, target, "ga", "sum")
    assert (backwards_alone, backwards_sum) == (args.steps, 2 * args.steps)
    assert len(run["geometry"]["cos_fr"]) == args.steps
    for name, value in alone.items():
        torch.testing.assert_close(summed[name], value, rtol=1e-6, atol=1e-7, msg=name)


# --------------------------------------------------------------------------- the --paper preset

PAPER_CELLS = {
    ("ga", "forget_only"), ("ga", "sum"), ("ga", "pcgrad"), ("ga", "sago"),
    ("npo", "forget_only"), ("npo", "sum"), ("npo", "pcgrad"), ("npo", "sago"),
    ("simnpo", "forget_only"), ("simnpo", "sum"), ("simnpo", "pcgrad"), ("simnpo", "sago"),
    ("rmu", "forget_only"), ("rmu", "sum"), ("rmu", "pcgrad"), ("rmu", "sago"),
    ("npo", "gru_global"), ("rmu", "blur"), ("ga", "pcgrad_global"),
    ("ga", "upgrad"), ("npo", "upgrad"),
}  # fmt: skip
"""Table 1 (4 losses × forget-only, + GD, + PCGrad, + SAGO), Table 2's own rows (GRU, BLUR,
Global PCGrad, UPGrad ×2; its PCGrad and SAGO rows are Table 1's) and Table 3 (GA + GD: Table
1's), written out by hand."""


def test_the_paper_preset_runs_exactly_the_tables_cells():
    from sago_kernels.unlearning import benchmark as B
    from sago_kernels.unlearning import tables as T

    args = B.parse_args(["--paper"])
    assert len(args.runs) == len(set(args.runs)) == 21
    assert set(args.runs) == PAPER_CELLS
    table_cells = {(loss, m) for loss in T.PAPER_LOSSES for m, _ in T.PAPER_TABLE1}
    table_cells |= {(loss, m) for _, loss, m in T.PAPER_TABLE2 + T.PAPER_TABLE3}
    assert table_cells == set(args.runs), "every run is a table's cell and every cell is run"
    for key, value in B.PAPER_PRESET.items():
        assert getattr(args, key) == value
    assert args.forget_percent == 10 and len(args.seeds) >= 3
    # explicit flags override the preset's sizes, not its runs
    args = B.parse_args(["--paper", "--seeds", "4", "--width", "64", "--steps", "7"])
    assert (args.seeds, args.width, args.steps) == ([4], 64, 7)
    assert args.authors == B.PAPER_PRESET["authors"] and set(args.runs) == PAPER_CELLS
    # without the preset: every loss with every method, the defaults as they were
    args = B.parse_args(["--losses", "ga", "npo", "--methods", "sum", "forget_only"])
    assert args.runs == [("ga", "sum"), ("ga", "forget_only"), ("npo", "sum"),
                         ("npo", "forget_only")]  # fmt: skip
    assert (args.width, args.layers, args.forget_percent, args.authors) == (128, 2, 10, 40)


@pytest.fixture(scope="module")
def tiny_paper_run(tmp_path_factory):
    """A tiny ``--paper`` run of one seed (its JSON, folder and stdout), and the same runs
    as if a second seed had come out with other values (every metric and cosine + 0.1 · (index
    + 1)), so the two seeds differ in every cell."""
    import contextlib
    import io

    from sago_kernels.unlearning import benchmark as B

    out, stdout = tmp_path_factory.mktemp("paper"), io.StringIO()
    with contextlib.redirect_stdout(stdout):  # in this process: no second import of transformers
        B.main([
            "--paper", "--seeds", "0", "--authors", "10", "--qa-per-author", "1",
            "--world-facts", "4", "--steps", "2", "--pretrain-epochs", "2", "--eval-retain", "4",
            "--width", "16", "--layers", "1", "--threads", "0", "--no-progress", "--no-plots",
            "--out", str(out),
        ])  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    second = copy.deepcopy(result["runs"])
    for i, run in enumerate(second):
        run["seed"] = 1
        for cell in run["protocols"].values():
            cell["metrics"] = {k: v + 0.1 * (i + 1) for k, v in cell["metrics"].items()}
            cell["steps"] += i % 2
        if run["geometry"] is not None:
            run["geometry"] = {
                k: [v + 0.1 * (i + 1) for v in vs] for k, vs in run["geometry"].items()
            }
    return result, out, stdout.getvalue(), result["runs"] + second


def _mean_std(values):
    import statistics

    return statistics.fmean(values), statistics.stdev(values)


def test_a_tiny_paper_run_prints_and_saves_the_three_tables(tiny_paper_run):
    result, out, stdout, _ = tiny_paper_run
    assert {(r["loss"], r["method"]) for r in result["runs"]} == PAPER_CELLS
    assert len(result["runs"]) == 21 and result["args"]["forget_percent"] == 10
    tables = result["paper_tables"]
    assert [len(tables[k]) for k in ("table1", "table2", "table3")] == [2 * 16, 2 * 11, 3]
    markdown = (out / "paper_tables.md").read_text()
    assert markdown in stdout
    for row in tables["table1"] + tables["table2"] + tables["table3"]:
        assert f"| {row['label']} | " in markdown
    assert markdown.count("\n| GA + GD + SAGO | ") == 2 + 2  # Table 1 and 2, both protocols
    for name in ("Table 1, matched", "Table 1, fixed", "Table 2, matched", "Table 2, fixed",
                 "Table 3"):  # fmt: skip
        assert name in markdown
    for run in result["runs"]:
        if run["method"] == "forget_only":
            assert run["geometry"] is None
        else:
            assert all(len(v) == 2 for v in run["geometry"].values())
    # SAGO never opposes the retain gradient anywhere, so its Comb–Retain cosine is >= 0
    sago = [r for r in result["runs"] if (r["loss"], r["method"]) == ("ga", "sago")]
    assert all(v >= 0 for r in sago for v in r["geometry"]["cos_out_r"])
    assert not list(out.glob("*.png"))  # --no-plots


def test_paper_tables_1_and_2_are_the_seeds_mean_and_std_of_their_cells(tiny_paper_run):
    from sago_kernels.unlearning import tables as B

    runs = tiny_paper_run[3]
    tables = B.paper_tables(runs, B.summarise(runs))
    labels = [r["label"] for r in tables["table1"] if r["protocol"] == "fixed"]
    assert labels == [
        f"{name}{suffix}"
        for name in ("GA", "NPO", "SimNPO", "RMU")
        for suffix in ("", " + GD", " + GD + PCGrad", " + GD + SAGO")
    ]
    assert [r["protocol"] for r in tables["table1"]] == ["matched"] * 16 + ["fixed"] * 16
    assert [(r["label"], r["loss"], r["method"]) for r in tables["table2"][:7]] == [
        ("NPO + GD + GRU", "npo", "gru_global"), ("RMU + BLUR", "rmu", "blur"),
        ("GA + GD + Global PCGrad", "ga", "pcgrad_global"), ("GA + GD + PCGrad", "ga", "pcgrad"),
        ("GA + GD + SAGO", "ga", "sago"), ("GA + GD + UPGrad", "ga", "upgrad"),
        ("NPO + GD + UPGrad", "npo", "upgrad"),
    ]  # fmt: skip
    for row in tables["table1"] + tables["table2"]:
        mine = [r["protocols"][row["protocol"]] for r in runs
                if (r["loss"], r["method"]) == (row["loss"], row["method"])]  # fmt: skip
        assert row["seeds"] == len(mine) == 2
        assert row["reached"] == sum(c["reached"] for c in mine)
        for key in ("model_utility", "retain_rouge", "forget_rouge", "forget_quality", "steps"):
            values = [c["metrics"][key] if key != "steps" else c["steps"] for c in mine]
            mean, std = _mean_std(values)
            assert row[key] == pytest.approx(mean) and row[key + "_std"] == pytest.approx(std)
            assert std > 0 or key == "steps"
    markdown = B.paper_markdown(tables)
    row = next(r for r in tables["table1"]
               if r["label"] == "NPO + GD + SAGO" and r["protocol"] == "fixed")  # fmt: skip
    want = (f"| NPO + GD + SAGO | {row['steps']:.1f} ± {row['steps_std']:.1f} | "
            f"{row['forget_rouge']:.3f} ± {row['forget_rouge_std']:.3f} |")  # fmt: skip
    assert want in markdown


def test_paper_table_3_averages_each_runs_cosines_over_its_steps(tiny_paper_run):
    import statistics

    from sago_kernels.unlearning import plots
    from sago_kernels.unlearning import tables as B

    runs = tiny_paper_run[3]
    rows = B.paper_tables(runs, B.summarise(runs))["table3"]
    assert [(r["label"], r["loss"], r["method"]) for r in rows] == [
        ("GradDiff", "ga", "sum"), ("PCGrad", "ga", "pcgrad"), ("SAGO", "ga", "sago")
    ]
    for row in rows:
        mine = [r for r in runs if (r["loss"], r["method"]) == (row["loss"], row["method"])]
        assert row["seeds"] == 2 and row["steps"] == 2
        for name in ("cos_fr", "cos_out_f", "cos_out_r"):
            mean, std = _mean_std([statistics.fmean(r["geometry"][name]) for r in mine])
            assert row[name] == pytest.approx(mean) and row[name + "_std"] == pytest.approx(std)
            assert std > 0
    # the real seed's cosines are what the combine reported: in [-1, 1] up to float32 rounding
    for run in tiny_paper_run[0]["runs"]:
        for values in (run["geometry"] or {}).values():
            assert all(abs(v) <= 1 + 1e-5 for v in values)
    pytest.importorskip("matplotlib")
    path = plots.plot_geometry(runs, tiny_paper_run[1])
    assert path.name == "cosines.png" and path.stat().st_size > 0


def test_the_table_builders_refuse_a_run_without_the_tables_cells():
    from sago_kernels.unlearning import protocol as P
    from sago_kernels.unlearning import tables as B

    summary = [{"loss": "ga", "method": "sum", "protocol": p} for p in P.PROTOCOLS]
    with pytest.raises(KeyError, match="forget_only"):
        B.paper_tables([], summary)
