"""Pure figure builders for notebook 05: routing analysis and the collapse lab. Data in, figure out.

Every builder takes the plain results of ``moe_lab.analysis`` (or of a ``History``) and returns a
``go.Figure`` sized to its container's width (no fixed width), with titles short enough to stay
whole and axis labels that say their units.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moe_lab.analysis.ablation import AblationEffects
from moe_lab.analysis.coactivation import Coactivation
from moe_lab.analysis.collapse import DEAD_FRACTION
from moe_lab.analysis.specialization import SpecializationReport
from moe_lab.history import History

LABEL_TITLES = {"domain": "domain", "char_class": "character class", "token": "byte"}
LABEL_COLORS = {"domain": "#4C78A8", "char_class": "#F58518", "token": "#54A24B"}
DIVERGING = "RdBu_r"
_LAYOUT = {"autosize": True, "margin": {"t": 90, "l": 70, "r": 30, "b": 50}}


def _log2_clipped(values: np.ndarray, limit: float = 3.0) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.clip(np.log2(values), -limit, limit)


def lift_heatmaps(
    reports: Mapping[int, SpecializationReport], labels: Sequence[str] = ("domain", "char_class")
) -> go.Figure:
    """Expert x label lift per MoE block: how many times its base rate an expert sees a label.

    Rows: labels; columns: blocks. Colour: log2 of the lift, clipped to [-3, 3] (red above the
    base rate, blue below, white at it); the cell text is the lift itself.
    """
    layers = sorted(reports)
    figure = make_subplots(
        rows=len(labels),
        cols=len(layers),
        horizontal_spacing=0.06,
        vertical_spacing=0.16,
        subplot_titles=[
            f"block {layer}: {LABEL_TITLES[label]}" for label in labels for layer in layers
        ],
    )
    for row, label in enumerate(labels, start=1):
        for col, layer in enumerate(layers, start=1):
            score = reports[layer][label]
            lift = score.lift().numpy()  # (E, C)
            share = score.share_by_expert().numpy()
            n_experts = lift.shape[0]
            hover = [
                [
                    f"expert {e}, {name}: {share[e, c]:.0%} of its tokens, {lift[e, c]:.2f}x the base rate"
                    for c, name in enumerate(score.label_names)
                ]
                for e in range(n_experts)
            ]
            figure.add_trace(
                go.Heatmap(
                    z=_log2_clipped(lift),
                    x=list(score.label_names),
                    y=list(range(n_experts)),
                    text=np.vectorize(lambda v: f"{v:.1f}")(lift),
                    texttemplate="%{text}" if n_experts <= 16 else None,
                    hovertext=hover,
                    hoverinfo="text",
                    zmin=-3,
                    zmax=3,
                    zmid=0,
                    colorscale=DIVERGING,
                    showscale=row == 1 and col == len(layers),
                    colorbar={"title": "log2 lift", "len": 0.5, "y": 0.78},
                    xgap=1,
                    ygap=1,
                ),
                row=row,
                col=col,
            )
            figure.update_yaxes(
                title_text="expert" if col == 1 else None,
                autorange="reversed",
                dtick=1 if n_experts <= 16 else 4,
                row=row,
                col=col,
            )
    figure.update_layout(
        title="Which labels each expert sees, against their base rate (1.0 = base rate)",
        height=330 * len(labels) + 80,
        **_LAYOUT,
    )
    return figure


def nmi_figure(rows: Sequence[Mapping]) -> go.Figure:
    """NMI(top-1 expert; label) per block and label, every seed a marker with its interval.

    Args:
        rows: dicts with ``seed``, ``layer``, ``label``, ``nmi``, ``low``, ``high`` and
            ``shuffled`` (the shuffled baseline's largest value).
    """
    figure = go.Figure()
    labels = list(dict.fromkeys(row["label"] for row in rows))
    layers = sorted({row["layer"] for row in rows})
    seeds = sorted({row["seed"] for row in rows})
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        chosen = [r for r in rows if r["label"] == label]
        x = [
            layers.index(r["layer"]) - 0.4 + width * (i + 0.5) + 0.05 * (seeds.index(r["seed"]) - 1)
            for r in chosen
        ]
        figure.add_trace(
            go.Scatter(
                x=x,
                y=[r["nmi"] for r in chosen],
                mode="markers",
                name=LABEL_TITLES[label],
                marker={"color": LABEL_COLORS[label], "size": 9},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [r["high"] - r["nmi"] for r in chosen],
                    "arrayminus": [r["nmi"] - r["low"] for r in chosen],
                },
                customdata=[[r["seed"], r["shuffled"]] for r in chosen],
                hovertemplate="seed %{customdata[0]}: NMI %{y:.3f}"
                " (shuffled labels: at most %{customdata[1]:.4f})<extra></extra>",
            )
        )
    baseline = max(r["shuffled"] for r in rows)
    figure.add_trace(
        go.Scatter(
            x=[-0.5, len(layers) - 0.5],
            y=[baseline, baseline],
            mode="lines",
            name="shuffled labels (largest)",
            line={"dash": "dot", "color": "#555555"},
        )
    )
    figure.update_layout(
        title="Normalized mutual information between the top-1 expert and each label",
        xaxis={"tickvals": list(range(len(layers))), "ticktext": [f"block {b}" for b in layers]},
        yaxis={
            "title": "NMI (0 = independent, 1 = one determines the other)",
            "rangemode": "tozero",
        },
        height=420,
        legend={"orientation": "h", "y": -0.15},
        **_LAYOUT,
    )
    return figure


def ablation_figure(effects: AblationEffects, label: str) -> go.Figure:
    """Loss increase per (block, expert) and label value when that expert is removed (%)."""
    relative = 100 * effects.relative(label).numpy()  # (layers, E, C)
    n_layers, n_experts, _ = relative.shape
    names = effects.label_names[label]
    figure = make_subplots(
        rows=1,
        cols=n_layers,
        horizontal_spacing=0.05,
        subplot_titles=[f"block {layer}" for layer in effects.layers],
    )
    limit = float(np.abs(relative).max()) or 1.0
    for col in range(n_layers):
        figure.add_trace(
            go.Heatmap(
                z=relative[col],
                x=list(names),
                y=list(range(n_experts)),
                text=np.vectorize(lambda v: f"{v:+.0f}")(relative[col]),
                texttemplate="%{text}",
                zmin=-limit,
                zmax=limit,
                zmid=0,
                colorscale=DIVERGING,
                showscale=col == n_layers - 1,
                colorbar={"title": "loss +%"},
                hovertemplate="expert %{y} removed, %{x}: loss %{z:+.1f}%<extra></extra>",
                xgap=1,
                ygap=1,
            ),
            row=1,
            col=col + 1,
        )
        figure.update_yaxes(
            title_text="expert removed" if col == 0 else None,
            autorange="reversed",
            dtick=1,
            row=1,
            col=col + 1,
        )
    figure.update_layout(
        title=f"Removing one expert: loss change by {LABEL_TITLES[label]} (% of the intact loss)",
        height=420,
        **_LAYOUT,
    )
    return figure


def coactivation_figure(results: Sequence[Coactivation]) -> go.Figure:
    """Co-activation lift per block: pair share / the share independence gives (log2 colour)."""
    figure = make_subplots(
        rows=1,
        cols=len(results),
        horizontal_spacing=0.06,
        subplot_titles=[f"block {r.layer}" for r in results],
    )
    for col, result in enumerate(results, start=1):
        lift = result.lift().numpy()
        np.fill_diagonal(lift, np.nan)
        n_experts = lift.shape[0]
        figure.add_trace(
            go.Heatmap(
                z=_log2_clipped(lift),
                text=np.vectorize(lambda v: "" if math.isnan(v) else f"{v:.1f}")(lift),
                texttemplate="%{text}" if n_experts <= 16 else None,
                customdata=lift,
                zmin=-3,
                zmax=3,
                zmid=0,
                colorscale=DIVERGING,
                showscale=col == len(results),
                colorbar={"title": "log2 lift"},
                hovertemplate="experts %{y} and %{x}: %{customdata:.2f}x independence<extra></extra>",
                xgap=1,
                ygap=1,
            ),
            row=1,
            col=col,
        )
        figure.update_yaxes(autorange="reversed", dtick=1, row=1, col=col)
        figure.update_xaxes(dtick=1, row=1, col=col)
    figure.update_layout(
        title="How often two experts serve the same token, against independence (1.0)",
        height=400,
        **_LAYOUT,
    )
    return figure


def saturation_figure(
    curves: Mapping[str, Mapping[int, tuple[Sequence[int], Sequence[float]]]],
) -> go.Figure:
    """Router saturation over training: one line per (run, block), final = 1.

    Args:
        curves: run name -> block -> (steps, saturation), as ``saturation_curves`` returns.
    """
    figure = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot")
    palette = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2")
    for i, (name, by_layer) in enumerate(curves.items()):
        for j, (layer, (steps, values)) in enumerate(sorted(by_layer.items())):
            figure.add_trace(
                go.Scatter(
                    x=list(steps),
                    y=list(values),
                    mode="lines+markers",
                    name=f"{name}, block {layer}",
                    line={"color": palette[i % len(palette)], "dash": dashes[j % len(dashes)]},
                )
            )
    figure.update_layout(
        title="Router saturation: share of the final top-K choices already made",
        xaxis_title="training step",
        yaxis={"title": "saturation", "range": [0, 1.02]},
        height=420,
        legend={"font": {"size": 10}},
        **_LAYOUT,
    )
    return figure


def relative_loads(history: History, layer: int) -> np.ndarray:
    """(E, steps) each expert's load divided by the mean load, per training step."""
    loads = np.asarray(history.tokens_per_expert[layer], dtype=float).T  # (E, steps)
    return loads / loads.mean(axis=0, keepdims=True)


def lab_load_heatmaps(histories: Mapping[str, History], layer: int, columns: int = 2) -> go.Figure:
    """Per setting, each expert's load / the mean load over training (0 = dead, 1 = fair share).

    Experts are sorted by their load at the end, busiest on top.
    """
    names = list(histories)
    rows = math.ceil(len(names) / columns)
    figure = make_subplots(
        rows=rows,
        cols=columns,
        horizontal_spacing=0.08,
        vertical_spacing=0.5 / rows,
        subplot_titles=names,
    )
    for i, name in enumerate(names):
        relative = relative_loads(histories[name], layer)
        order = np.argsort(-relative[:, -20:].mean(axis=1))
        steps = histories[name].step
        figure.add_trace(
            go.Heatmap(
                # float32: plotly stores numpy arrays in binary; float64 would double the bytes
                z=relative[order].astype(np.float32),  # (E, steps)
                x=np.asarray(steps, dtype=np.int32),
                y=[str(e) for e in order],
                zmin=0,
                zmax=4,
                colorscale="Viridis",
                showscale=i == 0,
                colorbar={"title": "load / mean", "len": 0.3, "y": 0.85},
                hovertemplate="step %{x}, expert %{y}: %{z:.2f}x the mean load<extra></extra>",
            ),
            row=i // columns + 1,
            col=i % columns + 1,
        )
        figure.update_yaxes(
            showticklabels=False, title_text="experts", row=i // columns + 1, col=i % columns + 1
        )
    figure.update_layout(
        title=f"Load per expert over training, block {layer} (experts sorted by final load)",
        height=170 * rows + 120,
        **_LAYOUT,
    )
    return figure


def _smooth(values: Sequence[float], window: int = 10) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def lab_curves(runs: Mapping[str, Sequence[History]], layer: int) -> go.Figure:
    """Per setting (mean over its seeds): MaxVio, normalized router entropy, dead experts and
    validation loss over training, for one block. Per-step values are smoothed over 10 steps."""
    figure = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.1,
        vertical_spacing=0.14,
        subplot_titles=(
            "MaxVio = (max - mean) / mean load",
            "router entropy / log E (1 = uniform)",
            "dead experts (under 1% of the mean load)",
            "validation loss (nats per byte)",
        ),
    )
    palette = [
        "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2",
        "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC", "#EECA3B",
    ]  # fmt: skip
    for i, (name, histories) in enumerate(runs.items()):
        color = palette[i % len(palette)]
        per_seed = {"maxvio": [], "entropy": [], "dead": []}
        for h in histories:
            loads = np.asarray(h.tokens_per_expert[layer], dtype=float)  # (steps, E)
            mean = loads.mean(axis=1, keepdims=True)
            per_seed["maxvio"].append((loads.max(axis=1) - mean[:, 0]) / mean[:, 0])
            per_seed["entropy"].append(
                np.asarray(h.router_entropy[layer]) / math.log(loads.shape[1])
            )
            per_seed["dead"].append((loads < DEAD_FRACTION * mean).sum(axis=1))
        # numpy arrays in float32 / int32: plotly stores them in binary, a fraction of the bytes
        # of JSON lists (notebook 05's page on the offline site)
        steps = np.asarray(histories[0].step, dtype=np.int32)
        for key, (row, col) in {"maxvio": (1, 1), "entropy": (1, 2), "dead": (2, 1)}.items():
            mean_curve = np.mean(per_seed[key], axis=0)  # (steps,)
            figure.add_trace(
                go.Scatter(
                    x=steps,
                    y=np.asarray(_smooth(list(mean_curve)), dtype=np.float32),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=key == "maxvio",
                    line={"color": color},
                ),
                row=row,
                col=col,
            )
        val = np.mean([h.val_loss for h in histories], axis=0)
        figure.add_trace(
            go.Scatter(
                x=histories[0].eval_step,
                y=val,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                line={"color": color},
                marker={"size": 4},
            ),
            row=2,
            col=2,
        )
    figure.update_yaxes(type="log", row=1, col=1)
    figure.update_yaxes(range=[0.8, 3.0], row=2, col=2)
    for col in (1, 2):
        figure.update_xaxes(title_text="step", row=2, col=col)
    figure.update_layout(
        title=f"The collapse lab, block {layer} (mean of the seeds)",
        height=720,
        legend={"orientation": "h", "y": -0.12, "font": {"size": 11}},
        **_LAYOUT,
    )
    return figure


def three_collapses_figure(
    states: Mapping[str, Mapping[str, float]], n_experts: Mapping[str, int], d_model: int
) -> go.Figure:
    """The three collapses side by side: one panel per collapse, one bar per model.

    Args:
        states: model name -> the averages over its MoE blocks of
            ``moe_lab.analysis.lab.end_state``'s measures (``max_violation``, ``dead``,
            ``expert_cka``, ``effective_rank``).
        n_experts: model name -> E (dead experts are labelled as a share of E).
        d_model: D (the effective rank is shown as a share of D).
    """
    names = list(states)
    colors = ["#BAB0AC", "#4C78A8", "#E45756", "#54A24B", "#B279A2"][: len(names)]
    figure = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.09,
        subplot_titles=(
            "1. routing collapse: MaxVio",
            "2. homogenization: expert CKA",
            "3. representation: rank / D",
        ),
    )
    panels = (
        [states[n]["max_violation"] for n in names],
        [states[n]["expert_cka"] for n in names],
        [states[n]["effective_rank"] / d_model for n in names],
    )
    labels = (
        [
            f"{v:.1f}, dead {states[n]['dead'] / n_experts[n]:.0%}"
            for n, v in zip(names, panels[0], strict=True)
        ],
        [f"{v:.2f}" for v in panels[1]],
        [f"{v:.2f}" for v in panels[2]],
    )
    for col, (values, text) in enumerate(zip(panels, labels, strict=True), start=1):
        figure.add_trace(
            go.Bar(
                x=names,
                y=values,
                text=text,
                textposition="outside",
                cliponaxis=False,
                marker_color=colors,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    figure.update_yaxes(
        title_text="(max - mean) / mean load; 0 = balanced", rangemode="tozero", row=1, col=1
    )
    figure.update_yaxes(title_text="mean pairwise CKA; 1 = identical", range=[0, 1.1], row=1, col=2)
    figure.update_yaxes(
        title_text="effective rank of router inputs / D", range=[0, 1.1], row=1, col=3
    )
    figure.update_layout(
        title="Three collapses, three measures (means over the MoE blocks)",
        height=440,
        **_LAYOUT,
    )
    return figure
