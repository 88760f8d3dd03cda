"""Pure figure builder of the routing-on-text explorer: a ``TextRoutingView`` in, a figure out.

Per MoE block, one row: the text laid out as it reads (lines broken at newlines and at ``WRAP``
columns), every character's cell coloured by its first-choice expert, hover showing its K
experts and weights; beside it, the block's load per expert for this text, in the same colours.
Cells without a character have a colour of their own (``EMPTY_COLOR``): nothing was routed
there. Spaces show as ``·`` and newlines as ``↵`` so every routed byte is visible, and each
character sits in its own cell, so neighbours never run together.

The builder emits the same traces in the same order for any view of the same number of MoE
blocks (two per block: heatmap, bars), which the explorer's in-place update needs.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from moe_lab.viz.text_routing import CHECKPOINT_LABELS, TextRoutingView

WRAP = 48  # characters per displayed line
EMPTY_COLOR = "#E8E8E8"  # a cell with no character: not routed
_PALETTE = list(dict.fromkeys(qualitative.Plotly + qualitative.Dark24 + qualitative.Alphabet))
VISIBLE = {" ": "·", "\n": "↵", "\t": "→"}


def expert_colors(n_experts: int) -> list[str]:
    """n distinct colours, the same expert always the same colour (up to 48 experts)."""
    if n_experts > len(_PALETTE):
        raise ValueError(f"{n_experts} experts: the palette has {len(_PALETTE)} colours")
    return _PALETTE[:n_experts]


def text_grid(chars: tuple[str, ...], width: int = WRAP) -> np.ndarray:
    """(lines, width) byte index shown in each cell, -1 where there is none.

    A newline occupies a cell at the end of its line (shown as ``↵``) and starts a new line;
    a line longer than ``width`` continues on the next.
    """
    rows: list[list[int]] = [[]]
    for index, char in enumerate(chars):
        if len(rows[-1]) == width:
            rows.append([])
        rows[-1].append(index)
        if char == "\n" and (index + 1 < len(chars)):
            rows.append([])
    grid = np.full((len(rows), width), -1, dtype=np.int64)
    for line, row in enumerate(rows):
        grid[line, : len(row)] = row
    return grid


def _categorical_scale(colors: list[str]) -> list[list]:
    """A stepped colorscale: value -1 -> EMPTY_COLOR, value e -> colors[e] (zmin -1.5, zmax E-0.5)."""
    steps = [EMPTY_COLOR, *colors]
    n = len(steps)
    scale = []
    for i, color in enumerate(steps):
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale


def text_routing_figure(view: TextRoutingView) -> go.Figure:
    """Each character coloured by its first-choice expert, per MoE block, with the loads.

    Traces, in order, per block: a heatmap of the text (z = first-choice expert, -1 = no
    character), then the bars of assignments per expert.

    Args:
        view: a ``TextRoutingView`` (``moe_lab.viz.text_routing.text_routing_view``).

    Returns:
        A ``go.Figure`` with one row per MoE block, sized to its container's width.
    """
    info = view.checkpoint
    n_experts, top_k = view.n_experts, int(info["top_k"])
    colors = expert_colors(n_experts)
    grid = text_grid(view.text)
    n_lines = grid.shape[0]
    titles = []
    for layer in view.layers:
        titles += [f"block {layer}: first-choice expert of each character", f"block {layer}: load"]
    figure = make_subplots(
        rows=len(view.layers),
        cols=2,
        column_widths=[0.8, 0.2],
        horizontal_spacing=0.06,
        vertical_spacing=0.3 / len(view.layers),
        subplot_titles=titles,
    )
    shown = np.vectorize(lambda i: VISIBLE.get(view.text[i], view.text[i]) if i >= 0 else "")(grid)
    for row, layer in enumerate(view.layers, start=1):
        indices, weights = view.indices[layer], view.weights[layer]
        z = np.where(grid >= 0, indices[np.maximum(grid, 0), 0], -1)  # (lines, WRAP)
        hover = np.empty(grid.shape, dtype=object)
        for (line, col), index in np.ndenumerate(grid):
            if index < 0:
                hover[line, col] = "no character: not routed"
                continue
            choices = "<br>".join(
                f"expert {e}: weight {w:.2f}"
                for e, w in zip(indices[index], weights[index], strict=True)
            )
            hover[line, col] = f"{view.text[index]!r} (byte {index})<br>{choices}"
        figure.add_trace(
            go.Heatmap(
                z=z,
                text=shown,
                texttemplate="%{text}",
                textfont={"size": 11},
                hovertext=hover,
                hoverinfo="text",
                zmin=-1.5,
                zmax=n_experts - 0.5,
                colorscale=_categorical_scale(colors),
                showscale=False,
                xgap=2,
                ygap=2,
            ),
            row=row,
            col=1,
        )
        figure.add_trace(
            go.Bar(
                x=list(range(n_experts)),
                y=view.load[layer],
                marker_color=colors,
                hovertemplate="expert %{x}: %{y} assignments<extra></extra>",
            ),
            row=row,
            col=2,
        )
        figure.update_xaxes(visible=False, row=row, col=1)
        figure.update_yaxes(visible=False, autorange="reversed", row=row, col=1)
        figure.update_xaxes(title_text="expert", row=row, col=2, dtick=1 if n_experts <= 8 else 4)
        figure.update_yaxes(rangemode="tozero", row=row, col=2)
    label = CHECKPOINT_LABELS.get(view.state.checkpoint, view.state.checkpoint)
    windows = -(-len(view.text) // int(info["window"]))
    figure.update_layout(
        title={
            "text": f"{label}: router {info['router']!r}, E={n_experts}, K={top_k}<br>"
            f"<sup>{len(view.text)} bytes in {windows} window(s) of {info['window']}, each a fresh"
            f" context; grey cells hold no character</sup>",
            "x": 0.01,
            "xanchor": "left",
        },
        autosize=True,
        height=140 + len(view.layers) * (70 + 24 * n_lines),
        showlegend=False,
        margin={"t": 110, "l": 20, "r": 20, "b": 40},
    )
    return figure
