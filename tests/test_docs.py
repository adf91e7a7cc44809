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
