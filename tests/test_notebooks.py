"""Hygiene of the committed notebooks: small, valid, no stored outputs, no widget state.

Executing a notebook that displays a plotly ``FigureWidget`` through nbconvert or nbclient stores
about 5 MB of widget JavaScript in ``metadata.widgets``; a notebook saved from a live session
stores its outputs. Neither belongs in the repository: nbval re-executes every notebook in CI,
and outputs would make every diff unreadable. The notebooks themselves run under
``pytest --nbval-lax notebooks/`` (the default test command).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000  # 1 MB: a notebook without outputs is a few tens of kB
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def notebook_problems(path: Path) -> list[str]:
    """Every reason ``path`` should not be committed (empty when it is clean)."""
    problems = []
    size = path.stat().st_size
    if size >= MAX_BYTES:
        problems.append(f"{size:,} bytes >= {MAX_BYTES:,}")
    text = path.read_text(encoding="utf-8")
    if WIDGET_STATE in text:
        problems.append(f"contains {WIDGET_STATE} (clear metadata.widgets)")
    notebook = nbformat.reads(text, as_version=4)
    nbformat.validate(notebook)  # raises on an invalid notebook
    if "widgets" in notebook.metadata:
        problems.append("has metadata.widgets")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index} has stored outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index} has an execution count")
    return problems


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committable(path: Path) -> None:
    assert notebook_problems(path) == []


def test_checker_catches_outputs_and_widget_state(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    ]
    cell.execution_count = 1
    notebook.cells = [cell]
    notebook.metadata["widgets"] = {WIDGET_STATE: {"state": {}, "version_major": 2}}
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(notebook, dirty)
    problems = notebook_problems(dirty)
    assert any(WIDGET_STATE in p for p in problems)
    assert any("metadata.widgets" in p for p in problems)
    assert any("stored outputs" in p for p in problems)
    assert any("execution count" in p for p in problems)

    big = tmp_path / "big.ipynb"
    clean = nbformat.v4.new_notebook()
    clean.cells = [nbformat.v4.new_markdown_cell("x" * MAX_BYTES)]
    nbformat.write(clean, big)
    assert any("bytes" in p for p in notebook_problems(big))


def _sync_tool(notebook_dir: Path):
    """tools/sync_notebooks.py, pointed at ``notebook_dir``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sync_notebooks", NOTEBOOK_DIR.parent / "tools" / "sync_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.NOTEBOOK_DIR = notebook_dir
    return module


def test_every_notebook_has_one_text_source() -> None:
    sources = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    assert [p.stem for p in sources] == [p.stem for p in NOTEBOOKS]


def test_sync_tool_catches_each_way_a_pair_drifts(tmp_path: Path) -> None:
    source = tmp_path / "01_demo.py"
    source.write_text(
        '# %% [markdown]\n# # Demo\n\n# %%\nx = 1 + 1\n\n# %% tags=["solution"]\nassert x == 2\n'
    )
    sync = _sync_tool(tmp_path)
    assert sync.main([]) == 0  # writes the .ipynb
    ipynb = source.with_suffix(".ipynb")
    notebook = nbformat.read(ipynb, as_version=4)
    assert [c.cell_type for c in notebook.cells] == ["markdown", "code", "code"]
    assert notebook.cells[2].metadata["tags"] == ["solution"]  # cell metadata survives
    assert notebook_problems(ipynb) == []
    assert sync.main(["--check"]) == 0

    # an edit made in the .ipynb only (a JupyterLab without Jupytext) is caught ...
    notebook.cells[1].source = "x = 2 + 2"
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="out")]
    nbformat.write(notebook, ipynb)
    assert sync.pair_problems(source)[0].startswith("01_demo.ipynb differs from 01_demo.py")
    assert sync.main(["--check"]) == 1
    # ... and taken into the source on request, outputs dropped
    assert sync.main(["--from-ipynb", str(ipynb)]) == 0
    assert "x = 2 + 2" in source.read_text()
    assert notebook_problems(ipynb) == []
    assert sync.main(["--check"]) == 0

    # an .ipynb without a source is an orphan
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "02_orphan.ipynb")
    assert sync.main(["--check"]) == 1
