"""Every example in the README and in the docstrings runs, and every link of the markdown
documentation resolves inside the repository (documentation that cannot drift)."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "sago_kernels" / "CONTRACT.md", ROOT / "sago_kernels" / "DESIGN.md",
        ROOT / "bench" / "README.md", ROOT / "bench" / "RESULTS.md"]  # fmt: skip
"""The markdown a reader is sent to: the README, and what it points at for detail."""
BLOCKS = [
    (doc.relative_to(ROOT), code)
    for doc in DOCS
    for code in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
]


def test_readme_has_examples():
    assert sum(doc == Path("README.md") for doc, _ in BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index):
    doc, code = BLOCKS[index]
    exec(compile(code, f"{doc}[python block {index}]", "exec"), {})


@pytest.mark.parametrize(
    "module",
    [
        "sago_kernels",
        "sago_kernels.layout",
        "sago_kernels.combine",
        "sago_kernels.grads",
        "sago_kernels.kernels.launch",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_doc_links_resolve_inside_the_repository(doc):
    """A clone holds only the repository: every link of the documentation is a heading of the
    page it names (or of itself) or a file in the repository, and no path climbs out of it (the
    contract once lived in a sibling folder)."""
    root = ROOT.resolve()
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        page, _, anchor = target.partition("#")
        path = (doc.parent / page).resolve() if page else doc
        assert path.is_relative_to(root) and path.exists(), f"{doc.name} links to {target}"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name} links to a missing heading: {target}"
    climbing = re.findall(r"`(\.\./[^`]*)`", text)
    assert not climbing, f"{doc.name} names paths outside the repository: {climbing}"


def test_no_file_points_at_the_old_shared_folder():
    root = README.parent
    needle = "../" + "shared"  # built, so that this file does not match itself
    text_files = {".py", ".md", ".cpp", ".h", ".sh", ".txt"}
    files = [root / "README.md", root / "setup.py", root / "CMakeLists.txt"]
    for folder in ("sago_kernels", "tests", "bench", "python"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in text_files]
    offenders = [str(p.relative_to(root)) for p in files if needle in p.read_text("utf-8")]
    assert not offenders, f"{needle} is not part of a clone; found in {offenders}"


def test_readme_glossary_gives_every_printed_column_its_direction():
    """The main job's columns (``tables.COLUMNS``) are the README's glossary rows, each with
    the arrow ``evaluation.METRICS`` gives it, so the README, the terminal and the JSON agree."""
    from sago_kernels.unlearning.evaluation import METRICS
    from sago_kernels.unlearning.tables import COLUMNS

    text = README.read_text(encoding="utf-8")
    for column in COLUMNS:
        assert f"| `{column}` | {METRICS[column].arrow} |" in text, column


def test_readme_places_every_module_in_its_layer():
    """The README's "Repository" section names every module of the two layers."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Repository") :]
    for folder in (ROOT / "sago_kernels", ROOT / "sago_kernels" / "unlearning"):
        for path in folder.glob("*.py"):
            if path.name != "__init__.py":
                assert f"`{path.name}`" in section, path.relative_to(ROOT)
