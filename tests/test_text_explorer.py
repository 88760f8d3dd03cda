"""The routing-on-text explorer, headless, driven like the two other explorers.

Widgets are driven by ``.value`` (which fires the same observers a reader's clicks fire) or by
``set_state``; the FigureWidget's traces are then compared with an independent computation:
the checkpoint's own forward pass on the same bytes, window by window, and a plain bincount.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe_lab.viz.text_explorer import TextExplorer
from moe_lab.viz.text_figure import EMPTY_COLOR, VISIBLE, WRAP, text_grid, text_routing_figure
from moe_lab.viz.text_routing import (
    CUSTOM,
    MAX_TEXT_BYTES,
    TextRoutingState,
    cached_checkpoint,
    domain_samples,
    text_routing_view,
)


def forward_routing(checkpoint: str, text: str) -> dict[int, torch.Tensor]:
    """Block -> (L, K) experts from the model's forward pass, 64-byte windows, fresh contexts."""
    model, _ = cached_checkpoint(checkpoint)
    ids = torch.tensor(list(text.encode("utf-8")))
    window = model.config.max_seq_len
    parts: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, ids.numel(), window):
            out = model(ids[start : start + window][None])
            for layer, moe_out in out.moe_outputs.items():
                parts.setdefault(layer, []).append(moe_out.routing.indices)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


@pytest.fixture(scope="module")
def explorer() -> TextExplorer:
    return TextExplorer()


def heatmap_z(explorer: TextExplorer, row: int) -> np.ndarray:
    return np.asarray(explorer.figure.data[2 * row].z, dtype=float)


def test_samples_are_validation_text_of_each_domain() -> None:
    samples = domain_samples()
    assert list(samples) == ["arithmetic", "code", "english", "records"]
    assert samples["code"].startswith("def ") and "=" in samples["arithmetic"]


def test_every_character_is_coloured_by_its_first_choice(explorer) -> None:
    # one domain sample per checkpoint (each pair built through the two dropdowns)
    for checkpoint, sample in zip(
        explorer.checkpoints, ("code", "records", "english"), strict=False
    ):
        explorer.controls["checkpoint"].value = checkpoint  # what the dropdown does
        explorer.controls["sample"].value = sample
        text = explorer.state.text
        assert text == domain_samples()[sample]
        expected = forward_routing(checkpoint, text)
        grid = text_grid(tuple(text))
        shown = grid >= 0
        for row, layer in enumerate(sorted(expected)):
            z = heatmap_z(explorer, row)
            np.testing.assert_array_equal(z[shown], expected[layer][grid[shown], 0].numpy())
            assert bool((z[~shown] == -1).all())  # no character: the "not routed" value
            bars = np.asarray(explorer.figure.data[2 * row + 1].y)
            counts = torch.bincount(expected[layer].reshape(-1), minlength=len(bars))
            np.testing.assert_array_equal(bars, counts.numpy())


def test_typing_switches_to_custom_and_back(explorer) -> None:
    explorer.set_state(TextRoutingState.for_sample("english"))
    explorer.controls["text"].value = "x = 12*3\n"
    assert explorer.state.sample == CUSTOM and explorer.controls["sample"].value == CUSTOM
    z = heatmap_z(explorer, 0)
    assert int((z >= 0).sum()) == 9  # nine bytes routed, the rest of the grid empty
    explorer.controls["sample"].value = "arithmetic"
    assert explorer.state.text == domain_samples()["arithmetic"]
    assert explorer.controls["text"].value == explorer.state.text


def test_hover_lists_the_k_experts_and_weights(explorer) -> None:
    explorer.set_state(TextRoutingState(checkpoint="balanced", sample=CUSTOM, text="ab"))
    view = explorer.view
    hover = explorer.figure.data[0].hovertext
    first = hover[0][0]
    e0, e1 = view.indices[0][0]
    w0, w1 = view.weights[0][0]
    assert f"expert {e0}: weight {w0:.2f}" in first and f"expert {e1}: weight {w1:.2f}" in first
    assert abs(w0 + w1 - 1) < 1e-5  # softmax top-2, renormalized
    assert hover[0][5] == "no character: not routed"


def test_title_shows_the_effective_values(explorer) -> None:
    explorer.set_state(TextRoutingState.for_sample("code", checkpoint="hash"))
    title = explorer.figure.layout.title.text
    assert "router 'hash'" in title and "K=1" in title and "E=8" in title
    explorer.set_state(TextRoutingState.for_sample("code", checkpoint="collapsed"))
    assert "E=32, K=2" in explorer.figure.layout.title.text


def test_layout_rules(explorer) -> None:
    figure = explorer.figure
    assert figure.layout.width is None  # sized to its container
    assert figure.layout.autosize
    scale = figure.data[0].colorscale
    assert scale[0][1] == EMPTY_COLOR and scale[2][1] != EMPTY_COLOR  # "not routed" has its own
    assert explorer.controls["text"].layout.width and explorer.controls["checkpoint"].layout.width


def test_text_grid_wraps_and_marks_newlines() -> None:
    text = tuple("ab\n" + "c" * (WRAP + 2))
    grid = text_grid(text)
    assert grid.shape == (3, WRAP)
    assert grid[0, :3].tolist() == [0, 1, 2] and grid[0, 3] == -1  # "\n" ends line 0
    assert grid[2, :2].tolist() == [3 + WRAP, 4 + WRAP]
    assert VISIBLE["\n"] == "↵" and VISIBLE[" "] == "·"


def test_states_validate_and_replay(explorer) -> None:
    with pytest.raises(ValueError, match="empty"):
        TextRoutingState(text="")
    with pytest.raises(ValueError, match="shorten"):
        TextRoutingState(text="x" * (MAX_TEXT_BYTES + 1))
    with pytest.raises(ValueError, match="unknown"):
        TextRoutingState.for_sample("poetry")
    explorer.history.clear()
    explorer.controls["checkpoint"].value = "hash"
    explorer.controls["text"].value = "hello"
    recorded = [s.to_dict() for s in explorer.history]
    z = heatmap_z(explorer, 1)
    explorer.set_state(TextRoutingState.for_sample("code"))
    explorer.replay(recorded)
    np.testing.assert_array_equal(heatmap_z(explorer, 1), z)


def test_figure_builder_is_pure() -> None:
    view = text_routing_view(TextRoutingState.for_sample("english"))
    a, b = text_routing_figure(view), text_routing_figure(view)
    assert a.to_json() == b.to_json()
    assert len(a.data) == 2 * len(view.layers)
