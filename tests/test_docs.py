"""Every example in the README and in the docstrings runs (documentation that cannot drift)."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    code = BLOCKS[index]
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})


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


def test_readme_links_resolve_inside_the_repository():
    """A clone holds only the repository: every link of the README is a heading of it or a file
    in it, and no path in it climbs out (the contract once lived in a sibling folder)."""
    root = README.parent.resolve()
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    anchors = {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors, f"README links to a missing heading: {target}"
            continue
        path = (root / target.split("#")[0]).resolve()
        assert path.is_relative_to(root) and path.exists(), f"README links to {target}"
    climbing = re.findall(r"`(\.\./[^`]*)`", text)
    assert not climbing, f"README names paths outside the repository: {climbing}"


def test_no_file_points_at_the_old_shared_folder():
    root = README.parent
    needle = "../" + "shared"  # built, so that this file does not match itself
    text_files = {".py", ".md", ".cpp", ".h", ".sh", ".txt"}
    files = [root / "README.md", root / "setup.py", root / "CMakeLists.txt"]
    for folder in ("sago_kernels", "tests", "bench", "python"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in text_files]
    offenders = [str(p.relative_to(root)) for p in files if needle in p.read_text("utf-8")]
    assert not offenders, f"{needle} is not part of a clone; found in {offenders}"
