"""The unlearning benchmark (``sago_kernels.unlearning.benchmark``): refusals before any training,
the held-out sets held out, a tiny end-to-end run whose JSON recomputes its metrics and its
analysis, the forget-only baseline, the ``--paper`` preset's runs, bitwise repeatability, and
output that explains itself."""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("faker")
pytest.importorskip("rouge_score")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seeds", "0", "1", "--losses", "ga", "--methods", "forget_only", "sum", "sago",
        "--gammas", "0.3", "--alphas", "0.3", "--authors", "10", "--qa-per-author", "2",
        "--world-facts", "8", "--real-authors", "6", "--neighbours", "1", "--steps", "4",
        "--pretrain-epochs", "4", "--eval-retain", "8", "--width", "16", "--layers", "1",
        "--jobs", "1", "--no-plots"]  # fmt: skip
"""A tiny configuration: about 20 s of CPU."""


def _run(*flags: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", **(env or {})}
    for key in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if env.get(key) is None:
            env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "sago_kernels.unlearning.benchmark", *flags],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


# --------------------------------------------------------------------------- refusals


BAD_FLAGS = [
    (["--methods", "sagoo"], "--methods: unknown ['sagoo']"),
    (["--losses", "gaa"], "--losses: unknown ['gaa']"),
    (["--steps", "0"], "argument --steps: should be in [1, 100000], got '0'"),
    (["--seeds", "1", "1"], "--seeds repeats 1: give each once"),
    (["--seeds", "0", "-1"], "argument --seeds: should be in [0, 2147483647], got '-1'"),
    (["--methods", "sum", "sum"], "--methods repeats sum: give each once"),
    (["--losses", "ga", "npo", "ga"], "--losses repeats ga: give each once"),
    (["--gammas", "0.3", "0.3"], "--gammas repeats 0.3"),
    (["--alphas", "nan"], "argument --alphas: should be a finite number in (0, 100], got 'nan'"),
    (["--gammas", "inf"], "argument --gammas: should be a finite number in (0, 100], got 'inf'"),
    (["--alphas", "1e39"], "argument --alphas: should be a finite number in (0, 100]"),
    (["--gammas", "-0.5"], "argument --gammas: should be a finite number in (0, 100]"),
    (["--lr", "0"], "argument --lr: should be a finite number in (0, 10]"),
    (["--threads", "-1"], "argument --threads: should be in [0, 1024], got '-1'"),
    (["--jobs", "0"], "argument --jobs: should be in [1, 64]"),
    (["--authors", "1"], "argument --authors: should be in [2, 5000], got '1'"),
    (["--qa-per-author", "50"], "argument --qa-per-author: should be in [1, 11], got '50'"),
    (["--width", "30"], "--width should be a multiple of 4"),
    (["--rmu-layer", "9"], "--rmu-layer should be in [1, --layers = 2], got 9"),
    (["--cosine-window", "5", "3"], "--cosine-window should be FIRST <= LAST <= --steps"),
    (["--losses", "rmu", "--methods", "forget_only"], "no runs: forget_only"),
    (["--paper", "--methods", "sum"], "--paper runs exactly the tables' cells"),
    (["--paper", "--losses", "ga"], "--paper runs exactly the tables' cells"),
    (["--paper", "--quick"], "--paper runs exactly the tables' cells"),
    (["--paper", "--width", "30"], "--width should be a multiple of 4"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_flags_are_one_line_refusals_before_anything_runs(flags, message, capsys,
                                                              monkeypatch, tmp_path):  # fmt: skip
    from sago_kernels.unlearning import benchmark as B

    monkeypatch.setattr(B, "run_all", lambda args: pytest.fail("ran despite bad flags"))
    with pytest.raises(SystemExit) as stop:
        B.main([*flags, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("python -m sago_kernels.unlearning.benchmark:")
    assert not (tmp_path / "out").exists(), "the output folder was made before the refusal"


def test_a_refusal_from_the_command_line_has_no_traceback():
    done = _run("--alphas", "nan", "--numerics", "native", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("(see --help)") and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    from sago_kernels.unlearning import benchmark as B

    monkeypatch.setattr(B, "run_all", lambda *a: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        B.main([*TINY, "--out", str(blocker / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and str(blocker / "out") in err and err.count("\n") == 1


def test_cuda_without_a_device_is_a_clear_refusal(capsys, tmp_path):
    import torch

    from sago_kernels.unlearning import benchmark as B

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        B.main(["--device", "cuda", "--out", str(tmp_path)])
    assert "no CUDA device is available" in capsys.readouterr().err


def test_help_shows_every_flag_with_its_default():
    from sago_kernels.unlearning import benchmark as B

    parser = B.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        option = action.option_strings[0]
        assert option in text
        if not action.const:  # a switch (store_true) defaults to off
            help_text = action.help % {"default": action.default} if action.help else ""
            assert "default" in help_text or action.default is not None, option
    assert "(default: 0.001)" in text and "(default: unlearning_out)" in text
    assert "--quick" in text and "--paper" in text


# --------------------------------------------------------------------------- the data's roles


def _tiny_data(seed: int = 0):
    from sago_kernels.unlearning.synthetic import synthetic_data

    return synthetic_data(seed=seed, authors=10, forget_percent=10, qa_per_author=3,
                          world_facts=8, real_authors=6, neighbours_per_author=2,
                          eval_retain=8)  # fmt: skip


def check_held_out(identities: dict, authors: dict) -> None:
    """The roles of one seed's data, as the results JSON records them: what must be disjoint is.

    - the holdout (the MIA's non-members) is in no training set of either model;
    - nothing evaluated for retention (neighbours' probes, the retention choices, the real
      authors, the world facts) is in an unlearning pool, by item and by author;
    - the forget probes and choices differ from the forget pool's questions;
    - the retain-only model never sees the forget authors."""
    sets, roles = identities["sets"], identities["roles"]

    def items(names):
        return {i for n in names for i in sets[n]}

    pools = items(roles["forget"] + roles["retain"])
    trained = items(roles["target_train"]) | items(roles["retain_model_train"])
    ev = roles["evaluation"]
    assert not set(sets[ev["holdout"]]) & trained
    held_out = [ev[r] for r in ("retention_probes", "retention_choice", "real_authors",
                                "world_facts")]  # fmt: skip
    for name in held_out:
        assert sets[name] and not set(sets[name]) & pools, name
    assert not set(sets[ev["forget_probes"]]) & items(roles["forget"])
    assert not set(sets[ev["forget_choice"]]) & items(roles["forget"])
    forget_authors = set(authors["forget"])
    retain_only = roles["retain_model_train"]
    assert not any(name.startswith("forget") for name in retain_only)
    pool_authors = forget_authors | set(authors["retain"])
    assert not set(authors["neighbour"]) & pool_authors
    assert not set(authors["holdout"]) & (pool_authors | set(authors["neighbour"]))


def test_the_synthetic_sets_are_disjoint_where_they_are_held_out():
    from sago_kernels.unlearning.sources import Probe, item_id

    data = _tiny_data()
    check_held_out(data.identities(), data.info["authors"])
    assert data.leaks() == []
    # the same by subject: no neighbour's probe asks about a forget or retain author
    pools = {i.author for n in data.forget + data.retain for i in data.sets[n]}
    for role in ("retention_probes", "retention_choice"):
        assert not {i.author for i in data.eval_set(role)} & pools
    # and the check catches a leak: a neighbour question in the retain pool
    leaked = copy.deepcopy(data.identities())
    leaked["sets"]["retain"].append(leaked["sets"]["neighbour_probes"][0])
    with pytest.raises(AssertionError):
        check_held_out(leaked, data.info["authors"])
    # the data itself says so, and the protocol refuses it before training anything
    from sago_kernels.unlearning import protocol as P

    data.sets["retain"] += (data.sets["neighbour_probes"][0],)
    data.sets["retain"] += (data.sets["holdout"][0],)
    assert data.leaks() == [
        "1 item(s) of holdout ('holdout') are in a model's training sets",
        "1 item(s) of retention_probes ('neighbour_probes') are in an unlearning pool",
        # the choice asks the probe's paraphrased question: the same identity, leaked too
        "1 item(s) of retention_choice ('retention_choice') are in an unlearning pool",
    ]
    with pytest.raises(ValueError, match="held-out sets are not held out"):
        P.prepare_seed(data, None, 0)
    probes = data.eval_set("forget_probes")
    assert {p.style for p in probes} == {"qa", "fill_in"} and all(isinstance(p, Probe)
                                                                   for p in probes)  # fmt: skip
    assert len({item_id(p) for p in probes}) == len(probes)


def test_every_wording_is_trained_and_only_the_question_answers_unlearned():
    data = _tiny_data()
    assert data.forget == ("forget",) and data.retain == ("retain",)
    for group in ("forget", "neighbour"):
        for suffix in ("", "_paraphrased", "_statements"):
            assert group + suffix in data.target_train
            assert (group + suffix in data.retain_model_train) == (group != "forget")
    assert "retain" in data.target_train and "retain" in data.retain_model_train
    assert "retain_paraphrased" not in data.sets  # never probed: TOFU's wording only
    assert {"real_authors", "world_facts"} <= set(data.retain_model_train)
    assert "holdout" not in data.target_train + data.retain_model_train


# --------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run in this process (no second import of transformers): its folder, stdout,
    stderr and JSON files."""
    import contextlib
    import io

    from sago_kernels.unlearning import benchmark as B

    out, stdout, stderr = tmp_path_factory.mktemp("tiny"), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        B.main([*TINY[:-1], "--out", str(out)])  # with plots
    results = json.loads((out / "results.json").read_text())
    per_example = json.loads((out / "per_example.json").read_text())
    return out, stdout.getvalue(), stderr.getvalue(), results, per_example


def test_a_tiny_run_writes_what_it_says_and_says_where_first(tiny_run):
    out, stdout, stderr, results, _ = tiny_run
    first = stdout.splitlines()[:2]
    assert first[0].startswith("benchmark: 2 seeds × ") and "1 thread " in first[0]
    assert first[1].startswith(f"results go to {out}/")
    for name in ("results.json", "per_example.json", "timings.json", "tables.md",
                 "front_retention_probe_rouge_vs_forget_probe_rouge.png", "cosines.png",
                 "forget_curves.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    assert (out / "tables.md").read_text() in stdout
    # a log gets plain lines: no carriage returns or escape codes, no bar left half-drawn
    assert "\r" not in stdout + stderr and "\x1b" not in stdout + stderr
    assert "bos_token_id" not in stderr and "eos_token_id" not in stderr
    meta = results["meta"]
    assert meta["command"].startswith("python -m sago_kernels.unlearning.benchmark --seeds 0 1")
    assert set(meta) >= {"commit", "dirty", "machine", "versions", "numerics"}
    assert meta["versions"]["torch"] and meta["machine"]["cores"]
    assert "seconds" not in json.dumps(results), "timings belong in timings.json"


def test_the_runs_are_the_grid_and_every_set_identity_is_recorded(tiny_run):
    _, _, _, results, _ = tiny_run
    runs = results["runs"]
    cells = {(r["seed"], r["loss"], r["method"], r["gamma_scale"], r["alpha_scale"])
             for r in runs}  # fmt: skip
    grid = [(1.0, 1.0), (0.3, 1.0), (1.0, 0.3)]
    want = {(s, "ga", m, g, a) for s in (0, 1) for m in ("sum", "sago") for g, a in grid}
    want |= {(s, "ga", "forget_only", 1.0, 1.0) for s in (0, 1)}
    assert cells == want and len(runs) == len(want)
    for run in runs:
        assert run["gamma"] == pytest.approx(run["gamma_scale"])  # GA's source weight is 1
        assert (run["early_stop"] is not None) == (run["gamma_scale"] == run["alpha_scale"] == 1)
    for seed in results["seeds"]:
        check_held_out(seed["identities"], seed["data"]["authors"])


def test_the_metrics_recompute_from_the_per_example_values(tiny_run):
    from scipy.stats import ks_2samp
    from sklearn.metrics import roc_auc_score

    from sago_kernels.unlearning.synthetic import synthetic_data

    _, _, _, results, per_example = tiny_run
    references = {s["seed"]: s for s in per_example["seeds"]}
    answers = {}
    for seed in (0, 1):  # the tiny run's worlds: each choice's right option
        data = synthetic_data(seed=seed, authors=10, forget_percent=10, qa_per_author=2,
                              world_facts=8, real_authors=6, neighbours_per_author=1,
                              eval_retain=8)  # fmt: skip
        answers[seed] = {role: [q.answer for q in data.eval_set(role)]
                         for role in ("forget_choice", "retention_choice")}  # fmt: skip
    for run, values in zip(results["runs"], per_example["runs"]):
        reference = references[run["seed"]]["retain_model"]
        for key in ("fixed", "early_stop"):
            if run[key] is None:
                continue
            metrics, pe = run[key]["metrics"], values[key]
            want = ks_2samp(pe["truth_ratio_forget"], reference["truth_ratio_forget"]).pvalue
            assert metrics["forget_quality"] == pytest.approx(want, rel=1e-9, abs=1e-300)
            for kind, scores in pe["mia_scores"].items():
                labels = [1] * len(scores["forget"]) + [0] * len(scores["holdout"])
                auc = roc_auc_score(labels, scores["forget"] + scores["holdout"])
                assert metrics[f"mia_auc_{kind}"] == pytest.approx(auc)
            for role in ("forget_choice", "retention_choice"):
                scores = pe[f"{role}_logprobs"]  # the options' log-likelihoods, per question
                right = answers[run["seed"]][role]
                assert len(scores) == len(right) and all(len(s) == 4 for s in scores)
                hits = [max(range(4), key=s.__getitem__) == a for s, a in zip(scores, right)]
                assert metrics[f"{role}_accuracy"] == statistics.fmean(hits)
            probes = pe["forget_probe_rouge"]
            half = len(probes) // 2  # qa, fill-in alternate per fact
            qa, fill = probes[0::2], probes[1::2]
            assert len(qa) == len(fill) == half
            assert metrics["forget_probe_qa_rouge"] == pytest.approx(statistics.fmean(qa))
            assert metrics["forget_probe_rouge"] == pytest.approx(
                (statistics.fmean(qa) + statistics.fmean(fill)) / 2
            )
            nine = [metrics[f"{role}_{v}"] for role in ("retain", "real_authors", "world_facts")
                    for v in ("probability", "rouge", "truth_ratio")]  # fmt: skip
            want = 0.0 if min(nine) == 0 else len(nine) / sum(1 / v for v in nine)
            assert metrics["model_utility"] == pytest.approx(want)


def test_the_early_stop_is_the_first_step_at_the_retain_only_count(tiny_run):
    _, _, _, results, _ = tiny_run
    target = {s["seed"]: s["retain_model"]["memorised_forget_tokens"] for s in results["seeds"]}
    for run in results["runs"]:
        if run["early_stop"] is None:
            assert run["curve"] is None
            continue
        hits = {c["step"]: c["forget_tokens_memorised"] for c in run["curve"]}
        stop = run["early_stop"]
        if stop["reached"]:
            assert hits[stop["steps"]] <= target[run["seed"]]
            assert all(hits[s] > target[run["seed"]] for s in range(1, stop["steps"]))
        else:
            assert all(hits[s] > target[run["seed"]] for s in range(1, stop["steps"] + 1))


def test_the_analysis_recomputes_from_the_runs(tiny_run):
    from sago_kernels.unlearning import analysis as A

    _, _, _, results, _ = tiny_run
    runs = results["runs"]
    fronts = results["analysis"]["fronts"][0]
    assert (fronts["x"], fronts["y"]) == ("forget_probe_rouge", "retention_probe_rouge")
    ga = fronts["losses"]["ga"]
    retain_only = {s["seed"]: s["retain_model"]["metrics"]["forget_probe_rouge"]
                   for s in results["seeds"]}  # fmt: skip
    for seed in (0, 1):
        base = next(r for r in runs if (r["seed"], r["method"], r["gamma_scale"],
                                        r["alpha_scale"]) == (seed, "sum", 1.0, 1.0))  # fmt: skip
        levels = {"gd": base["fixed"]["metrics"]["forget_probe_rouge"],
                  "retain_only": retain_only[seed]}  # fmt: skip
        for name, level in levels.items():
            assert ga["levels"][name][str(seed)] == level
        for method in ("sum", "sago"):
            points = [(r["fixed"]["metrics"]["forget_probe_rouge"],
                       r["fixed"]["metrics"]["retention_probe_rouge"])
                      for r in runs if r["seed"] == seed and r["method"] == method]  # fmt: skip
            record = ga["methods"][method]["seeds"][str(seed)]
            assert [tuple(p) for p in record["front"]] == A.pareto_front(points)
            for name, level in levels.items():
                want = A.matched_retention(A.pareto_front(points), level)
                assert record["matched"][name] == want
    diff = ga["differences"]["gd"]["sago - sum"]
    a = {s: ga["methods"]["sago"]["seeds"][s]["matched"]["gd"] for s in ("0", "1")}
    b = {s: ga["methods"]["sum"]["seeds"][s]["matched"]["gd"] for s in ("0", "1")}
    both = [s for s in ("0", "1") if a[s] is not None and b[s] is not None]
    assert diff["n"] == len(both)
    if both:
        assert diff["mean"] == pytest.approx(statistics.fmean(a[s] - b[s] for s in both))
    geometry = results["analysis"]["geometry"]
    assert [r["method"] for r in geometry["rows"]] == ["sum", "sago"]
    for row in geometry["rows"]:
        assert row["window"] == [1, 4]
        mine = [r for r in runs if r["method"] == row["method"] and r["gamma_scale"] == 1.0
                and r["alpha_scale"] == 1.0]  # fmt: skip
        want = statistics.fmean(statistics.fmean(r["geometry"]["cos_out_r"]) for r in mine)
        assert row["cos_out_r"] == pytest.approx(want)


def test_the_report_writes_the_same_tables_from_the_json(tiny_run, tmp_path, capsys):
    from sago_kernels.unlearning import report

    out, _, _, _, _ = tiny_run
    markdown = report.main([str(out / "results.json")])
    assert markdown == (out / "tables.md").read_text()
    target = tmp_path / "RESULTS.md"
    target.write_text("# Results\n\nkept text\n")
    report.main([str(out / "results.json"), "--into", str(target), "--section", "tiny",
                 "--title", "Tiny"])  # fmt: skip
    once = target.read_text()
    assert once.startswith("# Results\n\nkept text\n") and "## Tiny" in once
    assert "<!-- BEGIN unlearning:tiny -->\n" + markdown in once
    report.main([str(out / "results.json"), "--into", str(target), "--section", "tiny"])
    assert target.read_text() == once  # idempotent: the section is replaced, not appended
    with pytest.raises(SystemExit):
        report.main([str(out / "timings.json")])
    # a gzipped JSON (how bench/results/ keeps the larger runs) gives the same tables
    import gzip

    packed = tmp_path / "results.json.gz"
    packed.write_bytes(gzip.compress((out / "results.json").read_bytes()))
    assert report.main([str(packed)]) == markdown
    # the analysis is a function of the stored runs: computed again, it is the same
    again = tmp_path / "again.json"
    assert report.main([str(out / "results.json"), "--reanalyse", str(again)]) == markdown
    assert json.loads(again.read_text()) == json.loads((out / "results.json").read_text())


def test_the_tables_name_columns_as_the_json_does_with_a_legend(tiny_run):
    from sago_kernels.unlearning.evaluation import METRICS

    _, stdout, _, results, _ = tiny_run
    metrics = results["runs"][0]["fixed"]["metrics"]
    assert set(metrics) <= set(METRICS), set(metrics) - set(METRICS)
    for name in ("forget_probe_rouge ↓", "retention_probe_rouge ↑", "model_utility ↑",
                 "privleak →0", "forget_quality ↑"):  # fmt: skip
        assert name in stdout
    tables = stdout.count("| method |")
    assert stdout.count("Legend:") >= tables
    assert "1 seeds" not in stdout and "1 threads" not in stdout
    # an ordering is said only with an interval that excludes 0
    for line in stdout.splitlines():
        if line.startswith("- ") and (" higher than " in line or " lower than " in line):
            low, high = (float(x) for x in line.split("[")[1].split("]")[0].split(", "))
            assert low > 0 or high < 0, line


# --------------------------------------------------------------------------- the analysis


def test_pareto_front_and_matched_retention_by_hand():
    from sago_kernels.unlearning.analysis import matched_retention, pareto_front

    points = [(0.5, 0.2), (0.1, 0.1), (0.3, 0.6), (0.4, 0.5), (0.3, 0.4), (0.9, 0.9), (0.1, 0.1)]
    front = pareto_front(points)
    assert front == [(0.1, 0.1), (0.3, 0.6), (0.9, 0.9)]
    assert matched_retention(front, 0.2) == pytest.approx(0.35)  # halfway from 0.1 to 0.6
    assert matched_retention(front, 0.3) == pytest.approx(0.6)
    assert matched_retention(front, 1.5) == 0.9  # forgets more than needed everywhere
    assert matched_retention(front, 0.05) is None  # never forgets that much
    assert matched_retention([], 0.3) is None


def test_paired_differences_use_the_student_t_interval():
    from scipy import stats

    from sago_kernels.unlearning.analysis import paired, verdict

    a = {0: 0.5, 1: 0.7, 2: 0.65, 3: None, 4: 0.6}
    b = {0: 0.4, 1: 0.5, 2: 0.6, 3: 0.1, 4: 0.45, 5: 0.2}
    d = paired(a, b)
    diffs = [0.1, 0.2, 0.05, 0.15]
    assert d["seeds"] == [0, 1, 2, 4] and d["differences"] == pytest.approx(diffs)
    mean, sd, n = statistics.fmean(diffs), statistics.stdev(diffs), 4
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert (d["low"], d["high"]) == pytest.approx((mean - half, mean + half))
    assert d["verdict"] == "higher"
    assert paired({0: 0.1, 1: 0.3, 2: 0.2}, {0: 0.2, 1: 0.1, 2: 0.2})["verdict"] == (
        "no difference detected"
    )
    # two seeds, or no spread (equal differences): no interval, so no ordering
    two = paired({0: 0.5, 1: 0.6}, {0: 0.1, 1: 0.11})
    assert two["low"] is None and two["verdict"] == "no difference detected"
    same = paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert same["low"] is None and same["mean"] == pytest.approx(0.1)
    assert verdict(-0.2, -0.1) == "lower" and verdict(None, None) == "no difference detected"


# ------------------------------------------------------------------ the forget-only baseline


def _tiny_setup(*flags: str):
    """(the protocol module, args, data, target model) of a tiny seed-0 run, without
    pre-training (unlearning from random weights is enough to compare two ways of taking the
    same steps)."""
    from sago_kernels.unlearning import benchmark as B
    from sago_kernels.unlearning import protocol as P

    args = B.parse_args([*TINY, *flags])
    data = _tiny_data()
    target = P.tiny_lm(data.tokenizer.vocab_size, 64, args, seed=0).eval().requires_grad_(False)
    return P, args, data, target


def _final_weights(P, args, data, target, spec):
    """Unlearn with a stand-in evaluator that keeps the weights at the budget, counting the
    backward passes through the model."""
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
        run = P.unlearn(target, data, evaluator, {"memorised_forget_tokens": -1}, spec, 0, args)
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
    run, weights, backwards = _final_weights(P, args, data, target, P.RunSpec(loss, P.FORGET_ONLY))
    assert backwards == args.steps, "one backward a step: the forget loss's, nothing else"
    assert run["geometry"] is None and run["method"] == "forget_only"
    monkeypatch.undo()

    # the same steps by hand: the benchmark's batch draws (retain drawn, unused), γ·∇L_f, AdamW
    gamma = losses.SUGGESTED_GAMMA[loss]
    model = copy.deepcopy(target).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    pad_id = data.tokenizer.pad_id
    forget_all = P.pad(data.examples(["forget"]), pad_id, "cpu")
    retain_all = P.pad(data.examples(["retain"]), pad_id, "cpu")
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

    P, args, data, target = _tiny_setup()
    _, alone, backwards_alone = _final_weights(P, args, data, target,
                                               P.RunSpec("ga", "forget_only"))  # fmt: skip
    # α → 0 through the multiple of GA's source weight (1): the sum with no retain term
    run, summed, backwards_sum = _final_weights(
        P, args, data, target, P.RunSpec("ga", "sum", alpha_scale=1e-30)
    )
    assert (backwards_alone, backwards_sum) == (args.steps, 2 * args.steps)
    assert len(run["geometry"]["cos_fr"]) == args.steps
    for name, value in alone.items():
        torch.testing.assert_close(summed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_rmu_runs_at_its_sources_weights_and_pcgrad_per_module():
    from sago_kernels.unlearning import losses
    from sago_kernels.unlearning import protocol as P

    assert P.weights(P.RunSpec("rmu", "sum")) == (1.0, 100.0)  # WMDP's --alpha 100
    assert P.weights(P.RunSpec("simnpo", "sum", 0.5, 0.3)) == (0.0625, 0.3)
    assert losses.FORGET_LOSSES["simnpo"].defaults == {"beta": 4.5, "delta": 0.0}
    assert losses.RMU_STEERING == 20.0
    specs = P.run_specs(["rmu", "ga"], ["forget_only", "pcgrad"], [0.1], [0.5])
    assert not [s for s in specs if s.loss == "rmu" and s.method == "forget_only"]
    assert [(s.gamma_scale, s.alpha_scale) for s in specs if s.loss == "ga"
            and s.method == "pcgrad"] == [(1.0, 1.0), (0.1, 1.0), (1.0, 0.5)]  # fmt: skip
    _, args, data, target = _tiny_setup()
    seen = {}
    real = P.GradientSynthesizer

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    P.GradientSynthesizer = spy
    try:
        _final_weights(P, args, data, target, P.RunSpec("ga", "pcgrad"))
    finally:
        P.GradientSynthesizer = real
    assert seen["granularity"] == "module"


# --------------------------------------------------------------------------- the --paper preset

PAPER_CELLS = {
    ("ga", "forget_only"), ("ga", "sum"), ("ga", "pcgrad"), ("ga", "sago"),
    ("npo", "forget_only"), ("npo", "sum"), ("npo", "pcgrad"), ("npo", "sago"),
    ("simnpo", "forget_only"), ("simnpo", "sum"), ("simnpo", "pcgrad"), ("simnpo", "sago"),
    ("rmu", "sum"), ("rmu", "pcgrad"), ("rmu", "sago"),
    ("npo", "gru_global"), ("rmu", "blur"), ("ga", "pcgrad_global"),
    ("ga", "upgrad"), ("npo", "upgrad"),
}  # fmt: skip
"""Table 1 (GA, NPO, SimNPO alone, + GD, + PCGrad, + SAGO; RMU, + PCGrad, + SAGO), Table 2's
own rows (GRU, BLUR, Global PCGrad, UPGrad × 2) and Table 3 (GA + GD: Table 1's), by hand."""


def test_the_paper_preset_runs_exactly_the_tables_cells_over_the_grid():
    from sago_kernels.unlearning import benchmark as B

    args = B.parse_args(["--paper"])
    cells = {(s.loss, s.method) for s in args.runs}
    assert cells == PAPER_CELLS
    grid = {(s.gamma_scale, s.alpha_scale) for s in args.runs if s.method != "forget_only"}
    assert (1.0, 1.0) in grid and len(grid) == 1 + len(args.gammas) + len(args.alphas)
    assert all(g <= 1 and a <= 1 for g, a in grid)
    assert len(args.seeds) >= 8 and args.jobs == 2
    for key, value in B.PAPER.items():
        assert getattr(args, key) == value
    args = B.parse_args(["--paper", "--seeds", "4", "--width", "64", "--steps", "7"])
    assert (args.seeds, args.width, args.steps) == ([4], 64, 7)
    assert {(s.loss, s.method) for s in args.runs} == PAPER_CELLS


# --------------------------------------------------------------------------- NPO's reference


@pytest.mark.parametrize("accumulate", [1, 2])
def test_npo_reads_its_reference_once_per_step_and_seed_with_the_same_results(
    accumulate, monkeypatch
):
    """The runs of one (seed, loss) share NPO's reference log-probabilities by (step, row):
    the seed's whole record (every metric, curve, cosine and per-example value) is bitwise the
    one of the reference model run inside every step, and the reference forwards fall from one
    per step and run to one per step."""
    import torch

    from sago_kernels.unlearning import benchmark as B
    from sago_kernels.unlearning import losses as L
    from sago_kernels.unlearning import protocol as P

    flags = [*TINY, "--seeds", "0", "--losses", "npo", "--methods", "forget_only", "sago",
             "--pretrain-epochs", "3", "--grad-accum", str(accumulate), "--no-progress",
             "--backend", "reference"]  # fmt: skip (not Triton's interpreter: seconds)
    args = B.parse_args(flags)
    counts = {"in the step": 0, "cached": 0}

    def counting(name, original):
        def run(reference, forward):
            counts[name] += 1
            return original(reference, forward)

        return run

    monkeypatch.setattr(L, "run_reference", counting("in the step", L.run_reference))
    monkeypatch.setattr(P, "run_reference", counting("cached", P.run_reference))
    records = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # one, as the command line runs it (not spin-waiting)
    try:
        seeds = {cached: (dict(counts), B.run_seed(args, 0, bars=False, cache_references=cached),
                          dict(counts)) for cached in (False, True)}  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for cached, (before, seed, after) in seeds.items():
        seed.pop("timings")
        records[cached] = json.dumps(seed, sort_keys=True)
        made = {k: after[k] - before[k] for k in counts}
        runs = len(args.runs)
        assert runs == 4  # forget_only, and sago at three grid points
        if cached:
            assert made == {"in the step": 0, "cached": args.steps * accumulate}
        else:
            assert made == {"in the step": runs * args.steps * accumulate, "cached": 0}
    assert records[True] == records[False]
    assert '"early_stop": {' in records[True]  # the comparison covers the early stop's curve


def test_step_references_refuse_another_batch_for_the_same_step():
    import torch

    from sago_kernels.unlearning import protocol as P

    class Lookup(torch.nn.Module):  # logits: one row per token
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(5, 5)

        def forward(self, input_ids, attention_mask=None):
            return self.table(input_ids)

    model = Lookup()
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])}
    cache = P.StepReferences()
    ref, (indexed,) = cache.reference("npo", 1, [torch.tensor([4])], [batch], model)
    assert indexed["index"].tolist() == [0] and cache.forwards == 1
    again, _ = cache.reference("npo", 1, [torch.tensor([4])], [batch], model)
    assert again is ref and cache.forwards == 1
    with pytest.raises(RuntimeError, match="drew other forget rows"):
        cache.reference("npo", 1, [torch.tensor([2])], [batch], model)


# --------------------------------------------------------------------------- repeatability


def test_the_same_command_twice_gives_the_same_json_bit_for_bit(tmp_path):
    """The default (portable) numerics re-execute the command with MKL's reproducible mode and
    ATen at AVX2; two runs into one folder write identical bytes; two processes (--jobs 2) give
    the runs one process gives."""
    flags = [*TINY, "--out", str(tmp_path / "a")]
    first = _run(*flags)
    assert first.returncode == 0, first.stderr[-3000:]
    files = {n: (tmp_path / "a" / n).read_bytes() for n in ("results.json", "per_example.json")}
    again = _run(*flags)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, data in files.items():
        assert (tmp_path / "a" / name).read_bytes() == data, name
    results = json.loads(files["results.json"])
    assert results["meta"]["numerics"]["portable"] is True
    assert results["meta"]["numerics"]["MKL_CBWR"] == "COMPATIBLE"
    parallel = _run(*[f if f != "1" or flags[i - 1] != "--jobs" else "2"
                      for i, f in enumerate(flags)][:-1], str(tmp_path / "b"))  # fmt: skip
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    other = json.loads((tmp_path / "b" / "results.json").read_text())
    assert other["args"]["jobs"] == 2
    for key in ("seeds", "runs", "analysis"):
        assert other[key] == results[key], key


# --------------------------------------------------------------------------- progress output


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_in_a_log(monkeypatch):
    import io

    from sago_kernels.unlearning import progress as P

    log = io.StringIO()
    now = [0.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    with P.Progress(5, "runs", stream=log, every=30) as p:
        for i in range(5):
            now[0] += 20.0  # 20 s a run
            p.update(note=f"run {i}" if i != 3 else "")
    lines = log.getvalue().splitlines()
    # a line at most every 30 s and one at the end, each naming the last thing done
    assert lines == ["runs: 2/5, 40s, ~1m00s left (run 1)", "runs: 4/5, 1m20s, ~20s left (run 2)",
                     "runs: 5/5, 1m40s (run 4)"]  # fmt: skip
    assert "\r" not in log.getvalue()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with P.Progress(3, "runs", stream=screen) as p:
        assert p.bar is not None
        for _ in range(3):
            p.update()
    assert "\r" in screen.getvalue() and "3/3" in screen.getvalue()
    quiet = io.StringIO()
    with P.Progress(3, "runs", stream=quiet, enabled=False) as p:
        p.update(3)
    assert quiet.getvalue() == ""


def test_a_spread_is_printed_in_its_means_format():
    """``0.283 ± 0.000``, not ``0.283 ± 0.0e+00`` (forget quality's small-value format is
    chosen by the mean), and a missing value is ``n/a``."""
    from sago_kernels.unlearning.tables import NOT_AVAILABLE, mean_pm

    assert mean_pm(0.283, 0.0, "forget_quality") == "0.283 ± 0.000"
    assert mean_pm(0.003, 0.001, "forget_quality") == "3.0e-03 ± 1.0e-03"
    assert mean_pm(12.34, 1.0, "privleak") == "12.3 ± 1.0"
    assert mean_pm(None, None) == NOT_AVAILABLE


def test_findings_state_only_orderings_whose_interval_excludes_zero():
    """A finding is generated for each 'higher'/'lower' verdict and none for 'no difference
    detected', which are counted in one closing line."""
    from sago_kernels.unlearning.tables import findings

    def diff(verdict, mean, low, high):
        return {"verdict": verdict, "mean": mean, "low": low, "high": high, "n": 4}

    undecided = diff("no difference detected", 0.01, -0.02, 0.04)
    analysis = {"fronts": [{"x": "forget_probe_rouge", "y": "model_utility", "losses": {"npo": {
        "differences": {"gd": {"sago - pcgrad": diff("higher", 0.024, 0.012, 0.035),
                               "pcgrad - sum": undecided},
                        "retain_only": {"sago - sum": undecided}}}}}],
        "geometry": {"differences": {"sago - sum": {"cos_out_f": diff("lower", -0.3, -0.5, -0.2),
                                                   "cos_fr": undecided}}}}  # fmt: skip
    lines = findings(analysis)
    assert lines[0].startswith("- NPO, model_utility at GD's forgetting (forget_probe_rouge): "
                               "SAGO higher than PCGrad (+0.024 [0.012, 0.035], 4 seeds)")
    assert lines[1].startswith("- Table 3, Comb–Forget cosine: SAGO lower than GD")
    assert lines[2].startswith("- No difference detected in the other 3 comparisons")
    assert len(lines) == 3
