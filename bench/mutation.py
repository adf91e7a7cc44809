"""Mutation testing of the core (issue 24): which small bugs do the fast tests catch?

mutmut (a maintained tool: ``pip install mutmut==3.8.1``; a development tool, not a requirement
of the package or of its tests) plants one small change at a time in a module (an operator, a
comparison, a constant, a call argument) and runs that module's fast tests against it; a
mutant the tests do not fail on *survived*. Each module runs on a scratch copy of the package and
the tests (the repository's top level stays as it is: mutmut's config, ``setup.cfg``, is
written there), one module after the other (``--workers`` mutants at a time, niced):

    pip install mutmut==3.8.1               # into the environment that runs the tests
    nice -n 10 python bench/mutation.py run  # every module of MODULES; or name some
    python bench/mutation.py report          # the bench/RESULTS.md section, from the JSON

``run`` writes ``bench/results/mutation/results.json`` (commit, command, machine, versions,
load, and per module: the counts, wall time, and every survivor with its diff); ``report``
rewrites the section of ``bench/RESULTS.md`` between its markers from that file. A module's
survivors are each either killed by a test or listed in :data:`EQUIVALENT` with why no test
can kill them; the score is killed / (mutants − equivalent).

Settings that differ from mutmut's and pytest's defaults, and why:
- Every mutant runs the module's whole test selection (``-x``: it stops at the first
  failure), not only the tests mutmut saw calling the mutated function. The method registry
  runs its factories at import time (``METHODS``, the weightings' closures), before any test,
  so mutmut would credit those functions to no test (or to the first one) and mark their
  mutants "no tests" or let them survive untested. The workers are forked from a server that
  has imported torch, numpy, hypothesis and pytest but not ``sago_kernels``, so each mutant
  imports the package afresh, its own mutant active at import time too.
- Hypothesis runs the ci profile's examples without shrinking a failure (a failing example
  already kills the mutant; shrinking it costs seconds to minutes), and pytest runs without
  plugin autoloading and without the plugins that call ``gc.collect()`` at exit (seconds each
  with torch loaded): :data:`FAST_PYTEST`.
- Error-message text is not mutated (:data:`NOT_MUTATED`): the tests check messages by key
  phrases (``pytest.raises(match=...)``), which mutmut's string mutant ("XX" + text + "XX")
  always still contains. The checks that raise them are mutated like any other code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from mutation_equivalents import EQUIVALENT  # module -> {signature: why it is equivalent}

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "mutation" / "results.json"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"

ON_REFERENCE = "not triton and not native and not compile and not thread and not overflowing"
ONE_WEIGHTING = (
    " and not (fuzz and (upgrad or dualproj or imtl_g or aligned_mtl or cagrad or "
    "nash_mtl or pcgrad_symmetric or config))"
)
"""The fuzz of one Gramian weighting (mgda) where the module is not ``weightings.py``: the
weightings share every line outside ``weightings.py``, and each costs 27 oracle evaluations per
segment."""
"""The reference backend only: the core modules are shared by every backend, and the reference
backend is the fastest to run them through (the others are judged against the oracle by the
full suite); without the ``torch.compile`` and thread-count tests (seconds each, and they test
the custom op and the summation order, not these modules' arithmetic), and without the test
that runs every backend on overflowing dots (it runs the Triton interpreter itself)."""

WEIGHTING_TESTS = [
    "test_weight_dtype_is_float64_except_on_mps",
    "test_gramians_are_of_the_scaled_rows_with_the_off_diagonal_clamped",
    "test_coefficients_scale_the_weights_by_gamma_and_alpha_in_the_dots_dtype",
    "test_a_scaler_flag_turns_every_segments_dots_into_nan",
    "test_affine_segment_takes_the_whole_segments_dots_when_given",
    "test_torchjd_weighting_adapter_names_and_shapes",
    "test_weighting_parameters_at_their_bounds_are_accepted_and_messages_say_the_range",
    "test_bad_weighting_parameters_are_refused_when_the_method_is_made",
    "test_gradvac_refuses_non_finite_or_out_of_range_parameters",
    "test_projections_lie_in_the_dual_cone",
    "test_upgrad_normalises_a_gramian_whose_trace_is_exactly_norm_eps",
    "test_an_uneven_preference_reaches_each_row_as_torchjd_gives_it",
    "test_mgda_is_the_minimum_norm_point_of_the_segment_between_the_rows",
    "test_project_box_solves_its_quadratic_program_on_and_off_the_active_sets_edges",
    "test_imtl_g_is_the_pseudo_inverse_answer_at_its_rank_and_normaliser_cut_offs",
    "test_aligned_mtl_by_eigen_decomposition_in_every_scale_mode",
    "test_config_combination_by_the_unit_rows_pseudo_inverse",
    "test_config_has_equal_cosine_with_both_rows",
    "test_degenerate_gramians_give_finite_weights",
    "test_parameters_reach_the_weighting",
    "test_global_scope_is_one_gramian_over_all_segments",
    "test_a_user_weighting_runs_on_every_backend",
    "test_a_weighting_of_the_wrong_shape_is_refused_before_the_write",
    "test_built_in_methods_list_their_formulas",
    "test_gradvac_weights_follow_torchjd_at_every_scale",
    "test_gradvac_keeps_the_target_of_a_segment_whose_gramian_is_not_finite_only",
    "test_gradvac_state_cosines_may_pass_one_by_rounding_only",
    "test_gradvac_state_is_checkpointed_reset_and_not_poisoned",
    "test_every_backend_agrees_with_torchjd",
    "test_gradvac_follows_torchjd_over_a_run_on_every_backend",
    "test_a_torchjd_weighting_runs_as_it_is",
]
"""``tests/test_weightings.py``'s tests, the fast property checks before the TorchJD parity
(``-x`` stops at the first failure, so the fast ones kill most mutants). TorchJD's Nash-MTL and
CAGrad (convex solvers, seconds each) are left to the independent checks of
``tests/test_exact_cases.py`` in a mutant's run; the full suite runs both."""

ENGINE_TESTS = [
    *(f"tests/test_deepspeed.py::{t}" for t in (
        "test_synthesizer_on_zero_1_2_3_equals_single_process_steps",
        "test_what_hides_or_changes_the_partitions_is_refused_with_the_alternative",
        "test_a_deepspeed_without_the_partitions_where_they_were_read_is_refused",
        "test_a_supported_engine_passes",
    )),
    "tests/test_distributed.py::test_ddp_step_equals_single_process_step[2]",
    "tests/test_distributed.py::test_synthesizer_under_fsdp2_equals_single_process_steps[2]",
]
"""The synthesizer's engine paths (buffer reduction and publication, sharded combines,
DeepSpeed's own gradient storage) are no-ops or unreachable in one process: one DDP, one FSDP2
and the DeepSpeed tests, at two ranks each, last in its selection (~30 s: the survivors of the
fast tests pay for them). Their workers import the mutated package (see ``_mutmut``)."""

MODULES: dict[str, tuple[list[str], str]] = {
    "sago_kernels/reference.py": (
        ["tests/test_exact_cases.py", "tests/test_combine_fuzz.py", "tests/test_gru.py",
         "tests/test_properties.py"],
        ON_REFERENCE + ONE_WEIGHTING,
    ),
    "sago_kernels/weightings.py": (
        [
            "tests/test_exact_cases.py",
            *(f"tests/test_weightings.py::{t}" for t in WEIGHTING_TESTS),
            "tests/test_combine_fuzz.py",
            "tests/test_synthesizer_state.py::"
            "test_gradvac_refuses_a_state_its_constructor_or_a_run_would_not_make",
            "tests/test_synthesizer_state.py::"
            "test_a_gradvac_state_of_another_segment_count_is_refused_at_load_not_at_the_next_step",
        ],
        ON_REFERENCE + " and not (torchjd and (nash_mtl or cagrad))",
    ),
    "sago_kernels/stats.py": (
        ["tests/test_exact_cases.py", "tests/test_combine_fuzz.py", "tests/test_properties.py",
         "tests/test_synthesizer.py"],
        ON_REFERENCE + ONE_WEIGHTING,
    ),
    "sago_kernels/gru.py": (
        ["tests/test_exact_cases.py", "tests/test_gru.py"],
        ON_REFERENCE,
    ),
    "sago_kernels/layout.py": (
        ["tests/test_layout.py", "tests/test_validation.py"],
        ON_REFERENCE + " and not custom_ops",
    ),
    "sago_kernels/methods.py": (
        ["tests/test_exact_cases.py", "tests/test_gru.py", "tests/test_validation.py",
         "tests/test_weightings.py"],
        ON_REFERENCE + ONE_WEIGHTING + " and not torchjd and not custom_ops",
    ),
    "sago_kernels/unlearning/losses.py": (["tests/test_losses.py"], ""),
    "sago_kernels/unlearning/metrics.py": (["tests/test_metrics.py"], ""),
    "sago_kernels/synthesizer.py": (
        ["tests/test_exact_cases.py", "tests/test_one_buffer.py", "tests/test_synthesizer.py",
         "tests/test_synthesizer_misuse.py", "tests/test_synthesizer_state.py",
         "tests/test_scaler.py", *ENGINE_TESTS],
        ON_REFERENCE,
    ),
    "sago_kernels/synthesis/one_buffer.py": (
        ["tests/test_exact_cases.py", "tests/test_one_buffer.py", "tests/test_scaler.py"],
        ON_REFERENCE,
    ),
    "sago_kernels/synthesis/scaler.py": (["tests/test_scaler.py"], ON_REFERENCE),
}  # fmt: skip
"""Module -> (its fast test files, a ``-k`` expression): the one list to edit when modules move.
The synthesizer's contexts are in ``synthesizer.py`` and its one-buffer hooks in
``synthesis/one_buffer.py`` (after the engines split), its loss scaler's link in
``synthesis/scaler.py``; a module or test file missing from the
tree is skipped, and said so."""

NOT_MUTATED = [
    r"^\s*f?\"",  # a line that is a (message) string literal, e.g. an f-string's continuation
    r"^\s*raise \w+\(f?\"",  # raise Error("message ...") on one line
]
"""mutmut's ``do_not_mutate_patterns``: lines of error-message text (module docstring)."""

FAST_PYTEST = ["-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception"]
"""Without the plugins that call ``gc.collect()`` five times at exit (seconds each, with torch
loaded) and with no plugin autoloading (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``; hypothesis runs
without its plugin): each mutant's pytest session costs its tests, not pytest's start-up."""

HYPOTHESIS_PROFILE = """

# Added by bench/mutation.py to its scratch copy: the ci profile without shrinking (a failing
# example already kills the mutant; shrinking it can take minutes).
from hypothesis import Phase  # noqa: E402

settings.register_profile(
    "mutation", parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile("mutation")
"""
"""Appended to the scratch copy's ``tests/conftest.py``: hypothesis without its shrink phase."""

PRELOAD = [
    "torch", "torch._dynamo", "numpy", "scipy.stats", "scipy.optimize", "hypothesis", "pytest",
    "faker", "triton", "transformers", "torchjd.aggregation", "sklearn.metrics",
    "rouge_score.rouge_scorer", "transformers.models.gpt2.modeling_gpt2",
]  # fmt: skip
"""Imported once by the fork server; ``sago_kernels`` deliberately not (module docstring).
The metrics' tests import scikit-learn and build a tiny GPT-2, whose modeling module
``transformers`` imports lazily: 1.3 s and 4.5 s of each mutant's run if not preloaded."""


# --------------------------------------------------------------------------- one module


_RUNNER = r"""
import json, sys
from collections import defaultdict
import mutmut.__main__ as mm
from mutmut.configuration import config
from mutmut.state import state
from mutmut.stats import status_by_exit_code

_collect = mm.collect_or_load_stats

def collect_then_select_everything(*args, **kwargs):
    _collect(*args, **kwargs)
    st = state()
    selection = list(config().pytest_add_cli_args_test_selection)  # in order: fast ones first

    class Everything(defaultdict):
        def get(self, key, default=None):
            return list(selection)

        def __getitem__(self, key):
            return list(selection)

    every = Everything(set)
    every.update(st.tests_by_mangled_function_name)
    st.tests_by_mangled_function_name = every
    total = sum(st.duration_by_test.values())
    for test_file in selection:
        st.duration_by_test[test_file] = total / len(selection)

mm.collect_or_load_stats = collect_then_select_everything
try:
    if sys.argv[2] != "collect":
        mm.cli(["run", "--max-children", sys.argv[2], *sys.argv[3:]], standalone_mode=False)
finally:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.file_utils import walk_mutatable_files
    out = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            status = status_by_exit_code[code]
            entry = {"status": status}
            if status not in ("killed", "timeout", "not checked"):
                entry["diff"] = get_diff_for_mutant(name, path=path)
            out[name] = entry
    json.dump(out, open(sys.argv[1], "w"), indent=1)
"""


def _present(tests: list[str]) -> list[str]:
    """The entries of a test selection whose file is in the tree (an entry may name one test,
    ``file::test``: its file is what must exist)."""
    return [t for t in tests if (ROOT / t.split("::")[0]).exists()]


def _scratch(module: str, tests: list[str], k_expr: str, work: Path) -> Path:
    """A copy of the package and the tests with mutmut's config, mutating ``module`` only."""
    here = work / Path(module).stem
    shutil.rmtree(here, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.egg-info")
    shutil.copytree(ROOT / "sago_kernels", here / "sago_kernels", ignore=ignore)
    shutil.copytree(ROOT / "tests", here / "tests", ignore=ignore)
    (here / "preload.txt").write_text("\n".join(PRELOAD) + "\n")
    with open(here / "tests" / "conftest.py", "a") as conftest:  # the scratch copy's only
        conftest.write(HYPOTHESIS_PROFILE)
    _write_config(here, module, tests, k_expr)
    return here


def _write_config(here: Path, module: str, tests: list[str], k_expr: str) -> None:
    """mutmut's config in ``here``: mutate ``module`` only, test with ``tests`` and ``k_expr``."""
    pytest_args = [*FAST_PYTEST] + (["-k", k_expr] if k_expr else [])
    lines = [
        "[mutmut]",
        "source_paths = sago_kernels/",
        f"only_mutate = {module}",
        "pytest_add_cli_args_test_selection =",
        *(f"    {t}" for t in tests),
        "pytest_add_cli_args =",
        *(f"    {a}" for a in pytest_args),
        "do_not_mutate_patterns =",
        *(f"    {p}" for p in NOT_MUTATED),
        "process_isolation = forkserver",
        "forkserver_warmup = import",
        "preload_modules_file = preload.txt",
        "timeout_constant = 2.0",
        "timeout_multiplier = 2.0",
        "use_git_change_detection = false",
    ]
    (here / "setup.cfg").write_text("\n".join(lines) + "\n")


def _signature(name: str, diff: str) -> str:
    """A mutant's name without mutmut's number: the function, the lines removed and added
    (stable across runs while the function's mutated line stays as it is)."""
    function = re.sub(r"__mutmut_\d+$", "", name.rpartition(".")[2])
    function = function.removeprefix("x_").replace("xǁ", "").replace("ǁ", ".")
    body = [
        line for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]  # fmt: skip
    removed = " / ".join(x[1:].strip() for x in body if x.startswith("-"))
    added = " / ".join(x[1:].strip() for x in body if x.startswith("+"))
    return f"{function}: {removed} -> {added}"


def signature(name: str, diff: str) -> str:
    return _signature(name, diff)


def _mutmut(here: Path, workers: int, names: list[str]) -> tuple[dict, float, float, int]:
    """Run mutmut in ``here`` (all mutants, or ``names``): ``(status and diff by mutant, wall
    seconds, CPU seconds, exit code)``."""
    raw = here / "mutants.json"
    raw.unlink(missing_ok=True)
    start, cpu_before = time.monotonic(), os.times()
    # the multi-process tests' workers are new interpreters: PYTHONPATH gives them the mutated
    # package (mutmut's trampolines read the mutant's name from the inherited environment).
    # Only once mutmut has written it: a first run's stats collection found no test at all with
    # the folder on the path before it existed, so a first run's workers import the original
    # package and the engine-only mutants are left to the survivors' rerun.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if (here / "mutants" / "sago_kernels").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (str(here / "mutants"), os.environ.get("PYTHONPATH")) if x
        )
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(raw), str(workers), *names],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
    )
    wall, cpu_after = time.monotonic() - start, os.times()
    cpu = (cpu_after.children_user + cpu_after.children_system) - (
        cpu_before.children_user + cpu_before.children_system
    )
    (here / "mutmut.log").write_text(proc.stdout[-200_000:] + "\n" + proc.stderr[-200_000:])
    if not raw.exists():
        raise RuntimeError(
            f"mutmut failed in {here} (exit {proc.returncode}): {proc.stderr[-3000:]}"
        )
    return json.loads(raw.read_text()), wall, cpu, proc.returncode


COLLECTION_ERROR = "check was interrupted by user"
"""mutmut's name for pytest's exit code 2, which pytest gives for Ctrl-C and also for an error
while collecting the tests. No run here is stopped with Ctrl-C (a run stopped by hand is recorded
with ``--collect``, the mutants it did not reach as "not checked"), so here it means the mutant
broke a test module's import (``tests/test_validation.py`` builds a layout at import time): the
tests fail on it. Recorded as "collection error" and counted as killed."""


def _summary(module: str, mutants: dict) -> dict:
    """Counts, score and survivors (with :data:`EQUIVALENT`'s reasons) of one module."""
    known = EQUIVALENT.get(module, {})
    counts: dict[str, int] = {}
    survivors = []
    for name, entry in sorted(mutants.items()):
        status = entry["status"]
        if status == COLLECTION_ERROR:
            status = "collection error"
        if status not in ("killed", "timeout", "collection error"):
            sig = signature(name, entry.get("diff", ""))
            if status == "survived" and sig in known:
                status = "equivalent"
            survivors.append({"name": name, "status": status, "signature": sig,
                              "why": known.get(sig), "diff": entry.get("diff", "")})  # fmt: skip
        counts[status] = counts.get(status, 0) + 1
    total = len(mutants)
    equivalent = counts.get("equivalent", 0)
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("collection error", 0)
    checked = total - counts.get("not checked", 0)
    survivors = [s for s in survivors if s["status"] != "not checked"]
    return {
        "mutants": total,
        "checked": checked,
        "counts": counts,
        "killed": killed,
        "equivalent": equivalent,
        "score": killed / (checked - equivalent) if checked > equivalent else 1.0,
        "survivors": survivors,
        "status": {name: entry["status"] for name, entry in mutants.items()},
    }


def run_module(module: str, work: Path, workers: int) -> dict:
    """Every mutant of ``module``, on a fresh scratch copy."""
    tests, k_expr = MODULES[module]
    tests = _present(tests)
    here = _scratch(module, tests, k_expr, work)
    load_before = os.getloadavg()
    mutants, wall, cpu, code = _mutmut(here, workers, [])
    return {
        "module": module,
        "tests": tests,
        "k": k_expr,
        **_summary(module, mutants),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "exit_code": code,
    }


def collect_stopped(module: str, work: Path) -> dict:
    """The results of a run of ``module`` that was stopped by hand (its scratch copy holds what
    mutmut tested): recorded with the mutants it did not reach as "not checked"."""
    tests, k_expr = MODULES[module]
    here = work / Path(module).stem
    started = (here / "setup.cfg").stat().st_mtime
    mutants, _, cpu, code = _mutmut(here, 1, ["collect"])
    return {
        "module": module,
        "tests": _present(tests),
        "k": k_expr,
        **_summary(module, mutants),
        "wall_s": round(time.time() - started, 1),
        "cpu_s": None,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "exit_code": "stopped by hand",
    }


def resume(module: str, work: Path, workers: int, previous: dict) -> dict:
    """The mutants a stopped run of ``module`` did not reach, in its scratch copy (with the tests
    as they were last copied there); the rest keep their results."""
    here = work / Path(module).stem
    load_before = os.getloadavg()
    mutants, wall, cpu, code = _mutmut(here, workers, [])
    result = {**previous, **_summary(module, mutants), "exit_code": code}
    result["resumed"] = [
        *previous.get("resumed", []),
        {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
         "load_before": [round(x, 2) for x in load_before]},
    ]  # fmt: skip
    return result


def rerun_survivors(module: str, work: Path, workers: int, previous: dict) -> dict:
    """The survivors of the last run of ``module`` again, against the tests as they are now
    (copied into its scratch copy) and the rest of the package as it is now (the module itself
    must be the one its mutants were made from): the tests written to kill them."""
    here = work / Path(module).stem
    if (ROOT / module).read_bytes() != (here / module).read_bytes():
        raise SystemExit(
            f"{module} changed since its scratch copy was made: its mutants are of the old code. "
            f"Run it afresh: python bench/mutation.py run {module}"
        )
    # the other modules as they are now, under the mutated one: today's tests may test them
    for source in (ROOT / "sago_kernels").rglob("*"):
        relative = source.relative_to(ROOT)
        if not source.is_file() or "__pycache__" in source.parts or str(relative) == module:
            continue
        for place in (here, here / "mutants"):
            (place / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, place / relative)
    for target in (here / "tests", here / "mutants" / "tests"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(ROOT / "tests", target, ignore=shutil.ignore_patterns("__pycache__"))
        with open(target / "conftest.py", "a") as conftest:
            conftest.write(HYPOTHESIS_PROFILE)
    # mutmut runs each mutant against its config's test selection, as far as its coverage stats
    # map those tests to the mutated function; both are the first run's, which knew only the
    # tests of then: write the selection of today and collect the stats again
    tests, k_expr = MODULES[module]
    for place in (here, here / "mutants"):
        _write_config(place, module, _present(tests), k_expr)
    (here / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    known = EQUIVALENT.get(module, {})
    names = [
        s["name"] for s in previous["survivors"]
        if s["status"] == "survived" and s["signature"] not in known
    ]  # fmt: skip
    load_before = os.getloadavg()
    mutants, wall, cpu, code = _mutmut(here, workers, names)
    result = {**previous, **_summary(module, mutants), "tests": _present(tests)}
    result["reruns"] = [
        *previous.get("reruns", []),
        {"mutants": len(names), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
         "load_before": [round(x, 2) for x in load_before], "exit_code": code},
    ]  # fmt: skip
    return result


# --------------------------------------------------------------------------- the record


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--", "sago_kernels", "tests").strip()
    return head + ("+dirty" if dirty else "")


def run(
    modules: list[str],
    work: Path,
    workers: int,
    rerun: bool,
    collect: bool = False,
    resuming: bool = False,
) -> dict:
    record = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"modules": {}}
    for module in modules:
        if not (ROOT / module).exists():
            print(f"skipping {module}: not in this tree", flush=True)
            continue
        print(f"mutating {module} ...", flush=True)
        commit = _commit()  # the tree as the scratch copy takes it, before any edit during the run
        if collect:
            result = collect_stopped(module, work)
            result["commit"] = commit
            result["workers"] = workers
            result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        elif resuming:
            result = resume(module, work, workers, record["modules"][module])
        elif rerun:
            result = rerun_survivors(module, work, workers, record["modules"][module])
            result["tests_commit"] = commit
        else:
            result = run_module(module, work, workers)
            result["commit"] = commit
            result["workers"] = workers
            result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        record["modules"][module] = result
        print(
            f"  {result['mutants']} mutants, {result['counts']}, score {result['score']:.1%}, "
            f"{result['wall_s']} s (load {result['load_before'][0]})",
            flush=True,
        )
        niceness = os.nice(0)
        result["command"] = f"nice -n {niceness} python bench/mutation.py " + " ".join(sys.argv[1:])
        from sago_kernels.unlearning.provenance import machine  # the results JSONs' own

        record.update(
            machine=machine(),
            versions={
                "python": platform.python_version(),
                **{m: _version(m) for m in ("mutmut", "torch", "hypothesis", "pytest")},
            },
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def _judged(module: str, result: dict) -> dict:
    """``result`` with :data:`EQUIVALENT` applied as it is now (reasons are written after the
    run that found the survivors): counts and score recomputed."""
    known = EQUIVALENT.get(module, {})
    survivors, counts = [], dict(result["counts"])
    if "status" in result:  # mutants a stopped run did not reach are not counted
        result = {**result, "checked": sum(v != "not checked" for v in result["status"].values())}
    for entry in result["survivors"]:
        if entry["status"] == "not checked":
            continue
        entry = dict(entry)
        if entry["status"] == "survived" and entry["signature"] in known:
            entry["status"], entry["why"] = "equivalent", known[entry["signature"]]
            counts["survived"] -= 1
            counts["equivalent"] = counts.get("equivalent", 0) + 1
        survivors.append(entry)
    counts = {k: v for k, v in counts.items() if v}
    checked = result.get("checked", result["mutants"])
    equivalent = counts.get("equivalent", 0)
    score = result["killed"] / (checked - equivalent) if checked > equivalent else 1.0
    return {**result, "survivors": survivors, "counts": counts, "equivalent": equivalent,
            "score": score}  # fmt: skip


def report() -> str:
    """The RESULTS.md section, from the results JSON."""
    record = json.loads(RESULTS.read_text())
    record["modules"] = {m: _judged(m, r) for m, r in record["modules"].items()}
    v = record["versions"]
    lines = [
        BEGIN,
        "## Mutation testing of the core (issue 24)",
        "",
        f"mutmut {v['mutmut']}, torch {v['torch']}, hypothesis {v['hypothesis']}, pytest "
        f"{v['pytest']}, Python {v['python']}; {record['machine']['cpu']}, "
        f"{record['machine']['cores']} cores shared with other work (the load is the 1-minute "
        "average when the module started). Each module on a scratch copy of the package and "
        "the tests, its mutants tested several at a time (the workers column), each against "
        "the module's fast tests with `-x` (the files below, with the `-k` expression of "
        "`MODULES` in `bench/mutation.py`: the reference backend where a test takes a "
        "backend); `bench/mutation.py` says why each setting. The command, after "
        "`pip install mutmut==3.8.1` (a development tool: no extra of the package needs it):",
        "",
        "    nice -n 10 python bench/mutation.py run [MODULE ...]   # all of MODULES by default",
        "    python bench/mutation.py report                        # this section, from the JSON",
        "",
        "Score: killed / (mutants tested − equivalent); a mutant that makes the package fail to "
        "import or a test time out counts as killed (mutmut reports these as timeouts), and so "
        "does one that makes a test module fail to import (pytest's exit code 2, which mutmut "
        "calls 'check was interrupted by user': see `COLLECTION_ERROR`).",
        "",
        "A module's first run finds its survivors; each then got a test that kills it, or an "
        "entry in `bench/mutation_equivalents.py` saying why no test can, and "
        "`run --survivors MODULE` tested the survivors again against the tests of then and the "
        "rest of the package as it is (the 'survivors again' of the wall-time column). The "
        "synthesizer's selection ends with one DDP, one FSDP2 and the DeepSpeed tests (two "
        "processes each), whose workers import the mutated package from a rerun on; a first "
        "run's workers import the original, so its engine-only mutants are first tested in its "
        "rerun. `metrics.py`'s first attempt stopped in mutmut's stats run, which found no test "
        "(13 s; not pinned down: the same scratch copy, started again, found them all) and was "
        "resumed from that copy.",
        "",
        "| module | commit | mutants | killed | equivalent | survived | no tests | score | "
        "wall time (load) | workers | tests |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for module in MODULES:
        r = record["modules"].get(module)
        if r is None:
            lines.append(f"| `{module}` | not run | | | | | | | | | |")
            continue
        c = r["counts"]
        tests = ", ".join(dict.fromkeys(Path(t.split("::")[0]).name for t in r["tests"]))
        wall = f"{r['wall_s']:.0f} s ({r['load_before'][0]:.1f})"
        for again in r.get("resumed", []):
            wall += (
                f"; resumed after a stop: {again['wall_s']:.0f} s ({again['load_before'][0]:.1f})"
            )
        for again in r.get("reruns", []):
            wall += f"; {again['mutants']} survivors again: {again['wall_s']:.0f} s"
            wall += f" ({again['load_before'][0]:.1f})"
            if again.get("exit_code") not in (0, None):  # mutmut stopped before any mutant
                wall += " (stopped: a test failed on the unmutated code, none retested)"
        commit = r["commit"] + (f", tests {r['tests_commit']}" if "tests_commit" in r else "")
        mutants = str(r["mutants"])
        if r.get("checked", r["mutants"]) < r["mutants"]:
            mutants += f" ({r['checked']} tested: the run was stopped)"
        lines.append(
            f"| `{module}` | {commit} | {mutants} | {r['killed']} | {r['equivalent']} | "
            f"{c.get('survived', 0)} | {c.get('no tests', 0)} | {r['score']:.1%} | "
            f"{wall} | {r.get('workers', 2)} | {tests} |"
        )
    done = [r for m, r in record["modules"].items() if m in MODULES]
    missing = [f"`{m}`" for m in MODULES if m not in record["modules"]]
    tested = sum(r.get("checked", r["mutants"]) for r in done)
    wall = sum(r["wall_s"] + sum(x["wall_s"] for x in r.get("resumed", [])) for r in done)
    lines += [
        "",
        f"{tested} mutants tested in {wall / 60:.0f} min of wall time "
        f"({tested / max(wall, 1) * 60:.1f} a minute on the shared machine). "
        + (f"Not run yet: {', '.join(missing)}; the same command runs them." if missing else ""),
    ]
    lines += ["", "Equivalent mutants (no test can tell them from the original), by module:", ""]
    for module in MODULES:
        r = record["modules"].get(module)
        if not r:
            continue
        eq = [s for s in r["survivors"] if s["status"] == "equivalent"]
        left = [s for s in r["survivors"] if s["status"] not in ("equivalent",)]
        if eq:
            lines.append(f"- `{module}`:")
            lines += [f"  - `{s['signature']}`: {s['why']}" for s in eq]
        if left:
            lines.append(f"- `{module}`, not killed and not shown equivalent:")
            lines += [f"  - `{s['signature']}` ({s['status']})" for s in left]
    lines.append(END)
    return "\n".join(lines)


def write_report() -> None:
    section = report()
    text = RESULTS_MD.read_text()
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS_MD.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="mutate modules and record the results JSON")
    p_run.add_argument("modules", nargs="*", help=f"default: all of {list(MODULES)}")
    p_run.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sago-mutation")
    p_run.add_argument("--workers", type=int, default=4, help="mutants tested at once (default 4)")
    p_run.add_argument(
        "--resume",
        action="store_true",
        help="test the mutants a stopped run did not reach, in its scratch copy",
    )
    p_run.add_argument(
        "--collect",
        action="store_true",
        help="record a run stopped by hand from its scratch copy (the rest as not checked)",
    )
    p_run.add_argument(
        "--survivors",
        action="store_true",
        help="rerun only the last run's survivors of each module, against the current tests",
    )
    sub.add_parser("report", help="rewrite bench/RESULTS.md's section from the results JSON")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        unknown = [m for m in args.modules if m not in MODULES]
        if unknown:
            parser.error(f"unknown modules {unknown}; known: {list(MODULES)}")
        run(
            args.modules or list(MODULES),
            args.work,
            args.workers,
            args.survivors,
            args.collect,
            args.resume,
        )
    else:
        write_report()


if __name__ == "__main__":
    main()
