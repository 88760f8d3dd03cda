"""Keep every notebook's two files in step: the Jupytext source and the runnable ``.ipynb``.

Each notebook is authored once, as ``notebooks/NN_name.py`` in Jupytext's percent format (cells
start at ``# %%``; Markdown cells are comments): plain text that diffs, reviews and merges like
code. ``notebooks/NN_name.ipynb`` is generated from it, without outputs, so that nbval and
JupyterLab can run it. ``jupytext.toml`` pairs the two, so in JupyterLab (Jupytext is installed
with the course) saving the ``.ipynb`` rewrites the ``.py`` too.

Usage:
    python tools/sync_notebooks.py                  # write every .ipynb from its .py
    python tools/sync_notebooks.py --check          # exit 1 if any pair differs (the test suite runs this)
    python tools/sync_notebooks.py --from-ipynb notebooks/03_load_balancing.ipynb
        # an .ipynb edited where Jupytext was not running: take its cells into the .py, then
        # rewrite the .ipynb without outputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
TEXT_FORMAT = "py:percent"
# Cell metadata that belongs to a session, not to the course: dropped from the .ipynb.
SESSION_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def sources() -> list[Path]:
    """Every notebook source, in course order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def notebook_from_source(source: Path) -> nbformat.NotebookNode:
    """The ``.ipynb`` content for ``source``: its cells, no outputs, stable cell ids."""
    notebook = jupytext.read(source, fmt=TEXT_FORMAT)
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"  # stable: regenerating changes nothing
        for key in SESSION_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    notebook.metadata.pop("widgets", None)
    return notebook


def ipynb_text(source: Path) -> str:
    return nbformat.writes(notebook_from_source(source)) + "\n"


def cell_summary(notebook: nbformat.NotebookNode) -> list[tuple[str, str, dict]]:
    """What must agree between the pair: each cell's type, source and course metadata."""
    return [
        (
            cell.cell_type,
            cell.source,
            {k: v for k, v in cell.metadata.items() if k not in SESSION_METADATA},
        )
        for cell in notebook.cells
    ]


def pair_problems(source: Path) -> list[str]:
    """Why ``source`` and its ``.ipynb`` are out of step (empty when they agree)."""
    ipynb = source.with_suffix(".ipynb")
    if not ipynb.exists():
        return [f"{ipynb.name} is missing: run python tools/sync_notebooks.py"]
    expected = cell_summary(notebook_from_source(source))
    try:
        actual = cell_summary(nbformat.read(ipynb, as_version=4))
    except (nbformat.reader.NotJSONError, ValueError) as error:  # e.g. merge conflict markers
        return [
            f"{ipynb.name} is not a readable notebook ({error.__class__.__name__}): run"
            " python tools/sync_notebooks.py to write it from its source"
        ]
    if expected == actual:
        return []
    first = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b),
        min(len(expected), len(actual)),
    )
    return [
        f"{ipynb.name} differs from {source.name} from cell {first} on "
        f"({len(actual)} cells against {len(expected)}): run python tools/sync_notebooks.py, "
        f"or --from-ipynb {ipynb.relative_to(NOTEBOOK_DIR.parent)} if the .ipynb holds the edit"
    ]


def take_from_ipynb(ipynb: Path) -> Path:
    """Write the ``.py`` of ``ipynb`` from its cells (outputs are not part of the source)."""
    if ipynb.suffix != ".ipynb" or not ipynb.exists():
        raise SystemExit(f"--from-ipynb needs an existing .ipynb file, got {ipynb}")
    notebook = nbformat.read(ipynb, as_version=4)
    source = ipynb.with_suffix(".py")
    jupytext.write(notebook, source, fmt=TEXT_FORMAT)
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write each notebook's .ipynb from its .py")
    parser.add_argument("--check", action="store_true", help="fail if any pair differs")
    parser.add_argument("--from-ipynb", type=Path, help="take this .ipynb's cells into its .py")
    args = parser.parse_args(argv)
    if args.from_ipynb is not None:
        source = take_from_ipynb(args.from_ipynb.resolve())
        print(f"wrote {source.name}")
    orphans = [
        f"{ipynb.name} has no {ipynb.stem}.py source"
        for ipynb in sorted(NOTEBOOK_DIR.glob("*.ipynb"))
        if not ipynb.with_suffix(".py").exists()
    ]
    if args.check:
        problems = [p for source in sources() for p in pair_problems(source)]
        for problem in problems + orphans:
            print(problem, file=sys.stderr)
        return 1 if problems or orphans else 0
    for problem in orphans:
        print(problem, file=sys.stderr)
    for source in sources():
        ipynb = source.with_suffix(".ipynb")
        text = ipynb_text(source)
        if not ipynb.exists() or ipynb.read_text(encoding="utf-8") != text:
            ipynb.write_text(text, encoding="utf-8")
            print(f"wrote {ipynb.name}")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
