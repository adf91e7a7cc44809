"""Real data and checkpoints (issue 26), built here: a tiny Llama saved with ``save_pretrained``, a
word-level tokenizer built with ``tokenizers`` and saved as a ``PreTrainedTokenizerFast`` (with a
chat template), TOFU- and WMDP-format folders written by the tests. The contract between the
built-in synthetic path and ``--export-data``/``--data DIR``; given models unlearned, evaluated,
saved, reloaded and scored again to the same numbers; refusals (offline, missing files/fields)
in one line with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("datasets")
pytest.importorskip("tokenizers")
pytest.importorskip("faker")
pytest.importorskip("peft")

import torch  # noqa: E402

from sago_kernels.unlearning import checkpoints as C  # noqa: E402
from sago_kernels.unlearning import metrics as M  # noqa: E402
from sago_kernels.unlearning.export import MANIFEST, TOFU_FILES, export_data  # noqa: E402
from sago_kernels.unlearning.sources import (  # noqa: E402
    MultipleChoice,
    PlainTemplate,
    encode_choices,
)
from sago_kernels.unlearning.synthetic import synthetic_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seeds", "0", "--authors", "10", "--qa-per-author", "2", "--world-facts", "8",
        "--real-authors", "6", "--neighbours", "1", "--eval-retain", "8", "--width", "32",
        "--gammas", "0.3", "--alphas", "0.3", "--no-progress", "--no-plots"]  # fmt: skip
GRID = ["--gammas", "0.3", "--alphas", "0.3"]
CHAT = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}")  # fmt: skip
MC_WORDS = ("The following are multiple choice questions (with answers) about cybersecurity "
            "geography biology. A B C D Answer: system user assistant : You are a helpful "
            "assistant.")  # fmt: skip


def _run(*flags: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The command line in a subprocess, with this process's CPU numerics (``--numerics
    native``: no re-execution with the portable ones), so its models score the same here."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sago_kernels.unlearning.benchmark", *flags, "--numerics",
         "native"],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


def _strip(obj):
    """A results JSON without what names the run rather than its results (the command, the
    flags, where the data was read from)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("meta", "args", "source")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _default_run(results: dict, per_example: dict | None = None, method: str = "sago"):
    """The run at the sources' weights of ``method`` (and its per-example values)."""
    for i, run in enumerate(results["runs"]):
        if run["method"] == method and run["gamma_scale"] == run["alpha_scale"] == 1.0:
            return run, (per_example["runs"][i] if per_example else None)
    raise AssertionError(f"no {method} run at the sources' weights")


def _reference(out: Path, results: dict) -> dict:
    """The retain-only model's evaluation with its per-example values (per_example.json)."""
    per_example = json.loads((out / "per_example.json").read_text())
    return {**results["seeds"][0]["retain_model"],
            "per_example": per_example["seeds"][0]["retain_model"]}


def _score(evaluator, model, reference) -> dict:
    """The evaluation with one thread, as the runs have it (--threads 1): the same sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluator(model, reference)
    finally:
        torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------- built here


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's seed-0 corpus exported, a TOFU folder, a WMDP folder, and two tiny
    Llamas (target, retain-only) with a word-level chat tokenizer, all saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("real")
    data = synthetic_data(seed=0, authors=10, forget_percent=10, qa_per_author=2,
                          world_facts=8, real_authors=6, neighbours_per_author=1,
                          eval_retain=8)  # fmt: skip
    export_data(data, root / "export", forget_percent=10)
    # TOFU's folder: TOFU's file names only (no manifest, none of the synthetic world's own)
    tofu = root / "tofu"
    tofu.mkdir()
    for f in (root / "export").glob("*.json"):
        if not f.name.startswith("sago_"):
            (tofu / f.name).write_text(f.read_text())
    # WMDP's folder: corpora of plain passages, questions with four options
    wmdp = root / "wmdp"
    wmdp.mkdir()
    _write(wmdp / "cyber-forget-corpus.jsonl",
           [{"text": f"{q.question} {q.answer}"} for q in data.sets["forget"]])  # fmt: skip
    _write(wmdp / "cyber-retain-corpus.jsonl",
           [{"text": f"{q.question} {q.answer}"} for q in data.sets["retain"]])  # fmt: skip
    _write(wmdp / "wmdp-cyber.jsonl",
           [{"question": q.question, "choices": [q.answer, *q.perturbed_answers[:3]],
             "answer": 0} for q in data.sets["world_facts"]])  # fmt: skip
    _write(wmdp / "mmlu.jsonl",
           [{"question": q.question, "subject": "geography",
             "choices": [*q.perturbed_answers[:3], q.answer], "answer": 3}
            for q in data.sets["real_authors"]])  # fmt: skip
    # the tokenizer: the corpus's words and the prompts', lower case, in a WordLevel model
    from sago_kernels.unlearning.corpus import WordTokenizer

    words = WordTokenizer.from_texts([MC_WORDS, *data.tokenizer.vocab[3:]]).vocab[3:]
    hf = C.word_tokenizer_to_hf(words, chat_template=CHAT)
    models = {}
    for name, seed in (("target", 0), ("retain", 1)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, bos_token_id=hf.bos_token_id,
                          eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)  # fmt: skip
        LlamaForCausalLM(cfg).save_pretrained(root / name)
        hf.save_pretrained(root / name)
        models[name] = root / name
    return {"root": root, "export": root / "export", "tofu": tofu, "wmdp": wmdp, **models}


# --------------------------------------------------------------------------- the contract


def test_export_then_data_dir_gives_the_built_in_results_bit_for_bit(world, tmp_path):
    """--export-data writes every role; --data DIR on it, same flags, gives the same JSON."""
    from sago_kernels.unlearning import benchmark

    flags = [*TINY, "--losses", "npo", "--methods", "sago", "--steps", "2",
             "--pretrain-epochs", "5"]  # fmt: skip
    benchmark.main([*flags, "--export-data", str(tmp_path / "export")])  # writes, trains nothing
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == sorted(p.name for p in world["export"].iterdir())
    tofu_names = {"forget10.json", "forget10_perturbed.json", "retain90.json", "holdout10.json",
                  "retain_perturbed.json", "real_authors_perturbed.json",
                  "world_facts_perturbed.json"}  # fmt: skip
    assert tofu_names < set(files) and {MANIFEST, "sago_vocab.json"} < set(files)
    manifest = json.loads((tmp_path / "export" / MANIFEST).read_text())
    data = synthetic_data(seed=0, authors=10, forget_percent=10, qa_per_author=2,
                          world_facts=8, real_authors=6, neighbours_per_author=1,
                          eval_retain=8)  # fmt: skip
    assert set(manifest["files"]) == set(data.sets)  # every set, in every role
    own = {f"sago_{n}.json" for n in set(data.sets) - set(TOFU_FILES)
           if data.sets[n]}  # the rest by name (an empty set has no file)
    assert set(files) == tofu_names | own | {MANIFEST, "sago_vocab.json"}
    assert manifest["target_train"] == list(data.target_train)
    assert manifest["evaluation"] == data.evaluation
    assert manifest["kinds"]["forget_probes"] == "probe"
    assert manifest["kinds"]["retention_choice"] == "choice"
    builtin = _run(*flags, "--out", str(tmp_path / "a"), "--save-model", str(tmp_path / "m"))
    folder = _run(*flags, "--data", str(tmp_path / "export"), "--out", str(tmp_path / "b"))
    assert builtin.returncode == 0 and folder.returncode == 0, folder.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(a["runs"]) == 3 and a["runs"][0]["fixed"]["metrics"]["forget_probe_rouge"] >= 0
    assert a["seeds"][0]["data"]["source"] == "synthetic"
    assert _strip(a) == _strip(b)
    assert (tmp_path / "a" / "per_example.json").read_text() == (
        tmp_path / "b" / "per_example.json"
    ).read_text()
    tables = [(tmp_path / d / "tables.md").read_text().split("\n", 1) for d in "ab"]
    assert tables[0][0] != tables[1][0] and tables[0][1] == tables[1][1]  # but the command
    # the built-in run's model, saved with its word tokenizer as a PreTrainedTokenizerFast,
    # reloaded and scored on the export: the run's own numbers
    from transformers import AutoModelForCausalLM

    from sago_kernels.unlearning.evaluation import Evaluator
    from sago_kernels.unlearning.export import exported_data

    saved = tmp_path / "m" / "npo-sago-seed0"
    tok = C.load_tokenizer("--model", str(saved))
    data = exported_data(str(tmp_path / "export"), tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(saved).eval()
    again = _score(Evaluator(data, batch_size=64), model, _reference(tmp_path / "a", a))
    assert again["metrics"] == _default_run(a)[0]["fixed"]["metrics"]


# --------------------------------------------------------------------------- given checkpoints


def test_tofu_folder_with_given_models_unlearns_saves_and_rescores_the_same(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from sago_kernels.unlearning.evaluation import Evaluator
    from sago_kernels.unlearning.tofu import tofu_data

    out, saved = tmp_path / "out", tmp_path / "models"
    done = _run("--data", str(world["tofu"]), "--forget-split", "forget10",
                "--model", str(world["target"]), "--retain-model", str(world["retain"]),
                "--losses", "npo", "--methods", "sago", "--steps", "2", "--seeds", "0",
                *GRID, "--no-progress", "--no-plots", "--out", str(out),
                "--save-model", str(saved))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "given model" in done.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"][0]["target_training"] is None
    run, values = _default_run(result, json.loads((out / "per_example.json").read_text()))
    fixed = run["fixed"]["metrics"]
    assert isinstance(fixed["forget_quality"], float) and isinstance(fixed["privleak"], float)
    assert run["early_stop"] is not None and len(run["curve"]) == 3
    # TOFU's files have no probes or choices: absent from the metrics, n/a in no column
    assert "forget_probe_rouge" not in fixed and "forget_choice_accuracy" not in fixed
    assert "model_utility" in done.stdout and "forget_probe_rouge" not in done.stdout
    # matched forgetting on TOFU's own axes: forget ROUGE against model utility
    assert [(f["x"], f["y"]) for f in result["analysis"]["fronts"]] == [
        ("forget_rouge", "model_utility")
    ]
    # reload the saved model and tokenizer; score again: the same numbers
    folder = saved / "npo-sago-seed0"
    tok = C.load_tokenizer("--model", str(folder))
    assert isinstance(C.template_for(tok, "auto", C.SYSTEM_PROMPT, C.DATE_STRING), C.ChatTemplate)
    data = tofu_data(str(world["tofu"]), "forget10", tok,
                     C.template_for(tok, "auto", C.SYSTEM_PROMPT, C.DATE_STRING))  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    again = _score(Evaluator(data, batch_size=64), model, _reference(out, result))
    assert again["metrics"] == fixed
    assert again["per_example"] == values["fixed"]


def test_without_a_retain_model_fq_and_privleak_are_not_available(world, tmp_path):
    """Also LoRA (NPO's reference: the same model, adapters off), one buffer, bfloat16 and
    gradient checkpointing on the given model."""
    out = tmp_path / "out"
    done = _run("--data", str(world["tofu"]), "--model", str(world["target"]),
                "--template", "plain", "--lora-rank", "2", "--buffers", "1", "--dtype", "bfloat16",
                "--gradient-checkpointing", "--losses", "npo", "--methods", "sago", "--steps", "2",
                "--seeds", "0", *GRID, "--no-progress", "--no-plots", "--out", str(out),
                "--save-model", str(tmp_path / "models"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not available" in done.stdout and "n/a" in done.stdout
    result = json.loads((out / "results.json").read_text())
    run, _ = _default_run(result)
    assert run["early_stop"] is None and run["curve"] is None  # no reference: no early stop
    metrics = run["fixed"]["metrics"]
    assert metrics["forget_quality"] is None and metrics["privleak"] is None
    assert isinstance(metrics["model_utility"], float)
    summary = [e for e in result["analysis"]["fixed"] if e["method"] == "sago"]
    assert summary and all(e["forget_quality"] is None for e in summary)
    assert result["analysis"]["early_stop"] == []
    assert result["analysis"]["reference_models"]["retain_model"] == {}
    # the merged LoRA model loads as a plain checkpoint (bfloat16, as it ran) and differs from
    # the target in the adapted linear maps only
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "npo-sago-seed0")
    target = AutoModelForCausalLM.from_pretrained(world["target"], dtype=torch.bfloat16)
    assert saved.dtype == torch.bfloat16
    names = [n for n, _ in target.named_parameters()]
    assert names == [n for n, _ in saved.named_parameters()]
    changed = [n for n, p in saved.named_parameters()
               if not torch.equal(p, dict(target.named_parameters())[n])]  # fmt: skip
    assert changed and all("proj" in n for n in changed)  # the adapted linear maps only


def test_wmdp_folder_scores_the_options_log_likelihood(world, tmp_path):
    out = tmp_path / "out"
    done = _run("--data", "wmdp-cyber", "--data-dir", str(world["wmdp"]), "--model",
                str(world["target"]), "--losses", "rmu", "--methods", "sum", "--steps", "2",
                "--grad-accum", "2", "--batch", "2", "--max-length", "40", "--eval-limit", "6",
                "--seeds", "0", *GRID, "--no-progress", "--no-plots",
                "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["seeds"][0]["data"]["sizes"]["wmdp"] == 6
    run, values = _default_run(result, json.loads((out / "per_example.json").read_text()), "sum")
    metrics = run["fixed"]["metrics"]
    for role in ("forget_choice", "retention_choice"):
        scores = values["fixed"][f"{role}_logprobs"]
        assert len(scores) == 6 and all(len(s) == 4 for s in scores)
        answers = [0] * 6 if role == "forget_choice" else [3] * 6
        want = sum(max(range(len(s)), key=s.__getitem__) == a for s, a in zip(scores, answers))
        assert metrics[f"{role}_accuracy"] == want / 6
    assert "forget_quality" not in metrics  # no QA sets: no TOFU metrics
    assert "forget_choice_accuracy" in done.stdout  # the JSON's name, in the tables too
    assert result["analysis"]["fronts"][0]["x"] == "forget_choice_accuracy"


# --------------------------------------------------------------------------- refusals


def test_offline_hub_data_fails_at_once_in_one_line(world):
    start = time.perf_counter()
    done = _run("--data", "tofu", "--model", str(world["target"]), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "--data tofu" in lines[0] and "--data DIR" in lines[0], lines[0]
    assert "seed 0" not in done.stdout
    assert time.perf_counter() - start < 60  # the libraries' retries alone take ~30-60 s


def test_no_network_is_found_by_the_probe_and_a_hub_model_id_fails_at_once(world):
    """Without HF_HUB_OFFLINE: the hub's endpoint does not answer (here a closed local port),
    so a hub model id fails at once, one line naming the folder form."""
    start = time.perf_counter()
    done = _run("--data", str(world["tofu"]), "--model", "nobody/no-such-model-here",
                env={"HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "",
                     "HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model nobody/no-such-model-here" in lines[0], done.stderr
    assert "save_pretrained folder" in lines[0] and "Traceback" not in done.stderr
    assert time.perf_counter() - start < 60


def test_offline_wmdp_from_the_hub_names_the_folder_form(world, tmp_path, monkeypatch, capsys):
    from sago_kernels.unlearning import benchmark

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "_offline", None)
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--data", "wmdp-cyber", "--model", str(world["target"]),
                        "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data wmdp-cyber" in err[0] and "--data-dir DIR" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, named", [
    ("drop_file", "holdout10.json"),
    ("drop_field", "perturbed_answer"),
])
def test_a_tofu_folder_lacking_a_file_or_field_is_refused_naming_it(world, tmp_path, capsys,
                                                                     damage, named):  # fmt: skip
    from sago_kernels.unlearning import benchmark

    folder = tmp_path / "tofu"
    folder.mkdir()
    for f in world["tofu"].glob("*.json"):
        (folder / f.name).write_text(f.read_text())
    if damage == "drop_file":
        (folder / "holdout10.json").unlink()
    else:
        rows = _rows(folder / "retain_perturbed.json")
        _write(folder / "retain_perturbed.json", [{k: v for k, v in r.items()
                                                   if k != "perturbed_answer"} for r in rows])
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--data", str(folder), "--model", str(world["target"]), "--no-progress",
                        "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--data", "tofu"], "--data tofu needs --model"),
    (["--model", "x/y"], "--model with --data synthetic"),
    (["--buffers", "1", "--grad-accum", "2"], "--buffers 1 combines inside"),
    (["--data", "/no/such/folder"], "no such folder"),
    (["--paper", "--data", "tofu", "--model", "x/y"], "add --retain-model"),
    (["--export-data", "/tmp/x", "--seeds", "0", "1"], "--export-data writes one seed"),
])  # fmt: skip
def test_bad_data_flags_are_refused_before_anything_is_read(flags, message, capsys):
    from sago_kernels.unlearning import benchmark

    with pytest.raises(SystemExit) as exit_:
        benchmark.parse_args(flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- the pieces


def test_choices_are_scored_as_the_harness_lays_them_out(world):
    tok = C.load_tokenizer("--model", str(world["target"]))
    item = MultipleChoice(question=" Where is Paris? ", choices=("france", "peru"), answer=0,
                          subject="geography", style="lettered")  # fmt: skip
    examples = encode_choices(tok, C.ChatTemplate(), item)
    assert examples == encode_choices(tok, PlainTemplate(), item)  # the harness's: no chat
    prompt = ("The following are multiple choice questions (with answers) about geography.\n\n"
              "Where is Paris?\nA. france\nB. peru\nAnswer:")  # fmt: skip
    for letter, ex in zip("ab", examples):
        scored = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100]
        assert tok.decode(scored) == letter
        assert ex["input_ids"][0] == tok.bos_id
        assert ex["input_ids"][1:-1] == tok.encode(prompt)


def test_the_shared_prompt_fast_path_equals_scoring_each_option(world):
    from transformers import AutoModelForCausalLM

    tok = C.load_tokenizer("--model", str(world["target"]))
    model = AutoModelForCausalLM.from_pretrained(world["target"]).eval()
    items = [MultipleChoice(question=f"Where is {c}?", choices=("france", "peru", "chile"),
                            answer=i % 3, subject="geography", style="lettered")
             for i, c in enumerate(("paris", "lima", "santiago", "tokyo"))]  # fmt: skip
    options = [encode_choices(tok, PlainTemplate(), it) for it in items]
    fast = M.choice_logprobs(model, options, batch_size=3)
    slow = [M.answer_logprobs(model, opts)[0] for opts in options]
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, rtol=0, atol=1e-5)


def test_lora_is_saved_merged_as_peft_merges_it(world, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(world["target"])
    before = {n: p.clone() for n, p in base.state_dict().items()}
    peft_model = C.attach_lora(base, 2)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    merged = C.merged_state_dict(peft_model)
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for key in reference:
        assert torch.equal(merged[key], reference[key]), key
    C.detach_lora(peft_model)
    assert all(torch.equal(before[n], p) for n, p in base.state_dict().items())
