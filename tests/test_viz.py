"""Tests of moe_lab.viz: toy inputs, pure figure builders and the two explorers, headless.

Explorer tests drive the explorers the way a reader does (set a control's ``value``, which
fires the same observer a slider fires, or call ``set_state``) and then read what the
explorer's figure holds, checked against references computed here independently of the
explorer: hand-written softmax top-k, the hash formula, and a plain Python capacity queue.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from moe_lab.viz import (
    CapacityExplorer,
    CapacityState,
    RoutingExplorer,
    RoutingState,
    bar_figure,
    capacity_layer,
    gate_weight,
    line_figure,
    load_cv,
    skew_offsets,
    token_batch,
    update_in_place,
)
from moe_lab.viz.explorer import IGNORED_CLASS
from moe_lab.viz.figures import UNROUTED_COLOR
from moe_lab.viz.state import D_MODEL
from moe_lab.viz.views import capacity_view, routing_view

KNUTH = 2654435761  # Knuth's multiplicative hash constant, as in Roller et al. 2021's hash layers


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def hand_softmax_topk(state: RoutingState) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (N, K), renormalized weights (N, K)) by hand, from the toy inputs alone."""
    batch = token_batch(state.n_tokens, D_MODEL, seed=state.seed)
    weight = gate_weight(state.n_experts, D_MODEL, seed=state.seed)
    logits = batch.x @ weight.T / state.temperature  # (N, E)
    probs = torch.exp(logits - logits.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)
    top, idx = probs.topk(state.top_k, dim=-1)
    return idx, top / top.sum(-1, keepdim=True)


def python_capacity_queue(
    indices: np.ndarray, weights: np.ndarray, capacity: int, policy: str
) -> np.ndarray:
    """(N, K) bool dropped, by a plain loop: assignments claim their expert's C slots in
    priority order (position: all first choices in token order, then all second choices...;
    probability: highest combine weight first, ties by that position order)."""
    n_tokens, k = indices.shape
    order = [(n, s) for s in range(k) for n in range(n_tokens)]  # slot-major: GShard's order
    if policy == "probability":
        order = sorted(order, key=lambda ns: -weights[ns])  # sorted() is stable: ties keep order
    used: dict[int, int] = {}
    dropped = np.zeros((n_tokens, k), dtype=bool)
    for n, s in order:
        expert = int(indices[n, s])
        if used.get(expert, 0) < capacity:
            used[expert] = used.get(expert, 0) + 1
        else:
            dropped[n, s] = True
    return dropped


def bars(figure: go.Figure, trace: int) -> np.ndarray:
    return np.asarray(figure.data[trace].y)


def heatmap(figure: go.Figure) -> np.ndarray:
    return np.asarray(figure.data[0].z, dtype=float)  # (E, N)


@pytest.fixture(scope="module")
def routing_explorer() -> RoutingExplorer:
    return RoutingExplorer()


@pytest.fixture
def fresh_routing(routing_explorer: RoutingExplorer) -> RoutingExplorer:
    """The shared explorer, reset to the default state (building an explorer costs ~0.5 s)."""
    routing_explorer.set_state(RoutingState())
    return routing_explorer


@pytest.fixture(scope="module")
def capacity_explorer() -> CapacityExplorer:
    return CapacityExplorer()


# ---------------------------------------------------------------------------------------------
# toy.py
# ---------------------------------------------------------------------------------------------
def test_token_batch_is_seeded_and_structured() -> None:
    a, b = token_batch(64, 16, seed=3), token_batch(64, 16, seed=3)
    assert torch.equal(a.x, b.x) and a.words == b.words
    assert not torch.equal(a.x, token_batch(64, 16, seed=4).x)
    assert torch.all(a.x[:, -1] == 1.0)  # the bias unit
    # Visible structure: tokens of one kind are closer to each other than to other kinds.
    dist = torch.cdist(a.x, a.x)
    same = a.kinds[:, None] == a.kinds[None, :]
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    assert dist[same & off_diagonal].mean() < 0.6 * dist[~same].mean()


def test_gate_weight_skew_column_and_prefix() -> None:
    weight = gate_weight(8, 16, seed=1, skew=2.0)
    assert torch.allclose(weight[:, -1], skew_offsets(8, 2.0))
    assert weight[0, -1] == 2.0 and weight[-1, -1] == -2.0
    # Adding experts keeps the existing experts' rows.
    assert torch.equal(gate_weight(4, 16, seed=1)[:, :-1], gate_weight(8, 16, seed=1)[:4, :-1])


def test_load_cv_uniform_and_collapse() -> None:
    assert load_cv(torch.tensor([5, 5, 5, 5])) == 0.0
    # Collapse onto one of E experts: loads (N, 0, ..., 0), mean N/E, population std
    # N sqrt(E-1)/E, so CV = sqrt(E-1).
    assert math.isclose(load_cv(torch.tensor([40, 0, 0, 0, 0, 0, 0, 0])), math.sqrt(7))


# ---------------------------------------------------------------------------------------------
# Routing explorer
# ---------------------------------------------------------------------------------------------
def test_slider_drives_load_bars_equal_independent_bincount(fresh_routing) -> None:
    explorer = fresh_routing
    for k in (1, 3, 2):
        explorer.controls["top_k"].value = k  # what the slider does
        assert explorer.state.top_k == k
        indices, weights = hand_softmax_topk(explorer.state)
        expected = torch.bincount(indices.reshape(-1), minlength=8).numpy()
        np.testing.assert_array_equal(bars(explorer.figure, 1), expected)
        assert bars(explorer.figure, 1).sum() == explorer.state.n_tokens * k
        # The heatmap holds the renormalized weights at the chosen experts and 0 elsewhere.
        z = heatmap(explorer.figure)
        expected_z = torch.zeros(8, explorer.state.n_tokens)
        expected_z.scatter_(0, indices.T, weights.T)
        np.testing.assert_allclose(z, expected_z.numpy(), atol=1e-6)
        np.testing.assert_allclose(z.sum(axis=0), 1.0, atol=1e-6)
        # The mean-load line and the CV in the subtitle follow.
        assert np.allclose(bars(explorer.figure, 2), expected.mean())
        cv = expected.std() / expected.mean()
        assert f"coefficient of variation {cv:.2f}" in explorer.figure.layout.annotations[1].text


def test_temperature_sharpens_and_flattens(fresh_routing) -> None:
    explorer = fresh_routing
    top_weight = {}
    for temperature in (0.1, 1.0, 10.0):
        explorer.controls["temperature"].value = temperature
        top_weight[temperature] = np.median(heatmap(explorer.figure).max(axis=0))
    assert top_weight[0.1] > 0.95 > top_weight[1.0] > top_weight[10.0]  # sharper when colder
    explorer.controls["temperature"].value = 10.0
    z = heatmap(explorer.figure)
    chosen = z[z > 0]
    assert np.all(np.abs(chosen - 0.5) < 0.1)  # top-2 weights near 1/2 each


def test_switch_weights_are_unnormalized_top1_probabilities(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.controls["router"].value = "switch"
    z = heatmap(explorer.figure)
    assert np.all((z > 0).sum(axis=0) == 1)  # top-1 whatever the top-k slider says
    batch = token_batch(32, D_MODEL, seed=0)
    probs = torch.softmax(batch.x @ gate_weight(8, D_MODEL, seed=0).T, dim=-1)
    np.testing.assert_allclose(z.max(axis=0), probs.max(-1).values.numpy(), rtol=1e-5)
    assert z.max(axis=0).max() < 1.0  # Switch keeps p, so the weight is never 1


def test_expert_choice_loads_equal_capacity(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.set_state(RoutingState(router="expert_choice", top_k=2, capacity_factor=1.0))
    capacity = math.ceil(1.0 * 32 * 2 / 8)  # C = ceil(cf N k / E) = 8 tokens per expert
    np.testing.assert_array_equal(bars(explorer.figure, 1), [capacity] * 8)
    assert f"C={capacity}" in explorer.figure.layout.title.text
    # Each expert's row of the heatmap has exactly C non-zero weights; tokens may get 0..E.
    z = heatmap(explorer.figure)
    np.testing.assert_array_equal((z > 0).sum(axis=1), [capacity] * 8)


def test_hash_load_follows_the_formula_not_the_gate(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.set_state(RoutingState(router="hash", n_experts=5))
    ids = token_batch(32, D_MODEL, seed=0).token_ids
    expected = torch.bincount((ids * KNUTH) % 2**32 % 5, minlength=5).numpy()
    np.testing.assert_array_equal(bars(explorer.figure, 1), expected)
    explorer.controls["temperature"].value = 0.2  # the gate plays no part in hash routing
    np.testing.assert_array_equal(bars(explorer.figure, 1), expected)


def test_selection_bias_changes_choice_not_weights(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.set_state(RoutingState(router="sigmoid_bias", n_experts=8, top_k=2))
    before = heatmap(explorer.figure)
    explorer.controls["bias_expert"].value = 3
    explorer.controls["bias"].value = 1.0  # sigmoid scores lie in (0, 1): +1 always wins
    after = heatmap(explorer.figure)
    assert bars(explorer.figure, 1)[3] == 32  # every token now picks expert 3
    # Tokens whose chosen pair did not change keep exactly the same combine weights.
    unchanged = ((before > 0) == (after > 0)).all(axis=0)
    assert unchanged.any()
    np.testing.assert_array_equal(after[:, unchanged], before[:, unchanged])


def test_noise_only_in_noisy_router_and_replayable(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.set_state(RoutingState(router="noisy_topk"))
    quiet = heatmap(explorer.figure)
    explorer.set_state(RoutingState(router="topk_softmax"))
    np.testing.assert_allclose(heatmap(explorer.figure), quiet, atol=1e-6)  # noise 0 = eval
    explorer.set_state(RoutingState(router="noisy_topk", noise=2.0))
    noisy = heatmap(explorer.figure)
    assert ((noisy > 0) != (quiet > 0)).any()  # some tokens changed experts
    explorer.set_state(RoutingState(router="noisy_topk", noise=2.0))
    np.testing.assert_array_equal(heatmap(explorer.figure), noisy)  # seeded: replays exactly


def test_fewer_experts_pulls_top_k_into_range(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.controls["top_k"].value = 4
    explorer.controls["bias_expert"].value = 6
    explorer.controls["n_experts"].value = 3
    assert (explorer.state.n_experts, explorer.state.top_k, explorer.state.bias_expert) == (3, 3, 2)
    assert heatmap(explorer.figure).shape == (3, 32)
    assert explorer.controls["top_k"].max == 3 and explorer.controls["top_k"].value == 3


def test_invalid_state_raises_and_leaves_explorer_alone(fresh_routing) -> None:
    explorer = fresh_routing
    with pytest.raises(ValueError, match="top_k=5"):
        explorer.set_state(RoutingState(n_experts=4, top_k=5))
    assert explorer.state == RoutingState()


def test_history_replays_to_the_same_figure(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.history.clear()
    explorer.controls["router"].value = "topk_softmax"
    explorer.controls["n_experts"].value = 6
    explorer.controls["top_k"].value = 3
    explorer.controls["temperature"].value = 0.5
    recorded = [state.to_dict() for state in explorer.history]
    z, load = heatmap(explorer.figure), bars(explorer.figure, 1)
    other = RoutingExplorer()
    other.replay(recorded)
    assert other.state == explorer.state
    np.testing.assert_array_equal(heatmap(other.figure), z)
    np.testing.assert_array_equal(bars(other.figure, 1), load)
    assert [control.value for control in other.controls.values()] == [
        control.value for control in explorer.controls.values()
    ]


# ---------------------------------------------------------------------------------------------
# Capacity explorer
# ---------------------------------------------------------------------------------------------
def marker_points(figure: go.Figure, trace: int) -> set[tuple[int, int]]:
    return set(
        zip(
            np.asarray(figure.data[trace].x, dtype=int).tolist(),
            np.asarray(figure.data[trace].y, dtype=int).tolist(),
            strict=True,
        )
    )


@pytest.mark.parametrize("policy", ["position", "probability"])
def test_dropped_markers_match_library_and_python_queue(capacity_explorer, policy) -> None:
    explorer = capacity_explorer
    state = CapacityState(capacity_factor=1.0, top_k=2, skew=1.5, drop_policy=policy)
    explorer.set_state(state)
    capacity = math.ceil(1.0 * 64 * 2 / 8)  # C = ceil(cf N K / E) = 16
    assert explorer.view.capacity == capacity
    np.testing.assert_array_equal(np.asarray(explorer.figure.data[2].y), [capacity, capacity])

    # The library's own dropped mask, from a layer built and run here.
    layer = capacity_layer(state)
    with torch.no_grad():
        out = layer(token_batch(64, D_MODEL, seed=0).x)
    indices, dropped = out.routing.indices.numpy(), out.dropped.numpy()
    # ... equals a plain Python queue over the same routing.
    reference = python_capacity_queue(indices, out.routing.weights.numpy(), capacity, policy)
    np.testing.assert_array_equal(dropped, reference)
    assert dropped.any()

    n_drop, s_drop = np.nonzero(dropped)
    assert marker_points(explorer.figure, 4) == set(
        zip(n_drop.tolist(), indices[n_drop, s_drop].tolist(), strict=True)
    )
    n_keep, s_keep = np.nonzero(~dropped)
    assert marker_points(explorer.figure, 3) == set(
        zip(n_keep.tolist(), indices[n_keep, s_keep].tolist(), strict=True)
    )
    load = np.bincount(indices.reshape(-1), minlength=8)
    kept = bars(explorer.figure, 0)
    np.testing.assert_array_equal(kept + bars(explorer.figure, 1), load)
    np.testing.assert_array_equal(kept, np.minimum(load, capacity))  # kept = min(load, C)
    assert f"dropped {dropped.mean():.1%}" in explorer.figure.layout.title.text


def test_position_policy_drops_later_tokens(capacity_explorer) -> None:
    explorer = capacity_explorer
    explorer.set_state(CapacityState(capacity_factor=0.75, top_k=1, skew=2.0))
    dropped_positions = np.asarray(explorer.figure.data[4].x)
    kept_positions = np.asarray(explorer.figure.data[3].x)
    expert_of_dropped = np.asarray(explorer.figure.data[4].y)
    expert_of_kept = np.asarray(explorer.figure.data[3].y)
    for expert in np.unique(expert_of_dropped):
        # With top-1 and position priority an expert keeps its first C tokens: every dropped
        # token comes after every kept token of the same expert.
        assert (
            dropped_positions[expert_of_dropped == expert].min()
            > kept_positions[expert_of_kept == expert].max()
        )


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_capacity_factor_at_least_e_over_k_never_drops(capacity_explorer, top_k) -> None:
    explorer = capacity_explorer
    explorer.set_state(CapacityState(top_k=top_k, skew=4.0, capacity_factor=1.0))
    assert explorer.view.dropped_fraction > 0  # the skewed router does overflow at cf = 1
    explorer.controls["capacity_factor"].value = 8 / top_k  # cf = E/K gives C = N
    assert explorer.view.capacity == 64
    assert len(explorer.figure.data[4].x) == 0
    assert np.all(bars(explorer.figure, 1) == 0)
    assert "dropped 0.0%" in explorer.figure.layout.title.text


def test_tokens_without_expert_get_zero_output(capacity_explorer) -> None:
    explorer = capacity_explorer
    explorer.set_state(CapacityState(capacity_factor=0.5, top_k=1, skew=2.0))
    lost = explorer.view.tokens_without_expert
    assert lost.sum() > 0
    y = explorer.view.output.y
    assert torch.all(y[torch.from_numpy(lost)] == 0)  # exactly zero: nothing was computed
    assert torch.all(y[torch.from_numpy(~lost)].abs().sum(-1) > 0)
    assert f"{int(lost.sum())} of 64 tokens got no expert" in explorer.figure.layout.title.text


def test_capacity_sliders_update_state(capacity_explorer) -> None:
    explorer = capacity_explorer
    explorer.set_state(CapacityState())
    explorer.controls["drop_policy"].value = "probability"
    explorer.controls["top_k"].value = 3
    explorer.controls["skew"].value = 0.5
    assert explorer.state == CapacityState(drop_policy="probability", top_k=3, skew=0.5)
    assert explorer.history[-3:][0].drop_policy == "probability"
    assert bars(explorer.figure, 0).sum() + bars(explorer.figure, 1).sum() == 64 * 3


# ---------------------------------------------------------------------------------------------
# Pure builders
# ---------------------------------------------------------------------------------------------
def test_update_in_place_refuses_a_different_trace_list() -> None:
    widget = go.FigureWidget(line_figure([0, 1], {"a": [1, 2]}, "t", "x", "y"))
    update_in_place(widget, line_figure([0, 1, 2], {"b": [3, 4, 5]}, "t2", "x", "y"))
    assert list(widget.data[0].y) == [3, 4, 5] and widget.data[0].name == "b"
    assert widget.layout.title.text == "t2"
    with pytest.raises(ValueError, match="traces"):
        update_in_place(widget, line_figure([0], {"a": [1], "b": [2]}, "t", "x", "y"))


def test_static_builders_hold_their_data() -> None:
    figure = bar_figure({"naive": 3.0, "sorted": 1.5}, "timings", "ms")
    assert list(figure.data[0].x) == ["naive", "sorted"] and list(figure.data[0].y) == [3.0, 1.5]
    figure = line_figure(range(3), {"aux": [1, 0.5, 0.2], "none": [1, 1, 1]}, "t", "step", "cv")
    assert [trace.name for trace in figure.data] == ["aux", "none"]


def test_views_leave_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    routing_view(RoutingState(router="noisy_topk", noise=1.0))
    capacity_view(CapacityState())
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------------------------------
# Polish: what the reader sees (titles, colours, greyed-out controls, sizes, reset)
# ---------------------------------------------------------------------------------------------
ROUTERS = (
    "softmax_topk",
    "topk_softmax",
    "noisy_topk",
    "switch",
    "expert_choice",
    "hash",
    "sigmoid_bias",
)
# Which fields each router ignores, from the routers' definitions in moe_lab/routers.py: switch
# and hash are top-1; hash never computes logits; only noisy_topk adds noise; expert choice
# and hash have no selection bias.
IGNORED = {
    "softmax_topk": {"noise"},
    "topk_softmax": {"noise"},
    "noisy_topk": set(),
    "switch": {"top_k", "noise"},
    "expert_choice": {"noise", "bias", "bias_expert"},
    "hash": {"top_k", "temperature", "noise", "bias", "bias_expert"},
    "sigmoid_bias": {"noise"},
}
# One change per field that a router using the field must notice (from the default state).
PROBES = {"top_k": 3, "temperature": 0.3, "noise": 2.0, "bias": 1.0, "bias_expert": 5}


def shown_figure(explorer) -> dict:
    """The figure the reader sees: the plotly JSON in the explorer's output."""
    (output,) = explorer.output.outputs
    return output["data"]["application/vnd.plotly.v1+json"]


def title_lines(title: str) -> list[str]:
    return title.split("<br>")


@pytest.mark.parametrize("router", ROUTERS)
def test_greyed_out_controls_are_exactly_those_that_change_nothing(fresh_routing, router) -> None:
    explorer = fresh_routing
    explorer.controls["router"].value = router
    disabled = {name for name, control in explorer.controls.items() if control.disabled}
    assert disabled == IGNORED[router]
    base = RoutingState(router=router)
    for name, value in PROBES.items():
        probe, reference = base.replace(**{name: value}), base
        if name == "bias_expert":  # which expert holds the bias matters only with a bias
            probe, reference = probe.replace(bias=1.0), base.replace(bias=1.0)
        changed = not np.array_equal(routing_view(probe).combine, routing_view(reference).combine)
        # a greyed-out control changes nothing; every other control changes the routing
        assert changed == (name not in IGNORED[router]), (router, name)
    for name, control in explorer.controls.items():  # faded, not only disabled
        assert (IGNORED_CLASS in control._dom_classes) == (name in IGNORED[router])
    for name in IGNORED[router]:
        assert explorer.controls[name].tooltip  # the reason, on hover
        assert explorer.controls[name].description in explorer.notes.value
    if not IGNORED[router]:
        assert explorer.notes.value == ""


def test_title_shows_the_values_the_router_uses(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.set_state(RoutingState(router="expert_choice", top_k=2, capacity_factor=1.0))
    title = explorer.figure.layout.title.text
    capacity = math.ceil(1.0 * 32 * 2 / 8)  # C = ceil(cf N k / E) = 8, not "k=8"
    assert f"each expert takes C={capacity} of 32 tokens" in title and "k=2" in title
    assert "k=8" not in title
    explorer.set_state(RoutingState(router="expert_choice", top_k=3, n_experts=16))
    assert f"C={math.ceil(32 * 3 / 16)} of 32" in explorer.figure.layout.title.text
    for router in ("switch", "hash"):
        explorer.set_state(RoutingState(router=router, top_k=3))
        title = explorer.figure.layout.title.text
        assert "k=1" in title and "k=3" not in title, title
    assert "temperature=" not in explorer.figure.layout.title.text  # hash: no gate
    explorer.set_state(RoutingState(router="noisy_topk", noise=1.5, bias=0.25, bias_expert=2))
    title = explorer.figure.layout.title.text
    assert "noise std=1.5" in title and "selection bias +0.25 on expert 2" in title


def test_unrouted_cells_have_a_colour_of_their_own(fresh_routing) -> None:
    explorer = fresh_routing
    # expert choice at temperature 10: routed weights are small (about 1/8), yet routed
    explorer.set_state(RoutingState(router="expert_choice", temperature=10.0))
    z = heatmap(explorer.figure)
    routed = explorer.view.routed
    assert 0 < z[routed].min() < 0.2
    overlay = explorer.figure.data[3]
    overlay_z = np.asarray(overlay.z, dtype=float)
    # the overlay is transparent (NaN) exactly where a token was routed, grey elsewhere
    np.testing.assert_array_equal(np.isnan(overlay_z), routed)
    assert {c for _, c in overlay.colorscale} == {UNROUTED_COLOR}
    # ... and the weights' lowest colour is not that grey
    assert explorer.figure.data[0].colorscale[0][1] != UNROUTED_COLOR
    # routed = the pairs the library chose, from the hand-written reference for top-k
    explorer.set_state(RoutingState(top_k=2))
    indices, _ = hand_softmax_topk(explorer.state)
    expected = np.zeros((8, 32), dtype=bool)
    expected[indices.T.numpy(), np.arange(32)[None, :].repeat(2, 0)] = True
    np.testing.assert_array_equal(explorer.view.routed, expected)
    np.testing.assert_array_equal(
        np.isnan(np.asarray(explorer.figure.data[3].z, dtype=float)), expected
    )


def test_token_labels_are_separated(fresh_routing) -> None:
    figure = fresh_routing.figure
    xaxis = figure.layout.xaxis
    assert list(xaxis.ticktext) == list(token_batch(32, D_MODEL, seed=0).words)
    assert xaxis.tickangle is None  # not forced horizontal: plotly slants labels that collide
    assert list(xaxis.autotickangles) == [0, -45, -90]
    assert figure.data[0].xgap >= 1  # a gap between the columns, too


@pytest.mark.parametrize(
    "state",
    [RoutingState(router=r, top_k=3, noise=1.0, bias=0.5) for r in ROUTERS]
    + [RoutingState(router="expert_choice", n_experts=16, top_k=16, capacity_factor=8.0)],
    ids=lambda s: s.router,
)
def test_routing_titles_stay_whole_and_figures_fill_their_container(state) -> None:
    from moe_lab.viz.figures import TITLE_LINE_CHARS, TITLE_LINE_PX, routing_figure

    figure = routing_figure(routing_view(state))
    lines = title_lines(figure.layout.title.text)
    assert all(len(line) <= TITLE_LINE_CHARS for line in lines), lines
    assert figure.layout.margin.t >= TITLE_LINE_PX * len(lines) + 50
    assert figure.layout.width is None and figure.layout.autosize is not False


@pytest.mark.parametrize(
    "state",
    [
        CapacityState(),
        CapacityState(
            capacity_factor=0.25, top_k=8, skew=4.0, drop_policy="probability", n_tokens=1000
        ),
    ],
)
def test_capacity_titles_stay_whole(state) -> None:
    from moe_lab.viz.figures import TITLE_LINE_CHARS, capacity_figure

    figure = capacity_figure(capacity_view(state))
    assert all(len(line) <= TITLE_LINE_CHARS for line in title_lines(figure.layout.title.text))
    assert figure.layout.width is None


def test_capacity_lower_panel_keeps_every_expert(capacity_explorer) -> None:
    explorer = capacity_explorer
    explorer.set_state(CapacityState(top_k=1, skew=4.0, capacity_factor=8.0))
    experts_with_markers = set(np.asarray(explorer.figure.data[3].y, dtype=int).tolist())
    idle = set(range(8)) - experts_with_markers
    assert idle  # the strong skew leaves some expert without a single assignment ...
    yaxis2 = explorer.figure.layout.yaxis2
    assert list(yaxis2.tickvals) == list(range(8))  # ... and it keeps its row
    assert sorted(yaxis2.range) == [-0.5, 7.5] and yaxis2.range[0] > yaxis2.range[1]  # reversed
    assert list(explorer.figure.layout.xaxis.tickvals) == list(range(8))  # as the upper panel


def test_reset_returns_to_the_starting_state(capacity_explorer) -> None:
    explorer = CapacityExplorer(CapacityState(skew=2.0))
    first_title = explorer.figure.layout.title.text
    explorer.controls["capacity_factor"].value = 3.0
    explorer.set_state(CapacityState(top_k=4))
    assert explorer.figure.layout.title.text != first_title
    explorer.reset()
    assert explorer.state == CapacityState(skew=2.0)
    assert explorer.controls["capacity_factor"].value == 1.0
    assert explorer.figure.layout.title.text == first_title
    assert shown_figure(explorer)["layout"]["title"]["text"] == first_title


def test_the_shown_figure_follows_every_change(fresh_routing) -> None:
    explorer = fresh_routing
    explorer.controls["router"].value = "hash"
    shown = shown_figure(explorer)
    assert shown["layout"]["title"]["text"] == explorer.figure.layout.title.text
    assert "width" not in shown["layout"]  # sized by its output area
    assert "responsive" not in shown["config"]  # see PLOT_CONFIG: it collapsed JupyterLab's plot


def test_controls_are_wide_enough_to_drag_one_step_at_a_time(
    fresh_routing, capacity_explorer
) -> None:
    from moe_lab.viz.explorer import CONTROL_DESCRIPTION_WIDTH, CONTROL_MIN_WIDTH

    readout_px = 60  # ipywidgets' slider read-out, measured in the browser tests
    track_px = int(CONTROL_MIN_WIDTH[:-2]) - int(CONTROL_DESCRIPTION_WIDTH[:-2]) - readout_px
    for explorer in (fresh_routing, capacity_explorer):
        grid = explorer.widget.children[0]
        assert f"minmax({CONTROL_MIN_WIDTH}, 1fr)" in grid.layout.grid_template_columns
        for control in explorer.controls.values():
            assert control.style.description_width == CONTROL_DESCRIPTION_WIDTH
            assert control.layout.width == "auto"  # fills its grid cell
            if hasattr(control, "step"):
                n_steps = round((control.max - control.min) / control.step)
                assert track_px / n_steps >= 6, (control.description, n_steps)
