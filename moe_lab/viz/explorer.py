"""The machinery every explorer shares: state -> view -> figure, with controls bound to the state.

An explorer holds one state (a frozen dataclass from ``moe_lab.viz.state``). A slider move calls
``on_control(name, value)``, which makes a new state and hands it to ``set_state``; code calls
``set_state`` directly. ``set_state`` recomputes the view with the library, rebuilds the figure
with a pure builder and copies it into the ``FigureWidget`` in place, then moves the controls to
match. Tests therefore drive the same path a reader drives: set a widget's ``value`` (or call
``set_state``) and read the FigureWidget's traces.

Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import ipywidgets as widgets
import plotly.graph_objects as go

from moe_lab.viz.figures import update_in_place

StateT = TypeVar("StateT")
ViewT = TypeVar("ViewT")


class Explorer(Generic[StateT, ViewT]):
    """A state, its view, a ``FigureWidget`` and the controls that edit the state.

    Subclasses provide four hooks: ``compute(state) -> view`` (with the library),
    ``build_figure(view) -> go.Figure`` (a pure builder), ``make_controls(state)`` (one widget
    per state field they edit, keyed by field name) and optionally ``constrain(state, name,
    value)`` (how one control's change adjusts the others, e.g. top_k <= n_experts).

    Attributes:
        state: the current state.
        view: the current view (what the figure shows, as numpy arrays).
        figure: the ``go.FigureWidget``, updated in place.
        controls: dict field name -> ipywidgets control.
        history: every state applied, in order (replay it with ``replay``).
        widget: the controls and the figure in one box, for ``display``.
    """

    compute: Callable[[Any], Any]
    build_figure: Callable[[Any], go.Figure]

    def __init__(self, state: StateT) -> None:
        self.state: StateT = state
        self.view: ViewT = type(self).compute(state)
        self.figure = go.FigureWidget(type(self).build_figure(self.view))
        self.controls: dict[str, widgets.ValueWidget] = self.make_controls(state)
        self.history: list[StateT] = [state]
        self._syncing = False
        for name, control in self.controls.items():
            control.observe(self._observer(name), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox(list(self.controls.values()), layout={"flex_flow": "row wrap"}),
                self.figure,
            ]
        )

    # Hooks -----------------------------------------------------------------------------------
    def make_controls(self, state: StateT) -> dict[str, widgets.ValueWidget]:
        raise NotImplementedError

    def constrain(self, state: StateT, name: str, value: Any) -> StateT:
        """The state after control ``name`` moved to ``value``; override to keep fields valid."""
        return state.replace(**{name: value})  # type: ignore[attr-defined]

    def sync_control_limits(self, state: StateT) -> None:
        """Adjust controls' ranges to the state (e.g. top_k's max); called before values move."""

    # The one path every change takes ---------------------------------------------------------
    def on_control(self, name: str, value: Any) -> None:
        """What a slider calls: the state with field ``name`` set to ``value``, applied."""
        self.set_state(self.constrain(self.state, name, value))

    def set_state(self, state: StateT) -> ViewT:
        """Apply ``state``: recompute the view, update the figure in place, move the controls.

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
        return view

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

    def _observer(self, name: str) -> Callable[[dict[str, Any]], None]:
        def observe(change: dict[str, Any]) -> None:
            if not self._syncing:
                self.on_control(name, change["new"])

        return observe
