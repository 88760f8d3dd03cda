"""What the routing-on-text explorer shows: a state (checkpoint, text) and its view.

``TextRoutingState`` says everything the explorer shows and can be built, stored and replayed
in code. ``text_routing_view`` loads the state's checkpoint from ``assets/`` (once; the models
are cached by name) and routes the text with ``moe_lab.analysis.capture_text``: the view only
converts the library's capture into arrays for the figure.

Samples: the first validation document of each domain of the course corpus (seed 0), text no
checkpoint trained on, cut to at most ``SAMPLE_CHARS`` characters at a line end.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe_lab.analysis.capture import capture_text
from moe_lab.assets import load_checkpoint
from moe_lab.config import require
from moe_lab.data import make_corpus
from moe_lab.model import TinyLM

CHECKPOINT_LABELS = {
    "balanced": "balanced (Switch loss 0.01)",
    "collapsed": "collapsed (32 experts, no balancing)",
    "hash": "hash-routed (no learned router)",
}
CUSTOM = "custom"
SAMPLE_CHARS = 160
MAX_TEXT_BYTES = 512  # longer text is refused: the figure would not be readable


@functools.cache
def domain_samples() -> dict[str, str]:
    """Domain name -> the start of its first validation document (course corpus, seed 0)."""
    corpus = make_corpus(seed=0)
    samples = {}
    for index, name in enumerate(corpus.domain_names):
        text = next(doc.text for doc in corpus.val.documents if doc.domain == index)
        if len(text) > SAMPLE_CHARS:
            cut = text.rfind("\n", 0, SAMPLE_CHARS)
            text = text[: cut + 1] if cut > 0 else text[:SAMPLE_CHARS]
        samples[name] = text
    return samples


@functools.cache
def cached_checkpoint(name: str) -> tuple[TinyLM, dict]:
    """``moe_lab.assets.load_checkpoint(name)``, loaded once per process."""
    return load_checkpoint(name)


@dataclass(frozen=True)
class TextRoutingState:
    """What the routing-on-text explorer shows.

    Args:
        checkpoint: an asset checkpoint name (``"balanced"``, ``"collapsed"``, ``"hash"``).
        sample: a domain name whose sample text is shown, or ``"custom"`` for typed text.
        text: the text routed (for a domain sample, the sample itself).
    """

    checkpoint: str = "balanced"
    sample: str = "code"
    text: str = ""

    def __post_init__(self) -> None:
        require(bool(self.text), "text is empty: type something, or pick a domain sample")
        n_bytes = len(self.text.encode("utf-8"))
        require(
            n_bytes <= MAX_TEXT_BYTES,
            f"text has {n_bytes} bytes, more than {MAX_TEXT_BYTES}: shorten it",
        )

    @classmethod
    def for_sample(cls, sample: str = "code", checkpoint: str = "balanced") -> TextRoutingState:
        """The state showing the sample of domain ``sample``."""
        samples = domain_samples()
        require(
            sample in samples,
            f"sample={sample!r} is unknown: choose one of {', '.join(samples)} or type text",
        )
        return cls(checkpoint=checkpoint, sample=sample, text=samples[sample])

    def replace(self, **changes: Any) -> TextRoutingState:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TextRoutingState:
        return cls(**values)


@dataclass(frozen=True)
class TextRoutingView:
    """What the text-routing figure draws, from the library's capture of the text.

    Attributes:
        state: the state it was computed from.
        checkpoint: the checkpoint's metadata (``moe_lab.assets``), plus ``router``,
            ``n_experts``, ``top_k`` and ``window`` (the model's context, T).
        text: the characters, one per byte (a multi-byte character repeats on each byte).
        layers: the MoE blocks, in order.
        indices: block -> (L, K) experts of every byte, first choice first.
        weights: block -> (L, K) their combine weights.
        load: block -> (E,) assignments per expert over all K choices.
    """

    state: TextRoutingState
    checkpoint: dict
    text: tuple[str, ...]
    layers: tuple[int, ...]
    indices: dict[int, np.ndarray]
    weights: dict[int, np.ndarray]
    load: dict[int, np.ndarray]

    @property
    def n_experts(self) -> int:
        return int(self.checkpoint["n_experts"])


def text_routing_view(state: TextRoutingState) -> TextRoutingView:
    """Route ``state.text`` through ``state.checkpoint`` with ``capture_text``.

    Taught in: notebooks/05_specialization.ipynb.
    """
    model, meta = cached_checkpoint(state.checkpoint)
    capture = capture_text(model, state.text)
    moe = model.config.moe
    chars = tuple(char for char in state.text for _ in char.encode("utf-8"))
    info = {
        **meta,
        "router": moe.router,
        "n_experts": moe.routed_experts,
        "top_k": moe.routed_top_k,
        "window": model.config.max_seq_len,
    }
    return TextRoutingView(
        state=state,
        checkpoint=info,
        text=chars,
        layers=tuple(capture.layers),
        indices={i: capture.indices[i].numpy() for i in capture.layers},
        weights={i: capture.weights[i].numpy() for i in capture.layers},
        load={
            i: np.bincount(capture.indices[i].numpy().reshape(-1), minlength=moe.routed_experts)
            for i in capture.layers
        },
    )
