"""Run a notebook top to bottom in a Jupyter kernel, cell by cell, for the offline site.

Each code cell runs as in JupyterLab (the notebook's folder is the working directory). After a
cell that displays a widget, the same kernel describes that widget as it is at that moment
(``moe_lab.site.snapshot``), and the widget's output is replaced by static HTML; plotly outputs
become static HTML too (``moe_lab.site.render``). The notebook keeps no widget state: a page
never carries the megabytes an executed notebook stores in ``metadata.widgets``.

A failing cell stops its notebook (later cells depend on it); what ran so far is kept, with the
error, so that the page shows where it stopped.

Taught in: every notebook's offline page (``moe-lab site``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from moe_lab.site.render import (
    PLOTLY_MIMETYPE,
    WIDGET_MIMETYPE,
    count_figures,
    figure_html,
    has_controls,
    snapshot_html,
)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks
SNAPSHOT_CODE = "import moe_lab.site.snapshot as _moe_lab_site\n_moe_lab_site.print_snapshot({!r})"


@dataclass
class ExecutedNotebook:
    """A notebook after ``execute_notebook``: outputs in place, ready for nbconvert.

    Attributes:
        notebook: the executed notebook (plotly and widget outputs already static HTML).
        seconds: wall-clock time of the run.
        figures: plotly figures on the page (explorers' included).
        explorers: widgets with controls, shown as snapshots.
        error: None, or where and why the run stopped ("cell 12: AssertionError: ...").
    """

    notebook: nbformat.NotebookNode
    seconds: float
    figures: int = 0
    explorers: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def code_cells(notebook: nbformat.NotebookNode) -> int:
    """How many cells a run executes (the progress bar's unit)."""
    return sum(cell.cell_type == "code" and bool(cell.source.strip()) for cell in notebook.cells)


def execute_notebook(
    path: Path,
    timeout_s: int,
    kernel_name: str = "python3",
    on_cell_done: Any = None,
) -> ExecutedNotebook:
    """Execute the notebook at ``path`` and make its outputs static (see the module docstring).

    Args:
        path: the ``.ipynb``.
        timeout_s: the longest one cell may run.
        kernel_name: the Jupyter kernel to run it in.
        on_cell_done: called with no argument after each code cell (a progress bar's update).

    Returns:
        An ``ExecutedNotebook``.
    """
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout_s,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=False,
        # the kernel's own log (not the notebook's outputs): errors only, so that its warning
        # about unencrypted local TCP does not interrupt the progress bar for every notebook
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )
    result = ExecutedNotebook(notebook=notebook, seconds=0.0)
    start = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            try:
                client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
                result.error = f"cell {index}: {_last_line(error)}"
                break
            finally:
                if on_cell_done is not None:
                    on_cell_done()
            _make_static(cell, index, client, path.name, result)
    result.seconds = time.perf_counter() - start
    notebook.metadata.pop("widgets", None)
    return result


def _last_line(error: Exception) -> str:
    """The exception's own line ("AssertionError: ..."), not nbclient's whole traceback."""
    text = ANSI_ESCAPE.sub("", str(error))
    lines = [line for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line.split(":")[0]]
    return (named or lines or [type(error).__name__])[-1].strip()


def _make_static(
    cell: nbformat.NotebookNode,
    index: int,
    client: NotebookClient,
    notebook_name: str,
    result: ExecutedNotebook,
) -> None:
    """Replace the cell's plotly and widget outputs by static HTML, in place."""
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if PLOTLY_MIMETYPE in data:
            output["data"] = {"text/html": figure_html(data[PLOTLY_MIMETYPE])}
            result.figures += 1
        elif WIDGET_MIMETYPE in data:
            model_id = data[WIDGET_MIMETYPE]["model_id"]
            snapshot = _snapshot(client, index, model_id)
            if snapshot is None:
                html = "<p class='moe-live-note'>An interactive widget: live in JupyterLab.</p>"
                result.notes.append(f"cell {index}: widget {model_id} could not be captured")
            else:
                html = snapshot_html(snapshot, notebook_name)
                result.figures += count_figures(snapshot)
                result.explorers += has_controls(snapshot)
            output["data"] = {"text/html": html}
        output.get("metadata", {}).pop(PLOTLY_MIMETYPE, None)


def _snapshot(client: NotebookClient, index: int, model_id: str) -> dict[str, Any] | None:
    """Ask the kernel to describe widget ``model_id`` now (no history, no execution count)."""
    probe = nbformat.v4.new_code_cell(SNAPSHOT_CODE.format(model_id))
    cell = client.nb.cells[index]
    try:
        client.execute_cell(probe, index, store_history=False)
    except CellExecutionError:
        return None
    finally:
        client.nb.cells[index] = cell  # nbclient stores the cell it ran at that index
    text = "".join(
        o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream"
    ).strip()
    try:
        return json.loads(text.splitlines()[-1]) if text else None
    except json.JSONDecodeError:
        return None
