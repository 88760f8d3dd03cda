"""The notebook 05 figure builders draw the numbers they are given (pure functions)."""

from __future__ import annotations

import numpy as np
import torch

from moe_lab.analysis import RoutingCapture, coactivation, specialization
from moe_lab.history import History
from moe_lab.viz.analysis_figures import (
    coactivation_figure,
    lab_load_heatmaps,
    lift_heatmaps,
    nmi_figure,
    relative_loads,
    saturation_figure,
    three_collapses_figure,
)


def small_capture() -> RoutingCapture:
    domain = torch.arange(4).repeat_interleave(16).repeat(8)  # (512,)
    first = domain.clone()  # expert = domain
    indices = torch.stack([first, (first + 4) % 8], dim=1)
    return RoutingCapture(
        tokens=torch.zeros(512, dtype=torch.long),
        domain=domain,
        char_class=domain % 2,
        position=torch.arange(512) % 64,
        indices={0: indices},
        weights={0: torch.full((512, 2), 0.5)},
        probs={0: torch.full((512, 8), 1 / 8)},
        domain_names=("a", "b", "c", "d"),
    )


def test_lift_heatmap_shows_log2_lift_and_the_lift_as_text() -> None:
    report = specialization(small_capture(), 0, ("domain", "char_class"), n_bootstrap=4)
    figure = lift_heatmaps({0: report})
    assert len(figure.data) == 2 and figure.layout.width is None
    z = np.asarray(figure.data[0].z, dtype=float)  # domain panel
    # expert d sees only domain d: lift 1 / P(d) = 4 -> log2 = 2; others 0 -> clipped at -3
    assert z[1, 1] == 2.0 and z[1, 0] == -3.0
    assert figure.data[0].text[1][1] == "4.0"


def test_nmi_figure_plots_every_row_with_its_interval() -> None:
    rows = [
        {
            "seed": s,
            "layer": 0,
            "label": lab,
            "nmi": 0.3,
            "low": 0.25,
            "high": 0.4,
            "shuffled": 1e-3,
        }
        for s in (0, 1)
        for lab in ("domain", "char_class")
    ]
    figure = nmi_figure(rows)
    assert [len(t.y) for t in figure.data[:2]] == [2, 2]
    assert np.allclose(figure.data[0].error_y.array, 0.1)
    assert np.allclose(figure.data[0].error_y.arrayminus, 0.05)


def test_coactivation_and_saturation_figures() -> None:
    result = coactivation(small_capture(), 0)
    figure = coactivation_figure([result])
    lift = np.asarray(figure.data[0].customdata, dtype=float)
    assert np.isnan(lift[0, 0]) and lift[0, 4] > 1  # experts d and d+4 always together
    curves = {"run": {0: ([0, 25], [0.3, 1.0]), 1: ([0, 25], [0.5, 1.0])}}
    figure = saturation_figure(curves)
    assert len(figure.data) == 2 and list(figure.data[1].y) == [0.5, 1.0]


def test_lab_load_heatmap_is_load_over_the_mean() -> None:
    history = History(step=[1, 2], tokens_per_expert={0: [[6, 2, 0, 0], [4, 4, 0, 0]]})
    relative = relative_loads(history, 0)  # (E, steps), mean load 2 per step
    assert relative.tolist() == [[3.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    figure = lab_load_heatmaps({"x": history}, layer=0)
    assert np.asarray(figure.data[0].z).max() == 3.0


def test_three_collapses_figure_panels() -> None:
    states = {
        "a": {"max_violation": 0.2, "dead": 0, "expert_cka": 0.3, "effective_rank": 32.0},
        "b": {"max_violation": 6.0, "dead": 8, "expert_cka": 0.3, "effective_rank": 16.0},
    }
    figure = three_collapses_figure(states, {"a": 8, "b": 32}, d_model=64)
    assert [list(t.y) for t in figure.data] == [[0.2, 6.0], [0.3, 0.3], [0.5, 0.25]]
    assert figure.data[0].text[1] == "6.0, dead 25%"
