"""The former facts demo, now a preset of the benchmark: ``python -m sago_kernels.unlearning.demo``
runs ``python -m sago_kernels.unlearning.benchmark --quick`` (any other flag passes through).

The benchmark is the one experiment: its synthetic world has the held-out neighbours the demo
had (``corpus.py``), with TOFU's and RWKU's metrics. ``facts.py``, the demo's corpus, stays for
the recipes in ``python/``.
"""

from __future__ import annotations

import sys

from .benchmark import _reexec_portable, main


def demo_argv(argv: list[str]) -> list[str]:
    """The benchmark's flags for the demo: ``--quick`` unless a preset is given."""
    return argv if {"--quick", "--paper"} & set(argv) else ["--quick", *argv]


if __name__ == "__main__":
    argv = demo_argv(sys.argv[1:])
    _reexec_portable(argv)
    main(argv)
