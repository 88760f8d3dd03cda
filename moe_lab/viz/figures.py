"""Pure figure builders: data in, plotly ``go.Figure`` out. No widgets, no state, no torch.

The explorers build their ``FigureWidget`` from these and, on every slider move, rebuild the
figure and copy it into the widget in place (``update_in_place``), so a figure in a notebook and
a figure in an explorer are drawn by the same code. Every builder emits the same traces in the
same order for any input, which is what makes in-place updates possible.

Taught in: notebooks/01_dense_ffn.ipynb (timings), notebooks/02_routing.ipynb (routing),
notebooks/03_load_balancing.ipynb (capacity, balancing over training).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moe_lab.viz.views import CapacityView, RoutingView

KEPT_COLOR = "#4C78A8"
DROPPED_COLOR = "#E45756"
CAPACITY_COLOR = "#222222"


def routing_figure(view: RoutingView) -> go.Figure:
    """Which expert(s) each token goes to, with what weight, and the load per expert.

    Traces, in order: 0 heatmap of combine weights (experts x token positions, words on the
    axis), 1 bars of the load per expert, 2 the mean load (dashed line).

    Args:
        view: a ``RoutingView`` (``moe_lab.viz.views.routing_view``).

    Returns:
        A ``go.Figure`` with two rows.
    """
    state = view.state
    n_experts, n_tokens = view.combine.shape
    experts = list(range(n_experts))
    positions = list(range(n_tokens))
    k = view.mask.shape[1] if state.router == "expert_choice" else state.effective_top_k
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.62, 0.38],
        vertical_spacing=0.16,
        subplot_titles=(
            "combine weight of token (column) at expert (row); blank = not routed there",
            f"load per expert (dashed: the mean); coefficient of variation {view.cv:.2f}",
        ),
    )
    hover = [
        [
            f"{view.words[n]} (position {n})<br>expert {e}: weight {view.combine[e, n]:.3f}"
            for n in positions
        ]
        for e in experts
    ]
    figure.add_trace(
        go.Heatmap(
            z=view.combine,
            x=positions,
            y=experts,
            zmin=0.0,
            zmax=1.0,
            colorscale="Blues",
            text=hover,
            hoverinfo="text",
            colorbar={"title": "weight", "len": 0.6, "y": 0.75},
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Bar(x=experts, y=view.load, marker_color=KEPT_COLOR, name="load"), row=2, col=1
    )
    mean = float(np.mean(view.load))
    figure.add_trace(
        go.Scatter(
            x=[-0.5, n_experts - 0.5],
            y=[mean, mean],
            mode="lines",
            name="mean load",
            line={"dash": "dash", "color": CAPACITY_COLOR},
        ),
        row=2,
        col=1,
    )
    extra = f", C={view.capacity} tokens per expert" if view.capacity is not None else ""
    figure.update_layout(
        title=f"router={state.router!r}, E={n_experts}, k={k}, temperature={state.temperature:g}"
        f"{extra}",
        height=560,
        showlegend=False,
        margin={"t": 90, "l": 60, "r": 30, "b": 40},
    )
    figure.update_xaxes(tickvals=positions, ticktext=list(view.words), tickangle=0, row=1, col=1)
    figure.update_yaxes(title_text="expert", autorange="reversed", dtick=1, row=1, col=1)
    figure.update_xaxes(title_text="expert", dtick=1, row=2, col=1)
    figure.update_yaxes(title_text="assignments", rangemode="tozero", row=2, col=1)
    return figure


def capacity_figure(view: CapacityView) -> go.Figure:
    """Per-expert load against capacity, and which assignments were dropped, by position.

    Traces, in order: 0 kept assignments per expert (bars), 1 dropped assignments per expert
    (bars stacked on top), 2 the capacity C (line), 3 kept assignments as (token position,
    expert) markers, 4 dropped assignments as red crosses.

    Args:
        view: a ``CapacityView`` (``moe_lab.viz.views.capacity_view``).

    Returns:
        A ``go.Figure`` with two rows.
    """
    state = view.state
    n_experts = view.load.shape[0]
    experts = list(range(n_experts))
    token_pos, slot = np.nonzero(np.ones_like(view.dropped))  # every (n, k), row-major
    expert_of = view.indices[token_pos, slot]
    is_dropped = view.dropped[token_pos, slot]
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.45, 0.55],
        vertical_spacing=0.16,
        subplot_titles=(
            f"assignments per expert: kept (blue), dropped (red); line: capacity C={view.capacity}",
            "each assignment at (token position, expert); crosses were dropped",
        ),
    )
    figure.add_trace(go.Bar(x=experts, y=view.kept, name="kept", marker_color=KEPT_COLOR), 1, 1)
    figure.add_trace(
        go.Bar(x=experts, y=view.load - view.kept, name="dropped", marker_color=DROPPED_COLOR),
        1,
        1,
    )
    figure.add_trace(
        go.Scatter(
            x=[-0.5, n_experts - 0.5],
            y=[view.capacity, view.capacity],
            mode="lines",
            name="capacity",
            line={"color": CAPACITY_COLOR, "width": 2},
        ),
        1,
        1,
    )
    figure.add_trace(
        go.Scatter(
            x=token_pos[~is_dropped],
            y=expert_of[~is_dropped],
            mode="markers",
            name="kept",
            marker={"color": KEPT_COLOR, "size": 7},
            customdata=slot[~is_dropped],
            hovertemplate="token %{x}, expert %{y}, choice %{customdata}",
        ),
        2,
        1,
    )
    figure.add_trace(
        go.Scatter(
            x=token_pos[is_dropped],
            y=expert_of[is_dropped],
            mode="markers",
            name="dropped",
            marker={"color": DROPPED_COLOR, "size": 9, "symbol": "x"},
            customdata=slot[is_dropped],
            hovertemplate="token %{x}, expert %{y}, choice %{customdata}",
        ),
        2,
        1,
    )
    lost = int(view.tokens_without_expert.sum())
    figure.update_layout(
        title=f"cf={state.capacity_factor:g}, k={state.top_k}, skew={state.skew:g},"
        f" drop_policy={state.drop_policy!r}: dropped {view.dropped_fraction:.1%} of"
        f" assignments; {lost} of {state.n_tokens} tokens got no expert",
        barmode="stack",
        height=560,
        showlegend=False,
        margin={"t": 90, "l": 60, "r": 30, "b": 40},
    )
    figure.update_xaxes(title_text="expert", dtick=1, row=1, col=1)
    figure.update_yaxes(title_text="assignments", rangemode="tozero", row=1, col=1)
    figure.update_xaxes(
        title_text="token position in the batch", range=[-1, state.n_tokens], row=2, col=1
    )
    figure.update_yaxes(title_text="expert", dtick=1, autorange="reversed", row=2, col=1)
    return figure


def line_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
) -> go.Figure:
    """One line per named series over a shared x (activation curves, load over training steps).

    Returns:
        A ``go.Figure`` with one ``Scatter`` trace per series, in the mapping's order.
    """
    figure = go.Figure()
    for name, values in series.items():
        figure.add_trace(go.Scatter(x=list(x), y=list(values), mode="lines", name=name))
    figure.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=380)
    if log_y:
        figure.update_yaxes(type="log")
    return figure


def bar_figure(
    values: Mapping[str, float], title: str, y_title: str, text_format: str = "{:.3g}"
) -> go.Figure:
    """One bar per named value (timings, parameter shares), labelled with its value.

    Returns:
        A ``go.Figure`` with one ``Bar`` trace.
    """
    names = list(values)
    heights = [float(values[name]) for name in names]
    figure = go.Figure(
        go.Bar(
            x=names, y=heights, text=[text_format.format(v) for v in heights], textposition="auto"
        )
    )
    figure.update_layout(title=title, yaxis_title=y_title, height=360)
    return figure


def grouped_bar_figure(
    groups: Mapping[str, Sequence[float]], title: str, x_title: str, y_title: str
) -> go.Figure:
    """Bars per x position, one colour per named group (load per expert under several methods).

    Returns:
        A ``go.Figure`` with one ``Bar`` trace per group, ``barmode="group"``.
    """
    figure = go.Figure()
    for name, values in groups.items():
        figure.add_trace(go.Bar(x=list(range(len(values))), y=list(values), name=name))
    figure.update_layout(
        title=title, xaxis_title=x_title, yaxis_title=y_title, barmode="group", height=360
    )
    return figure


def update_in_place(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Copy ``figure``'s traces and layout into ``widget`` without replacing the widget.

    The widget's traces must match ``figure``'s in number and type (every builder here emits a
    fixed list). One ``batch_update`` sends a single message to the browser.
    """
    if len(widget.data) != len(figure.data):
        raise ValueError(
            f"the widget has {len(widget.data)} traces but the new figure has {len(figure.data)}:"
            " a builder must always emit the same traces"
        )
    with widget.batch_update():
        for target, source in zip(widget.data, figure.data, strict=True):
            if target.type != source.type:
                raise ValueError(f"trace type changed from {target.type} to {source.type}")
            properties = source.to_plotly_json()
            properties.pop("type", None)
            properties.pop("uid", None)
            target.update(properties, overwrite=True)
        widget.layout.update(figure.layout.to_plotly_json(), overwrite=True)
