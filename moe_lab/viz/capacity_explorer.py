"""The capacity explorer: capacity factor, top-k, router skew and drop priority, live.

The figure shows each expert's load against its capacity C = ceil(cf * N * K / E), which
assignments were dropped (by token position in the batch) and the dropped fraction, all read
from a real ``MoELayer`` with the capacity backend (``moe_lab.viz.views.capacity_view``).

Example:
    >>> explorer = CapacityExplorer()
    >>> explorer.controls["capacity_factor"].value = 4.0   # >= E / K: nothing can drop
    >>> explorer.view.dropped_fraction
    0.0

Taught in: notebooks/03_load_balancing.ipynb.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from moe_lab.config import DROP_POLICIES
from moe_lab.viz.explorer import Explorer
from moe_lab.viz.figures import capacity_figure
from moe_lab.viz.state import CapacityState
from moe_lab.viz.views import CapacityView, capacity_view

_STYLE = {"description_width": "initial"}


class CapacityExplorer(Explorer[CapacityState, CapacityView]):
    """Capacity explorer over a ``CapacityState`` (see the module docstring).

    Args:
        state: the initial state (default ``CapacityState()``: 8 experts, top-2, cf 1.0).

    Attributes:
        state, view, figure, controls, history, widget: see ``moe_lab.viz.explorer.Explorer``.

    Taught in: notebooks/03_load_balancing.ipynb.
    """

    compute = staticmethod(capacity_view)
    build_figure = staticmethod(capacity_figure)

    def __init__(self, state: CapacityState | None = None) -> None:
        super().__init__(state or CapacityState())

    def make_controls(self, state: CapacityState) -> dict[str, widgets.ValueWidget]:
        return {
            "capacity_factor": widgets.FloatSlider(
                value=state.capacity_factor,
                min=0.25,
                max=8.0,
                step=0.25,
                description="capacity factor",
                style=_STYLE,
            ),
            "top_k": widgets.IntSlider(
                value=state.top_k, min=1, max=state.n_experts, description="top-k", style=_STYLE
            ),
            "skew": widgets.FloatSlider(
                value=state.skew,
                min=0.0,
                max=4.0,
                step=0.25,
                description="router skew",
                style=_STYLE,
            ),
            "drop_policy": widgets.Dropdown(
                options=list(DROP_POLICIES),
                value=state.drop_policy,
                description="drop priority",
                style=_STYLE,
            ),
        }

    def constrain(self, state: CapacityState, name: str, value: Any) -> CapacityState:
        return state.replace(**{name: value})

    def sync_control_limits(self, state: CapacityState) -> None:
        self.controls["top_k"].max = state.n_experts
