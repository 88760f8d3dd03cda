"""The machinery every explorer shares: state -> view -> figure, with controls bound to the state.

An explorer holds one state (a frozen dataclass from ``moe_lab.viz.state``). A slider move calls
``on_control(name, value)``, which makes a new state and hands it to ``set_state``; code calls
``set_state`` directly. ``set_state`` recomputes the view with the library, rebuilds the figure
with a pure builder, copies it into ``explorer.figure`` in place and shows it, then moves the
controls to match and greys out those the state ignores. Tests therefore drive the same path a
reader drives: set a widget's ``value`` (or call ``set_state``) and read ``explorer.figure``.

How the figure is shown: as a plain plotly figure (the ``application/vnd.plotly.v1+json``
output every plotly figure in the course uses) inside an ``ipywidgets.Output``, replaced on
every change. Plotly's ``FigureWidget`` was the first choice, but in JupyterLab 4.6 with plotly
7.1 it sized itself at a fixed 700 px when it rendered before its output area was laid out,
and in a fresh kernel it sometimes drew empty axes until the first change; the plain figure
fills its output area, follows its width and renders the same way in a saved notebook and in
the offline site (``moe-lab site``). It also keeps a notebook's widget state small (the
``FigureWidget`` carried 5 MB of JavaScript).

What every explorer gets from here, so that a new explorer inherits it:

- controls laid out in a grid of cells at least ``CONTROL_MIN_WIDTH`` wide, so that a slider's
  track is long enough to drag one step at a time (``CONTROL_DESCRIPTION_WIDTH`` for labels);
- controls the state ignores (``state.ignored_fields()``) disabled, with the reason in a line
  under the controls and in the control's tooltip;
- ``reset()``, back to the state the explorer was built with.

Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from html import escape
from typing import Any, Generic, TypeVar

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio

from moe_lab.viz.figures import update_in_place

StateT = TypeVar("StateT")
ViewT = TypeVar("ViewT")

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
# A 40-step slider (the widest here) needs a track of about 240 px for 6 px per step: cell =
# label 150 px + track + read-out about 60 px.
CONTROL_MIN_WIDTH = "460px"
CONTROL_DESCRIPTION_WIDTH = "150px"
# No ``responsive: True``: with it, JupyterLab's plotly renderer drew the first figure of a
# notebook into a 0 px high box (seen in JupyterLab 4.6, plotly 7.1). Without it the renderer
# still resizes the figure with its output area.
PLOT_CONFIG = {"displaylogo": False}
IGNORED_CLASS = "moe-lab-ignored"
# ipywidgets greys a disabled slider's handle only faintly: the whole control fades instead.
IGNORED_STYLE = f"<style>.{IGNORED_CLASS} {{ opacity: 0.45; }}</style>"


def figure_bundle(figure: go.Figure) -> dict[str, Any]:
    """The output a notebook shows for ``figure``: plotly's JSON mimetype (JupyterLab and the
    offline site draw it with plotly.js) and a one-line text fallback (its title)."""
    spec = json.loads(pio.to_json(figure, validate=False))
    spec["config"] = PLOT_CONFIG
    title = figure.layout.title.text or "plotly figure"
    return {PLOTLY_MIMETYPE: spec, "text/plain": title.replace("<br>", " ")}


class Explorer(Generic[StateT, ViewT]):
    """A state, its view, its figure and the controls that edit the state.

    Subclasses provide three hooks and may override two: ``compute(state) -> view`` (with the
    library), ``build_figure(view) -> go.Figure`` (a pure builder), ``make_controls(state)``
    (one widget per state field they edit, keyed by field name); optionally ``constrain(state,
    name, value)`` (how one control's change adjusts the others, e.g. top_k <= n_experts) and
    ``sync_control_limits(state)`` (controls' ranges that follow the state).

    Attributes:
        state: the current state.
        initial_state: the state the explorer was built with (``reset`` returns to it).
        view: the current view (what the figure shows, as numpy arrays).
        figure: the current ``go.Figure``, updated in place on every change.
        controls: dict field name -> ipywidgets control.
        notes: an ``ipywidgets.HTML`` under the controls: which controls are greyed out, and why.
        output: the ``ipywidgets.Output`` that shows ``figure``.
        history: every state applied, in order (replay it with ``replay``).
        widget: the controls, the notes and the figure in one box, for ``display``.
    """

    compute: Callable[[Any], Any]
    build_figure: Callable[[Any], go.Figure]

    def __init__(self, state: StateT) -> None:
        self.state: StateT = state
        self.initial_state: StateT = state
        self.view: ViewT = type(self).compute(state)
        self.figure: go.Figure = type(self).build_figure(self.view)
        self.controls: dict[str, widgets.ValueWidget] = self.make_controls(state)
        self.history: list[StateT] = [state]
        self._syncing = False
        for name, control in self.controls.items():
            control.style.description_width = CONTROL_DESCRIPTION_WIDTH
            control.layout.width = "auto"
            control.observe(self._observer(name), names="value")
        self.notes = widgets.HTML(layout={"min_height": "1.5em"})
        style = widgets.HTML(IGNORED_STYLE, layout={"height": "0px", "overflow": "hidden"})
        self.output = widgets.Output(layout={"width": "100%"})
        self.widget = widgets.VBox(
            [
                widgets.GridBox(
                    list(self.controls.values()),
                    layout={
                        "grid_template_columns": f"repeat(auto-fill, minmax({CONTROL_MIN_WIDTH}, 1fr))",
                        "grid_gap": "2px 24px",
                        "width": "100%",
                    },
                ),
                style,
                self.notes,
                self.output,
            ],
            layout={"width": "100%"},
        )
        self._show(state)

    # Hooks -----------------------------------------------------------------------------------
    def make_controls(self, state: StateT) -> dict[str, widgets.ValueWidget]:
        raise NotImplementedError

    def constrain(self, state: StateT, name: str, value: Any) -> StateT:
        """The state after control ``name`` moved to ``value``; override to keep fields valid."""
        return state.replace(**{name: value})  # type: ignore[attr-defined]

    def sync_control_limits(self, state: StateT) -> None:
        """Adjust controls' ranges to the state (e.g. top_k's max); called before values move."""

    def ignored_controls(self, state: StateT) -> dict[str, str]:
        """Controls that change nothing in ``state``, each with the reason: the state's own
        ``ignored_fields()`` when it has one (``RoutingState`` does)."""
        ignored = getattr(state, "ignored_fields", None)
        return {} if ignored is None else dict(ignored())

    # The one path every change takes ---------------------------------------------------------
    def on_control(self, name: str, value: Any) -> None:
        """What a slider calls: the state with field ``name`` set to ``value``, applied."""
        self.set_state(self.constrain(self.state, name, value))

    def set_state(self, state: StateT) -> ViewT:
        """Apply ``state``: recompute the view, update and show the figure, move the controls.

        Returns:
            The new view.
        """
        view = type(self).compute(state)
        update_in_place(self.figure, type(self).build_figure(view))
        self.state, self.view = state, view
        self.history.append(state)
        self._syncing = True
        try:
            self.sync_control_limits(state)
            for name, control in self.controls.items():
                control.value = getattr(state, name)
        finally:
            self._syncing = False
        self._show(state)
        return view

    def reset(self) -> ViewT:
        """Back to ``initial_state`` (what the notebook's "things to try" start from).

        Returns:
            The view of the initial state.
        """
        return self.set_state(self.initial_state)

    def replay(self, states: Iterable[StateT]) -> ViewT:
        """Apply ``states`` in order (a recorded ``history``, or dicts from ``to_dict``).

        Returns:
            The view of the last state.
        """
        view = self.view
        state_type = type(self.state)
        for state in states:
            if isinstance(state, dict):
                state = state_type.from_dict(state)  # type: ignore[attr-defined]
            view = self.set_state(state)
        return view

    def _show(self, state: StateT) -> None:
        """Grey out the ignored controls, say why, and show the figure."""
        ignored = self.ignored_controls(state)
        for name, control in self.controls.items():
            control.disabled = name in ignored
            control.tooltip = ignored.get(name, "")  # "" (not None, shown as "null"): no tooltip
            if name in ignored:
                control.add_class(IGNORED_CLASS)
            else:
                control.remove_class(IGNORED_CLASS)
        reasons: dict[str, list[str]] = {}
        for name, reason in ignored.items():
            if name in self.controls:
                reasons.setdefault(reason, []).append(self.controls[name].description)
        self.notes.value = (
            "<span style='color: var(--jp-ui-font-color2, #616161)'>Greyed out: "
            + "; ".join(
                f"{escape(', '.join(names))}, as {escape(reason)}"
                for reason, names in reasons.items()
            )
            + "</span>"
            if reasons
            else ""
        )
        output = {"output_type": "display_data", "data": figure_bundle(self.figure), "metadata": {}}
        self.output.outputs = (output,)

    def _observer(self, name: str) -> Callable[[dict[str, Any]], None]:
        def observe(change: dict[str, Any]) -> None:
            if not self._syncing:
                self.on_control(name, change["new"])

        return observe
