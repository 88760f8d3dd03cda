"""The routing explorer: change the router and watch where each token goes, live.

Controls: number of experts, top-k, router type, temperature, noise (``noisy_topk``), and a
selection bias on one expert. The figure shows the combine weight of every (token, expert)
pair, the load per expert and its coefficient of variation; everything is computed by the
library's routers (``moe_lab.viz.views.routing_view``).

Example:
    >>> explorer = RoutingExplorer()
    >>> explorer.controls["top_k"].value = 1            # what moving the slider does
    >>> int(explorer.view.load.sum()) == explorer.state.n_tokens
    True

Taught in: notebooks/02_routing.ipynb.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from moe_lab.config import ROUTER_TYPES
from moe_lab.viz.explorer import Explorer
from moe_lab.viz.figures import routing_figure
from moe_lab.viz.state import RoutingState
from moe_lab.viz.views import RoutingView, routing_view

MAX_EXPERTS = 16
_STYLE = {"description_width": "initial"}


class RoutingExplorer(Explorer[RoutingState, RoutingView]):
    """Routing explorer over a ``RoutingState`` (see the module docstring).

    Args:
        state: the initial state (default ``RoutingState()``: 8 experts, top-2 softmax).

    Attributes:
        state, view, figure, controls, history, widget: see ``moe_lab.viz.explorer.Explorer``.

    Taught in: notebooks/02_routing.ipynb.
    """

    compute = staticmethod(routing_view)
    build_figure = staticmethod(routing_figure)

    def __init__(self, state: RoutingState | None = None) -> None:
        super().__init__(state or RoutingState())

    def make_controls(self, state: RoutingState) -> dict[str, widgets.ValueWidget]:
        return {
            "n_experts": widgets.IntSlider(
                value=state.n_experts, min=1, max=MAX_EXPERTS, description="experts", style=_STYLE
            ),
            "top_k": widgets.IntSlider(
                value=state.top_k,
                min=1,
                max=state.n_experts,
                description="top-k",
                style=_STYLE,
            ),
            "router": widgets.Dropdown(
                options=list(ROUTER_TYPES), value=state.router, description="router", style=_STYLE
            ),
            "temperature": widgets.FloatLogSlider(
                value=state.temperature,
                base=10,
                min=-1,
                max=1,
                step=0.05,
                description="temperature",
                style=_STYLE,
            ),
            "noise": widgets.FloatSlider(
                value=state.noise,
                min=0.0,
                max=3.0,
                step=0.1,
                description="noise std (noisy_topk)",
                style=_STYLE,
            ),
            "bias": widgets.FloatSlider(
                value=state.bias,
                min=-1.0,
                max=1.0,
                step=0.05,
                description="selection bias",
                style=_STYLE,
            ),
            "bias_expert": widgets.IntSlider(
                value=state.bias_expert,
                min=0,
                max=state.n_experts - 1,
                description="bias on expert",
                style=_STYLE,
            ),
        }

    def constrain(self, state: RoutingState, name: str, value: Any) -> RoutingState:
        changes: dict[str, Any] = {name: value}
        if name == "n_experts":  # fewer experts: pull top_k and the biased expert into range
            changes["top_k"] = min(state.top_k, value)
            changes["bias_expert"] = min(state.bias_expert, value - 1)
        return state.replace(**changes)

    def sync_control_limits(self, state: RoutingState) -> None:
        self.controls["top_k"].max = state.n_experts
        self.controls["bias_expert"].max = state.n_experts - 1
