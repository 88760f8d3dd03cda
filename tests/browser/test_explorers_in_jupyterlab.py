"""Notebooks 02 and 03 in JupyterLab, in Chromium, used the way a reader uses them.

Each test opens a notebook, runs every cell (Run All), checks that no cell shows an error (no
stderr output: JupyterLab draws those as pink boxes), then moves the explorer's controls by hand:
drags a slider, presses arrow keys on one, picks from a dropdown, types a number into a
read-out. After each change it reads the plotly figure from the DOM (its data and its title) and
compares them with what the library computes for the state those moves describe, here, in the
test process. It also checks what a reader sees: the figure fills its output area, the title's
lines fit in the figure, token labels do not overlap, slider tracks are long enough, greyed-out
controls are disabled, and after Run All each explorer shows its starting state.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from moe_lab.viz import CapacityState, RoutingState
from moe_lab.viz.figures import capacity_figure, routing_figure, routing_title
from moe_lab.viz.views import capacity_view, routing_view

pytestmark = pytest.mark.browser

CHANGE_TIMEOUT_MS = 60_000
MIN_TRACK_PX = 240  # a 40-step slider then moves one step per 6 px (moe_lab.viz.explorer)

READ_FIGURE = r"""explorer => {
    const number = v => (v === null || v === undefined) ? NaN : Number(v);
    const plot = explorer.querySelector('.widget-output .js-plotly-plot');
    if (!plot || !plot._fullData) return null;
    const area = explorer.querySelector('.widget-output').getBoundingClientRect();
    const svg = plot.querySelector('svg.main-svg').getBoundingClientRect();
    const title = plot.querySelector('.gtitle');
    const box = title ? title.getBoundingClientRect() : null;
    return {
        title: plot.layout.title.text,
        data: plot._fullData.map(t => ({
            type: t.type,
            y: t.y ? Array.from(t.y, number) : null,
            z: t.z ? Array.from(t.z, row => Array.from(row, number)) : null,
        })),
        width: plot._fullLayout.width,
        areaWidth: area.width,
        svgLeft: svg.left, svgRight: svg.right,
        titleLeft: box ? box.left : null, titleRight: box ? box.right : null,
        titleLines: title ? title.querySelectorAll('tspan.line').length || 1 : 0,
        xTicks: [...plot.querySelectorAll('.xtick text')].map(t => {
            const r = t.getBoundingClientRect();
            const rotated = /rotate\((?!0[,)])/.test(t.getAttribute('transform') || '');
            return {text: t.textContent, left: r.left, right: r.right, rotated: rotated};
        }),
        yTicks2: [...plot.querySelectorAll('.yaxislayer-above .y2tick text')].map(t => t.textContent),
    };
}"""


def explorer_locator(page, index: int):
    """The index-th explorer on the page: the widget box holding a grid of controls."""
    return page.locator(".widget-vbox").filter(has=page.locator(".widget-gridbox")).nth(index)


def read_figure(explorer) -> dict:
    return explorer.evaluate(READ_FIGURE)


def wait_for_title(explorer, title: str) -> dict:
    """Wait until the explorer's figure shows ``title`` (the kernel recomputed it), then read it."""
    explorer.page.wait_for_function(
        f"([explorer, title]) => {{ const f = ({READ_FIGURE})(explorer); return f && f.title === title; }}",
        arg=[explorer.element_handle(), title],
        timeout=CHANGE_TIMEOUT_MS,
    )
    return read_figure(explorer)


def control(explorer, label: str):
    """The control whose label reads ``label`` exactly."""
    return explorer.locator(".widget-inline-hbox").filter(
        has=explorer.page.locator(
            "label.widget-label", has_text=re.compile(f"^{re.escape(label)}$")
        )
    )


def drag_slider(explorer, label: str, value: float, low: float, high: float) -> None:
    """Press the slider's handle and drag it to where ``value`` sits, as a mouse does."""
    slider = control(explorer, label)
    track = slider.locator(".noUi-base").bounding_box()
    handle = slider.locator(".noUi-handle").bounding_box()
    page = explorer.page
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    x = track["x"] + (value - low) / (high - low) * track["width"]
    page.mouse.move(x, handle["y"] + handle["height"] / 2, steps=8)
    page.mouse.up()


def press_keys(explorer, label: str, key: str, times: int) -> None:
    """Focus the slider's handle (a click on it) and press ``key`` ``times`` times."""
    handle = control(explorer, label).locator(".noUi-handle")
    handle.focus()
    for _ in range(times):
        handle.press(key)


def type_number(explorer, label: str, text: str) -> None:
    """Click the slider's read-out, replace its number by ``text``, press Enter."""
    readout = control(explorer, label).locator(".widget-readout")
    readout.click()
    readout.press("Control+A")
    readout.type(text)
    readout.press("Enter")


def pick(explorer, label: str, option: str) -> None:
    control(explorer, label).locator("select").select_option(option)


def assert_no_error_boxes(page) -> None:
    """No output of any cell is an error or anything else written to stderr (a pink box)."""
    pink = page.evaluate(
        "() => [...document.querySelectorAll("
        "'[data-mime-type=\"application/vnd.jupyter.stderr\"]')].map(e => e.textContent.slice(0, 300))"
    )
    assert pink == []


def assert_looks_right(figure: dict) -> None:
    """Fills its output area; every title line inside the figure."""
    assert abs(figure["width"] - figure["areaWidth"]) <= 2, figure["width"]
    assert figure["titleLeft"] >= figure["svgLeft"] and figure["titleRight"] <= figure["svgRight"]


def assert_matches_routing(figure: dict, state: RoutingState) -> None:
    view = routing_view(state)
    assert figure["title"] == routing_title(view)
    np.testing.assert_array_equal(figure["data"][1]["y"], view.load)
    np.testing.assert_allclose(np.array(figure["data"][0]["z"]), view.combine, atol=1e-6)
    expected_rows = routing_figure(view).data[3].z  # the grey "not routed" cells: NaN = routed
    shown = np.array(figure["data"][3]["z"], dtype=float)
    np.testing.assert_array_equal(np.isnan(shown), np.isnan(np.asarray(expected_rows, float)))


def disabled_controls(explorer) -> set[str]:
    return set(
        explorer.evaluate(
            "e => [...e.querySelectorAll('.widget-inline-hbox')].filter(c =>"
            " c.querySelector('[disabled]')).map(c => c.querySelector('label').textContent)"
        )
    )


def test_routing_explorer_in_jupyterlab(open_notebook, screenshots) -> None:
    page = open_notebook("02_routing.ipynb")
    assert_no_error_boxes(page)
    explorer = explorer_locator(page, 0)
    explorer.scroll_into_view_if_needed()

    # After Run All the explorer is back in its starting state ("things to try" assume it).
    state = RoutingState(n_experts=8, top_k=2)
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)
    assert_looks_right(figure)
    explorer.screenshot(path=screenshots / "02_routing_explorer_start.png")
    # Token labels do not run together: side by side without overlapping, or slanted (plotly
    # slants them when they would overlap at this width).
    ticks = sorted(figure["xTicks"], key=lambda t: t["left"])
    assert [t["text"] for t in figure["xTicks"]] == list(routing_view(state).words)
    assert all(t["rotated"] for t in ticks) or all(
        a["right"] <= b["left"] for a, b in itertools.pairwise(ticks)
    )
    # Slider tracks are long enough to drag one step at a time.
    widths = explorer.evaluate(
        "e => [...e.querySelectorAll('.noUi-base')].map(b => b.getBoundingClientRect().width)"
    )
    assert len(widths) == 6 and min(widths) >= MIN_TRACK_PX, widths
    assert disabled_controls(explorer) == {"noise std (noisy_topk)"}

    # Drag the top-k slider from 2 to 3.
    drag_slider(explorer, "top-k", 3, low=1, high=8)
    state = state.replace(top_k=3)
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)
    assert sum(figure["data"][1]["y"]) == 32 * 3

    # Two presses of the right arrow on the temperature slider: 10^0 -> 10^0.1.
    press_keys(explorer, "temperature", "ArrowRight", 2)
    state = state.replace(temperature=10**0.1)
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)

    # Pick expert choice: every expert takes C = ceil(cf N k / E) = ceil(32 * 3 / 8) = 12 tokens,
    # and the controls it ignores grey out.
    pick(explorer, "router", "expert_choice")
    state = state.replace(router="expert_choice")
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)
    assert figure["data"][1]["y"] == [12] * 8
    assert disabled_controls(explorer) == {
        "noise std (noisy_topk)",
        "selection bias",
        "bias on expert",
    }

    # Type 5 into the experts' read-out: C = ceil(32 * 3 / 5) = 20 per expert.
    type_number(explorer, "experts", "5")
    state = state.replace(n_experts=5)
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)
    assert figure["data"][1]["y"] == [math.ceil(32 * 3 / 5)] * 5

    # Hash: top-k and temperature grey out, the title says k=1.
    pick(explorer, "router", "hash")
    state = state.replace(router="hash")
    figure = wait_for_title(explorer, routing_title(routing_view(state)))
    assert_matches_routing(figure, state)
    assert "top-k" in disabled_controls(explorer) and "temperature" in disabled_controls(explorer)
    assert_looks_right(figure)
    explorer.screenshot(path=screenshots / "02_routing_explorer_hash.png")
    assert_no_error_boxes(page)


def test_capacity_explorer_in_jupyterlab(open_notebook, screenshots) -> None:
    page = open_notebook("03_load_balancing.ipynb")
    assert_no_error_boxes(page)
    explorer = explorer_locator(page, 0)
    explorer.scroll_into_view_if_needed()

    def expected_title(state: CapacityState) -> str:
        return capacity_figure(capacity_view(state)).layout.title.text

    def assert_matches(figure: dict, state: CapacityState) -> None:
        view = capacity_view(state)
        assert figure["title"] == expected_title(state)
        np.testing.assert_array_equal(figure["data"][0]["y"], view.kept)
        np.testing.assert_array_equal(figure["data"][1]["y"], view.load - view.kept)
        # the lower panel keeps a row for every expert, idle or not
        assert figure["yTicks2"] == [str(e) for e in range(state.n_experts)]

    state = CapacityState(capacity_factor=1.0, top_k=2, skew=1.0)  # the starting state
    figure = wait_for_title(explorer, expected_title(state))
    assert_matches(figure, state)
    assert_looks_right(figure)
    assert figure["titleLines"] == 2
    explorer.screenshot(path=screenshots / "03_capacity_explorer_start.png")

    # Drag the skew slider (0 to 4) to 3.
    drag_slider(explorer, "router skew", 3.0, low=0.0, high=4.0)
    state = state.replace(skew=3.0)
    assert_matches(wait_for_title(explorer, expected_title(state)), state)

    # Pick drop priority "probability".
    pick(explorer, "drop priority", "probability")
    state = state.replace(drop_policy="probability")
    assert_matches(wait_for_title(explorer, expected_title(state)), state)

    # One press of the left arrow on top-k: 2 -> 1.
    press_keys(explorer, "top-k", "ArrowLeft", 1)
    state = state.replace(top_k=1)
    assert_matches(wait_for_title(explorer, expected_title(state)), state)

    # Type 8 into the capacity factor: cf = E / K = 8 keeps every token.
    type_number(explorer, "capacity factor", "8")
    state = state.replace(capacity_factor=8.0)
    figure = wait_for_title(explorer, expected_title(state))
    assert_matches(figure, state)
    assert "dropped 0.0% of assignments" in figure["title"]
    assert_looks_right(figure)
    explorer.screenshot(path=screenshots / "03_capacity_explorer_cf8.png")
    assert_no_error_boxes(page)
