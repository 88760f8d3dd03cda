"""What every notebook generator in tools/ shares: collect cells, build, write or --check.

A generator declares its cells with ``md(...)`` and ``code(...)`` in order, then ends with
``sys.exit(builder.main())``. ``--check`` exits 1 when the committed notebook differs from
what the generator makes (tests/test_generators.py runs it for every ``make_*.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


class NotebookBuilder:
    """Cells in order, for the notebook at ``path`` (written without outputs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: list[tuple[str, str]] = []

    def md(self, text: str) -> None:
        self.cells.append(("markdown", text.strip("\n")))

    def code(self, text: str) -> None:
        self.cells.append(("code", text.strip("\n")))

    def build(self) -> nbformat.NotebookNode:
        cells = [
            new_markdown_cell(src) if kind == "markdown" else new_code_cell(src)
            for kind, src in self.cells
        ]
        nb = new_notebook(cells=cells)
        nb.metadata = {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        }
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"cell-{i:02d}"  # stable ids: regenerating changes nothing
        return nb

    def main(self, argv: list[str] | None = None) -> int:
        generator = Path(sys.argv[0]).name
        parser = argparse.ArgumentParser(description=f"Generate {self.path.name}")
        parser.add_argument("--check", action="store_true", help="fail if the notebook is stale")
        args = parser.parse_args(argv)
        text = nbformat.writes(self.build()) + "\n"
        if args.check:
            if not self.path.exists() or self.path.read_text() != text:
                print(f"{self.path} is stale: run python tools/{generator}", file=sys.stderr)
                return 1
            return 0
        self.path.write_text(text)
        print(f"wrote {self.path}")
        return 0
