"""Pure figure builders: data in, plotly ``go.Figure`` out. No widgets, no state, no torch.

The explorers rebuild their figure with these on every slider move and copy it into the figure
they show in place (``update_in_place``), so a figure in a notebook and a figure in an explorer
are drawn by the same code. Every builder emits the same traces in the same order for any input,
which is what makes in-place updates possible.

Every figure here is sized by its container: no builder sets a width, titles are wrapped
(``wrap_title``) so that they stay whole in a narrow output area, and the top margin grows with
the title's lines (``title_layout``).

Taught in: notebooks/01_dense_ffn.ipynb (timings), notebooks/02_routing.ipynb (routing),
notebooks/03_load_balancing.ipynb (capacity, balancing over training).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moe_lab.viz.views import CapacityView, RoutingView

KEPT_COLOR = "#4C78A8"
DROPPED_COLOR = "#E45756"
CAPACITY_COLOR = "#222222"
# Routed weights run from a clearly blue light tone (Blues at 0.375) to the darkest blue, so
# that a routed weight of 0.01 is still visibly blue; a cell the token was not routed to gets
# UNROUTED_COLOR, drawn by a trace of its own (``unrouted_heatmap``).
ROUTED_COLORSCALE = [[0.0, "#9ecae1"], [0.5, "#3182bd"], [1.0, "#08306b"]]
UNROUTED_COLOR = "#f0f0f0"
# A title line of at most this many characters fits a 560 px wide plot at plotly's 17 px title
# font (about 8.5 px per character): narrower than any JupyterLab output area on a laptop.
TITLE_LINE_CHARS = 64
TITLE_LINE_PX = 24  # height of one title line, for the top margin
# Token labels: horizontal when they fit, else slanted, else vertical; plotly picks the first
# angle at which no two labels overlap, for the width the figure really has.
TOKEN_LABEL_ANGLES = [0, -45, -90]


def wrap_title(parts: Sequence[str], max_chars: int = TITLE_LINE_CHARS, sep: str = ", ") -> str:
    """Join ``parts`` with ``sep`` into lines of at most ``max_chars`` characters, separated by
    ``<br>``. A part is never split, so a part longer than ``max_chars`` gets a line of its own.
    """
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= max_chars:
            lines[-1] = f"{lines[-1]}{sep}{part}"
        else:
            lines.append(part)
    return "<br>".join(lines)


def title_layout(title: str, below: int = 50) -> dict[str, Any]:
    """Layout settings for a (wrapped) title: the text, and a top margin that holds every line.

    Args:
        title: the title, lines separated by ``<br>``.
        below: margin to keep between the title's last line and the plot (subplot titles sit in it).
    """
    n_lines = title.count("<br>") + 1
    return {
        "title": {"text": title, "x": 0.0, "xanchor": "left", "xref": "paper"},
        "margin": {"t": below + TITLE_LINE_PX * n_lines + 16},
    }


def wrap_words(text: str, max_chars: int = TITLE_LINE_CHARS) -> str:
    """Word-wrap a plain title into ``<br>``-separated lines of at most ``max_chars`` characters
    (a title that already has ``<br>`` is left as it is)."""
    if "<br>" in text:
        return text
    return wrap_title(text.split(" "), max_chars, sep=" ")


def unrouted_heatmap(
    routed: np.ndarray, x: Sequence[Any], y: Sequence[Any], hover: Any
) -> go.Heatmap:
    """A heatmap that paints every cell where ``routed`` is False in ``UNROUTED_COLOR``.

    Drawn over the weights' heatmap: its routed cells are gaps (NaN), so the weights show there.

    Args:
        routed: (rows, columns) bool.
        x, y: the columns' and rows' coordinates, as in the weights' heatmap.
        hover: (rows, columns) hover texts.
    """
    z = np.where(routed, np.nan, 0.0)
    return go.Heatmap(
        z=z,
        x=list(x),
        y=list(y),
        zmin=0.0,
        zmax=1.0,
        colorscale=[[0.0, UNROUTED_COLOR], [1.0, UNROUTED_COLOR]],
        showscale=False,
        xgap=1,
        ygap=1,
        text=hover,
        hoverinfo="text",
        name="not routed",
    )


def routing_title(view: RoutingView) -> str:
    """The routing figure's title: the values the router really uses, and the load's CV.

    Switch and hash route every token to one expert whatever the top-k slider says; expert
    choice has no per-token k at all, each expert takes C tokens (C = ceil(cf·N·k/E), where k
    only sets the average experts per token); hash ignores the gate, hence the temperature.
    """
    state = view.state
    parts = [f"router={state.router!r}", f"E={view.n_experts}"]
    if state.router == "expert_choice":
        parts.append(f"each expert takes C={view.capacity} of {state.n_tokens} tokens")
        parts.append(f"C = ceil(cf·N·k/E) for cf={state.capacity_factor:g}, k={state.top_k}")
    elif state.router == "hash":
        parts.append("k=1 (a hash of the token id; gate and temperature unused)")
    else:
        parts.append(f"k={state.effective_top_k}")
    if state.router != "hash":
        parts.append(f"temperature={state.temperature:g}")
    if state.router == "noisy_topk":
        parts.append(f"noise std={state.noise:g}" if state.noise > 0 else "no noise (eval mode)")
    if "bias" not in state.ignored_fields() and state.bias != 0:
        parts.append(f"selection bias {state.bias:+g} on expert {state.bias_expert}")
    return wrap_title(parts)


def routing_figure(view: RoutingView) -> go.Figure:
    """Which expert(s) each token goes to, with what weight, and the load per expert.

    Traces, in order: 0 heatmap of combine weights (experts x token positions, words on the
    axis; 0 where not routed), 1 bars of the load per expert, 2 the mean load (dashed line),
    3 the cells a token was not routed to, in ``UNROUTED_COLOR`` (drawn over trace 0).

    Args:
        view: a ``RoutingView`` (``moe_lab.viz.views.routing_view``).

    Returns:
        A ``go.Figure`` with two rows, as wide as its container.
    """
    n_experts, n_tokens = view.combine.shape
    experts = list(range(n_experts))
    positions = list(range(n_tokens))
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.62, 0.38],
        vertical_spacing=0.2,
        subplot_titles=(
            "combine weight of token (column) at expert (row); grey = not routed there",
            f"load per expert (dashed: the mean); coefficient of variation {view.cv:.2f}",
        ),
    )
    hover = [
        [
            f"{view.words[n]} (position {n})<br>expert {e}: "
            + (f"weight {view.combine[e, n]:.3f}" if view.routed[e, n] else "not routed")
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
            colorscale=ROUTED_COLORSCALE,
            xgap=1,
            ygap=1,
            text=hover,
            hoverinfo="text",
            colorbar={"title": "weight", "len": 0.55, "y": 0.74},
            name="combine weight",
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
    figure.add_trace(unrouted_heatmap(view.routed, positions, experts, hover), row=1, col=1)
    figure.update_layout(height=600, showlegend=False, **title_layout(routing_title(view)))
    figure.update_layout(margin={"l": 60, "r": 30, "b": 40})
    figure.update_xaxes(
        tickvals=positions,
        ticktext=list(view.words),
        autotickangles=TOKEN_LABEL_ANGLES,
        title_text="token (word at each position)",
        row=1,
        col=1,
    )
    figure.update_yaxes(title_text="expert", autorange="reversed", tickvals=experts, row=1, col=1)
    figure.update_xaxes(title_text="expert", tickvals=experts, row=2, col=1)
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
    title = wrap_title(
        [
            f"cf={state.capacity_factor:g}",
            f"k={state.top_k}",
            f"skew={state.skew:g}",
            f"drop_policy={state.drop_policy!r}",
            f"C={view.capacity} per expert",
            f"dropped {view.dropped_fraction:.1%} of assignments",
            f"{lost} of {state.n_tokens} tokens got no expert",
        ]
    )
    figure.update_layout(barmode="stack", height=600, showlegend=False, **title_layout(title))
    figure.update_layout(margin={"l": 60, "r": 30, "b": 40})
    # Both panels show every expert, including one without assignments: the lower panel's
    # expert axis is fixed to the upper panel's, not left to autorange over the markers.
    figure.update_xaxes(
        title_text="expert", tickvals=experts, range=[-0.5, n_experts - 0.5], row=1, col=1
    )
    figure.update_yaxes(title_text="assignments", rangemode="tozero", row=1, col=1)
    figure.update_xaxes(
        title_text="token position in the batch", range=[-1, state.n_tokens], row=2, col=1
    )
    figure.update_yaxes(
        title_text="expert", tickvals=experts, range=[n_experts - 0.5, -0.5], row=2, col=1
    )
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
    figure.update_layout(xaxis_title=x_title, yaxis_title=y_title, height=380)
    figure.update_layout(**title_layout(wrap_words(title), below=30))
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
    figure.update_layout(yaxis_title=y_title, height=360)
    figure.update_layout(**title_layout(wrap_words(title), below=30))
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
    figure.update_layout(xaxis_title=x_title, yaxis_title=y_title, barmode="group", height=360)
    figure.update_layout(**title_layout(wrap_words(title), below=30))
    return figure


def update_in_place(widget: go.Figure, figure: go.Figure) -> None:
    """Copy ``figure``'s traces and layout into ``widget`` (a ``go.Figure`` or a
    ``go.FigureWidget``) without replacing it, so that code holding it sees the change.

    The target's traces must match ``figure``'s in number and type (every builder here emits a
    fixed list). On a ``FigureWidget`` one ``batch_update`` sends a single message to the browser.
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
