"""The notebook 05 figure builders draw the numbers they are given (pure functions)."""

from __future__ import annotations

import numpy as np
import torch

from moe_lab.analysis import RoutingCapture, coactivation, specialization
from moe_lab.history import History
from moe_lab.viz.analysis_figures import (
    coactivation_figure,
    lab_curves,
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


def test_lab_curves_are_the_seed_means_by_hand() -> None:
    # Two seeds of one setting, E = 4, three steps. MaxVio per step = (max - mean) / mean load;
    # the curves average the seeds, then smooth over a 10-step window (all 3 steps fit in it).
    seed_a = History(
        step=[1, 2, 3],
        tokens_per_expert={0: [[6, 2, 0, 0], [4, 4, 0, 0], [2, 2, 2, 2]]},
        router_entropy={0: [0.0, 0.5, 1.0]},
        eval_step=[0, 3],
        val_loss=[5.0, 3.0],
    )
    seed_b = History(
        step=[1, 2, 3],
        tokens_per_expert={0: [[2, 2, 2, 2], [2, 2, 2, 2], [8, 0, 0, 0]]},
        router_entropy={0: [1.0, 1.0, 0.0]},
        eval_step=[0, 3],
        val_loss=[5.5, 2.0],
    )
    figure = lab_curves({"setting": [seed_a, seed_b]}, layer=0)
    maxvio, entropy, dead, val = figure.data
    # MaxVio: seed a 2, 1, 0; seed b 0, 0, 3 -> means 1, 0.5, 1.5 -> running means 1, 0.75, 1
    assert np.allclose(np.asarray(maxvio.y), [1.0, 0.75, 1.0])
    # dead (load < 1% of the mean 2): seed a 2, 2, 0; seed b 0, 0, 3 -> means 1, 1, 1.5
    assert np.allclose(np.asarray(dead.y), [1.0, 1.0, 7 / 6])
    # entropy / log 4: means 0.5, 0.75, 0.5 (divided by log 4), then running means
    expected = np.cumsum([0.5, 0.75, 0.5]) / np.arange(1, 4) / np.log(4)
    assert np.allclose(np.asarray(entropy.y), expected)
    assert np.asarray(val.y).tolist() == [5.25, 2.5] and list(val.x) == [0, 3]
    assert np.asarray(maxvio.x).tolist() == [1, 2, 3]


def test_three_collapses_figure_panels() -> None:
    states = {
        "a": {"max_violation": 0.2, "dead": 0, "expert_cka": 0.3, "effective_rank": 32.0},
        "b": {"max_violation": 6.0, "dead": 8, "expert_cka": 0.3, "effective_rank": 16.0},
    }
    figure = three_collapses_figure(states, {"a": 8, "b": 32}, d_model=64)
    assert [list(t.y) for t in figure.data] == [[0.2, 6.0], [0.3, 0.3], [0.5, 0.25]]
    assert figure.data[0].text[1] == "6.0, dead 25%"
