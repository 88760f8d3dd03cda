"""Kernel side of the offline site: describe a displayed widget as plain JSON, as it is now.

``moe-lab site`` executes each notebook in a Jupyter kernel. When a cell displays a widget (an
explorer, a progress bar), the builder runs ``print_snapshot(model_id)`` in the same kernel,
right after that cell, and turns the JSON into static HTML (``moe_lab.site.render``). What is
captured is the widget at that moment, i.e. the explorer's starting state: the figure, the
controls' values and ranges, which controls are greyed out, and any HTML and outputs.

Only ``ipywidgets`` and ``plotly`` are needed here; nothing is imported from nbconvert.

Taught in: every notebook's offline page (``moe-lab site``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import ipywidgets as widgets


def _find_widget(model_id: str) -> widgets.Widget:
    """The live widget with this comm id (ipywidgets 8 keeps them in ``widget._instances``)."""
    from ipywidgets.widgets import widget as widget_module

    instances = getattr(widget_module, "_instances", None) or widgets.Widget.widgets
    if model_id not in instances:
        raise KeyError(f"no widget with model id {model_id!r} in this kernel")
    return instances[model_id]


def _plain(value: Any) -> Any:
    """A JSON value for a control's value (tuples of a range slider, numpy scalars...)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _figure_json(figure: Any) -> dict[str, Any]:
    import plotly.io as pio

    return json.loads(pio.to_json(figure, validate=False))


def describe(widget: widgets.Widget) -> dict[str, Any]:
    """A JSON-ready description of ``widget`` and its children (see the module docstring).

    Kinds: ``box`` (children, ``layout``: row, column or grid), ``figure`` (a plotly figure
    widget), ``output`` (an ``ipywidgets.Output``'s outputs), ``html``, ``progress``,
    ``control`` (any other widget with a value), ``other``.
    """
    if hasattr(widget, "to_plotly_json"):  # plotly's FigureWidget
        return {"kind": "figure", "figure": _figure_json(widget)}
    if isinstance(widget, widgets.Output):
        return {"kind": "output", "outputs": [dict(output) for output in widget.outputs]}
    if isinstance(widget, widgets.Box):
        layout = "row" if isinstance(widget, widgets.HBox) else "column"
        if isinstance(widget, widgets.GridBox):
            layout = "grid"
        return {
            "kind": "box",
            "layout": layout,
            "children": [describe(child) for child in widget.children],
        }
    if isinstance(widget, (widgets.HTML, widgets.HTMLMath)):
        return {"kind": "html", "value": widget.value, "description": widget.description}
    if isinstance(widget, (widgets.IntProgress, widgets.FloatProgress)):
        return {
            "kind": "progress",
            "value": _plain(widget.value),
            "min": _plain(widget.min),
            "max": _plain(widget.max),
            "description": widget.description,
        }
    if isinstance(widget, widgets.Label):
        return {"kind": "html", "value": "", "description": widget.value}
    if hasattr(widget, "value"):
        return _describe_control(widget)
    return {"kind": "other", "widget": type(widget).__name__}


def _describe_control(widget: widgets.Widget) -> dict[str, Any]:
    control: dict[str, Any] = {
        "kind": "control",
        "widget": type(widget).__name__,
        "description": getattr(widget, "description", ""),
        "value": _plain(widget.value),
        "disabled": bool(getattr(widget, "disabled", False)),
        "tooltip": getattr(widget, "tooltip", None) or "",
    }
    if hasattr(widget, "_options_labels"):  # Dropdown, RadioButtons, Select...
        control["options"] = list(widget._options_labels)
        control["label"] = widget.label
    for name in ("min", "max", "step"):
        if hasattr(widget, name):
            control[name] = _plain(getattr(widget, name))
    if hasattr(widget, "base"):  # FloatLogSlider: min, max and step are exponents
        control["base"] = _plain(widget.base)
        control["exponent"] = math.log(widget.value, widget.base) if widget.value > 0 else 0
    if hasattr(widget, "readout_format") and isinstance(widget.value, (int, float)):
        try:
            control["readout"] = format(widget.value, widget.readout_format)
        except ValueError:
            control["readout"] = str(widget.value)
    return control


def widget_snapshot(model_id: str) -> dict[str, Any]:
    """``describe`` the live widget with comm id ``model_id``."""
    return describe(_find_widget(model_id))


def print_snapshot(model_id: str) -> None:
    """Print ``widget_snapshot(model_id)`` as one line of JSON (what the site builder reads)."""
    print(json.dumps(widget_snapshot(model_id)))
