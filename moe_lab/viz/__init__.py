"""Figures and widget explorers for the course.

Three layers, one job each:

    state.py     RoutingState, CapacityState: frozen dataclasses, settable from code, replayable
    views.py     state -> the numbers to draw, computed by moe_lab's routers and layers
    figures.py   pure plotly builders: data in, ``go.Figure`` out
    explorer.py  the shared widget machinery: controls -> state -> view -> figure, shown in place
    routing_explorer.py, capacity_explorer.py   the two explorers (thin)
    toy.py       seeded token batches with visible structure, skewed gates, load CV

Taught in: notebooks/02_routing.ipynb, notebooks/03_load_balancing.ipynb.
"""

from moe_lab.balancing import load_cv
from moe_lab.viz.capacity_explorer import CapacityExplorer
from moe_lab.viz.figures import (
    bar_figure,
    capacity_figure,
    grouped_bar_figure,
    line_figure,
    routing_figure,
    update_in_place,
)
from moe_lab.viz.routing_explorer import RoutingExplorer
from moe_lab.viz.state import CapacityState, RoutingState
from moe_lab.viz.toy import TokenBatch, gate_weight, skew_offsets, token_batch
from moe_lab.viz.views import (
    CapacityView,
    RoutingView,
    capacity_layer,
    capacity_view,
    explorer_router,
    route_state,
    routing_view,
)

__all__ = [
    "CapacityExplorer",
    "CapacityState",
    "CapacityView",
    "RoutingExplorer",
    "RoutingState",
    "RoutingView",
    "TokenBatch",
    "bar_figure",
    "capacity_figure",
    "capacity_layer",
    "capacity_view",
    "explorer_router",
    "gate_weight",
    "grouped_bar_figure",
    "line_figure",
    "load_cv",
    "route_state",
    "routing_figure",
    "routing_view",
    "skew_offsets",
    "token_batch",
    "update_in_place",
]
