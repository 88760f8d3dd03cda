"""The routing-on-text explorer: type text (or pick a domain sample) and see where it goes.

Controls: the checkpoint (balanced, collapsed, hash-routed: the trained models in ``assets/``),
a sample per domain, and a text box. The figure shows, per MoE block, every character coloured
by its first-choice expert (hover: its K experts and weights) and the block's load per expert
for this text (``moe_lab.viz.text_figure``). Everything is computed by the library
(``moe_lab.analysis.capture_text`` on the checkpoint's ``TinyLM``).

Example:
    >>> explorer = TextExplorer()                        # doctest: +SKIP
    >>> explorer.controls["sample"].value = "records"    # what picking a sample does
    >>> explorer.controls["checkpoint"].value = "hash"   # what the dropdown does

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from moe_lab.assets import available_checkpoints
from moe_lab.viz.explorer import Explorer
from moe_lab.viz.text_figure import text_routing_figure
from moe_lab.viz.text_routing import (
    CHECKPOINT_LABELS,
    CUSTOM,
    TextRoutingState,
    TextRoutingView,
    cached_checkpoint,
    domain_samples,
    text_routing_view,
)

_STYLE = {"description_width": "initial"}


class TextExplorer(Explorer[TextRoutingState, TextRoutingView]):
    """Routing-on-text explorer over a ``TextRoutingState`` (see the module docstring).

    Args:
        state: the initial state (default: the code sample through the balanced checkpoint).
        checkpoints: the checkpoints the dropdown offers (default: those of
            ``CHECKPOINT_LABELS`` present in ``assets/``). They must have the same number of MoE
            blocks, since the figure is updated in place.

    Attributes:
        state, view, figure, controls, history, widget: see ``moe_lab.viz.explorer.Explorer``.

    Taught in: notebooks/05_specialization.ipynb.
    """

    compute = staticmethod(text_routing_view)
    build_figure = staticmethod(text_routing_figure)

    def __init__(
        self, state: TextRoutingState | None = None, checkpoints: list[str] | None = None
    ) -> None:
        present = available_checkpoints()
        self.checkpoints = checkpoints or [name for name in CHECKPOINT_LABELS if name in present]
        if not self.checkpoints:
            raise FileNotFoundError(
                "no checkpoint in assets/: run `python tools/make_checkpoints.py` to create them"
            )
        blocks = {len(cached_checkpoint(name)[0].moe_layers) for name in self.checkpoints}
        if len(blocks) != 1:
            raise ValueError(f"checkpoints {self.checkpoints} differ in their number of MoE blocks")
        super().__init__(state or TextRoutingState.for_sample("code", self.checkpoints[0]))

    def make_controls(self, state: TextRoutingState) -> dict[str, widgets.ValueWidget]:
        wide = {"width": "min(100%, 640px)"}
        return {
            "checkpoint": widgets.Dropdown(
                options=[(CHECKPOINT_LABELS.get(n, n), n) for n in self.checkpoints],
                value=state.checkpoint,
                description="checkpoint",
                style=_STYLE,
                layout=wide,
            ),
            "sample": widgets.Dropdown(
                options=[*domain_samples(), CUSTOM],
                value=state.sample,
                description="sample",
                style=_STYLE,
                layout={"width": "min(100%, 320px)"},
            ),
            "text": widgets.Textarea(
                value=state.text,
                description="text",
                placeholder="type any text, then click outside the box",
                continuous_update=False,  # route when the reader is done typing
                style=_STYLE,
                layout={"width": "min(100%, 800px)", "height": "7em"},
            ),
        }

    def constrain(self, state: TextRoutingState, name: str, value: Any) -> TextRoutingState:
        if name == "sample":  # a domain: show its sample; custom: keep the text as it is
            if value == CUSTOM:
                return state.replace(sample=CUSTOM)
            return state.replace(sample=value, text=domain_samples()[value])
        if name == "text":  # typed text is custom unless it is the sample itself
            is_sample = domain_samples().get(state.sample) == value
            return state.replace(text=value, sample=state.sample if is_sample else CUSTOM)
        return state.replace(**{name: value})
