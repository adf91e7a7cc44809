"""Write the benchmark's tables (and plots) again from a results JSON: the one command every
results table in ``bench/RESULTS.md`` comes from.

    python -m sago_kernels.unlearning.report unlearning_out/results.json
    python -m sago_kernels.unlearning.report RESULTS.json --into bench/RESULTS.md --section default

``--into`` replaces the text between ``<!-- BEGIN unlearning:SECTION -->`` and ``<!-- END
unlearning:SECTION -->`` in that markdown file (appending the section when it has none), so the
tables there are never typed by hand; ``--plots DIR`` draws the plots again; ``--reanalyse
OUT`` recomputes the analysis from the stored runs first (the analysis is a function of them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from .analysis import analyse
from .tables import render


def replace_section(text: str, section: str, body: str, title: str | None = None) -> str:
    """``text`` with the marked section's body replaced by ``body`` (appended if absent)."""
    begin, end = f"<!-- BEGIN unlearning:{section} -->", f"<!-- END unlearning:{section} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    heading = f"\n## {title}\n\n" if title else "\n"
    return text.rstrip() + "\n" + heading + block + "\n"


def load_results(path: Path) -> dict:
    """A results JSON, read through gzip when its name ends in ``.gz`` (how the larger runs'
    JSONs are kept under ``bench/results/``)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m sago_kernels.unlearning.report",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("results", help="a results.json the benchmark wrote (or it gzipped: .json.gz)")
    p.add_argument("--into", metavar="MARKDOWN", help="write the tables into this file's section")
    p.add_argument("--section", default="default", help="the section's name in --into")
    p.add_argument("--title", help="the heading of a section --into appends")
    p.add_argument("--plots", metavar="DIR", help="draw the plots into this folder")
    p.add_argument("--reanalyse", metavar="OUT_JSON",
                   help="compute the analysis again from the JSON's runs (this version's "
                   "analysis.py) and save the results with it here")  # fmt: skip
    args = p.parse_args(argv)
    try:
        results = load_results(Path(args.results))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        p.exit(2, f"{p.prog}: error: cannot read {args.results!r}: {error}\n")
    if "analysis" not in results or "meta" not in results:
        p.exit(2, f"{p.prog}: error: {args.results!r} is not a results.json of the benchmark "
               "(no 'analysis' or 'meta')\n")  # fmt: skip
    if args.reanalyse:
        window = results["args"].get("cosine_window")
        results["analysis"] = analyse(results["seeds"], results["runs"],
                                      tuple(window) if window else None)  # fmt: skip
        Path(args.reanalyse).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.reanalyse}", file=sys.stderr)
    markdown = render(results)
    if args.into:
        path = Path(args.into)
        text = path.read_text() if path.exists() else ""
        path.write_text(replace_section(text, args.section, markdown, args.title))
        print(f"wrote the {args.section!r} section of {path}")
    else:
        sys.stdout.write(markdown)
    if args.plots:
        from .plots import plot_all

        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        for path in plot_all(results, None, out):
            print(f"wrote {path}")
    return markdown


if __name__ == "__main__":
    main()
