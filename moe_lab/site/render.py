"""Static HTML for what a notebook shows: plotly figures and snapshots of widgets.

A plotly figure in an executed notebook is an output with only the plotly JSON mimetype, which
nbconvert cannot draw. ``figure_html`` turns it into a ``<div>`` and one call to
``Plotly.newPlot``, with the figure's JSON inline and plotly.js loaded once per page from the
site's ``assets/`` folder: each page carries its figures' data (kilobytes), never plotly.js.

A widget (an explorer, a progress bar) is an output that only points at a live kernel object.
``snapshot_html`` draws the JSON ``moe_lab.site.snapshot`` captured right after the cell
ran: the figure, the controls as disabled HTML controls with their values, and, for an
explorer, a sentence saying that it is live in JupyterLab.

Why a snapshot and not a live widget with a locally served widget manager: the explorers
recompute every change with the library (a real router, a real ``MoELayer``) in the Python
kernel. A static page has no kernel, so an embedded widget's sliders would move while its
figure stayed put, which misleads; the widget manager and plotly's widget bundle would also add
megabytes to every page. A snapshot shows exactly what the notebook showed, for a few kB.

Taught in: every notebook's offline page (``moe-lab site``).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

import plotly.io as pio

from moe_lab.viz.explorer import PLOTLY_MIMETYPE

WIDGET_MIMETYPE = "application/vnd.jupyter.widget-view+json"
SITE_PLOT_CONFIG = {"responsive": True, "displaylogo": False}
DEFAULT_FIGURE_HEIGHT = 450  # plotly's own default height, for figures that set none
LIVE_NOTE = (
    "A snapshot of this explorer's starting state. It is live in JupyterLab: open "
    "<code>{notebook}</code> there (<code>jupyter lab notebooks/</code>) and run it to move "
    "the controls."
)


def figure_html(spec: dict[str, Any]) -> str:
    """A ``<div>`` that draws the plotly figure ``spec`` (its JSON) with the page's plotly.js.

    The div is as wide as the page's output area and as high as the figure's layout says, so
    the page does not jump when plotly draws; ``responsive`` makes it follow the window.
    """
    layout = spec.get("layout", {})
    height = layout.get("height") or DEFAULT_FIGURE_HEIGHT
    config = {**spec.get("config", {}), **SITE_PLOT_CONFIG}
    figure = {key: value for key, value in spec.items() if key != "config"}
    return pio.to_html(
        figure,
        config=config,
        include_plotlyjs=False,
        full_html=False,
        default_width="100%",
        default_height=f"{height}px",
        validate=False,
    ).replace('class="plotly-graph-div"', 'class="plotly-graph-div moe-figure"', 1)


def output_html(output: dict[str, Any]) -> str | None:
    """HTML for one output of a notebook or of an ``Output`` widget; None for an output that
    nbconvert renders well on its own (text, images, HTML)."""
    data = output.get("data", {})
    if PLOTLY_MIMETYPE in data:
        return figure_html(data[PLOTLY_MIMETYPE])
    if output.get("output_type") == "stream":
        return f"<pre>{escape(output.get('text', ''))}</pre>"
    if "text/html" in data:
        return _text(data["text/html"])
    if "image/png" in data:
        return f'<img alt="figure" src="data:image/png;base64,{_text(data["image/png"]).strip()}">'
    if "text/plain" in data:
        return f"<pre>{escape(_text(data['text/plain']))}</pre>"
    return None


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def count_figures(snapshot: dict[str, Any]) -> int:
    """How many plotly figures a snapshot holds."""
    if snapshot["kind"] == "figure":
        return 1
    if snapshot["kind"] == "output":
        return sum(PLOTLY_MIMETYPE in o.get("data", {}) for o in snapshot["outputs"])
    return sum(count_figures(child) for child in snapshot.get("children", []))


def has_controls(snapshot: dict[str, Any]) -> bool:
    """True when a snapshot holds a control a reader would move (a slider, a dropdown...)."""
    if snapshot["kind"] == "control":
        return True
    return any(has_controls(child) for child in snapshot.get("children", []))


def snapshot_html(snapshot: dict[str, Any], notebook: str) -> str:
    """Static HTML for a widget snapshot; explorers get the "live in JupyterLab" sentence.

    Args:
        snapshot: what ``moe_lab.site.snapshot.describe`` returned in the kernel.
        notebook: the notebook's file name, for the sentence.
    """
    body = _snapshot_body(snapshot)
    if not has_controls(snapshot):
        return f'<div class="moe-snapshot">{body}</div>'
    note = LIVE_NOTE.format(notebook=escape(notebook))
    return f'<div class="moe-snapshot moe-explorer"><p class="moe-live-note">{note}</p>{body}</div>'


def _snapshot_body(item: dict[str, Any]) -> str:
    kind = item["kind"]
    if kind == "box":
        children = "".join(_snapshot_body(child) for child in item["children"])
        return f'<div class="moe-box moe-{item["layout"]}">{children}</div>'
    if kind == "figure":
        return figure_html(item["figure"])
    if kind == "output":
        return "".join(output_html(output) or "" for output in item["outputs"])
    if kind == "html":
        label = f"<span>{escape(item['description'])}</span> " if item.get("description") else ""
        return f'<div class="moe-html">{label}{item["value"]}</div>'
    if kind == "progress":
        return (
            f'<div class="moe-progress"><span>{escape(item["description"])}</span>'
            f' <progress value="{item["value"]}" max="{item["max"]}"></progress></div>'
        )
    if kind == "control":
        return _control_html(item)
    return f'<div class="moe-other">[{escape(item.get("widget", "widget"))}]</div>'


def _control_html(control: dict[str, Any]) -> str:
    """A disabled HTML control showing the widget's value; greyed out if the kernel had it so."""
    label = escape(control.get("description", ""))
    title = f' title="{escape(control["tooltip"])}"' if control.get("tooltip") else ""
    classes = "moe-control moe-ignored" if control.get("disabled") else "moe-control"
    value = control["value"]
    if "options" in control:
        options = "".join(
            f"<option{' selected' if option == control.get('label') else ''}>{escape(str(option))}</option>"
            for option in control["options"]
        )
        field = f"<select disabled>{options}</select>"
    elif isinstance(value, bool):
        field = f'<input type="checkbox" disabled{" checked" if value else ""}>'
    elif "min" in control and "max" in control and isinstance(value, (int, float)):
        position = control.get("exponent", value)
        step = control.get("step", "any")
        field = (
            f'<input type="range" disabled min="{control["min"]}" max="{control["max"]}"'
            f' step="{step}" value="{position}">'
            f'<span class="moe-readout">{escape(control.get("readout", str(value)))}</span>'
        )
    else:
        field = f'<span class="moe-readout">{escape(json.dumps(value))}</span>'
    return f'<label class="{classes}"{title}><span class="moe-desc">{label}</span>{field}</label>'
