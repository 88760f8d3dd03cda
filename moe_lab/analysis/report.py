"""One call that runs every routing measure on a checkpoint: what notebook 05 does per seed.

``analyse_checkpoint`` captures the routing of a labelled split and, for every MoE block,
computes the specialization scores (domain, character class, byte), what the domain adds beyond
the byte, the consecutive-token rates, the co-activation (K >= 2) and the routing-collapse
measures. ``python -m moe_lab.bench analysis`` times it on the validation split (the course's
budget: 5 seconds per checkpoint).

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.analysis.capture import RoutingCapture, capture_routing
from moe_lab.analysis.coactivation import Coactivation, coactivation
from moe_lab.analysis.collapse import RoutingCollapse, routing_collapse
from moe_lab.analysis.consecutive import ConsecutiveRates, consecutive_rates
from moe_lab.analysis.specialization import (
    BeyondToken,
    SpecializationReport,
    beyond_token,
    specialization,
)
from moe_lab.data import Split
from moe_lab.model import TinyLM

LABELS = ("domain", "char_class", "token")


@dataclass(frozen=True)
class CheckpointAnalysis:
    """Every routing measure of one model on one split, per MoE block.

    Attributes:
        capture: the routing capture they were computed from.
        specialization: block -> NMI of the top-1 expert with each of ``LABELS``.
        beyond_token: block -> what the domain adds once the byte is known.
        consecutive: block -> repetition rates between neighbouring tokens.
        coactivation: block -> co-activation (empty when K = 1).
        collapse: block -> routing-collapse measures.
    """

    capture: RoutingCapture
    specialization: dict[int, SpecializationReport]
    beyond_token: dict[int, BeyondToken]
    consecutive: dict[int, ConsecutiveRates]
    coactivation: dict[int, Coactivation]
    collapse: dict[int, RoutingCollapse]


def analyse_checkpoint(
    model: TinyLM,
    split: Split,
    domain_names: tuple[str, ...],
    n_shuffles: int = 20,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> CheckpointAnalysis:
    """Capture ``model``'s routing of ``split`` and run every measure on every MoE block.

    Taught in: notebooks/05_specialization.ipynb.
    """
    capture = capture_routing(model, split, domain_names)
    layers = capture.layers
    return CheckpointAnalysis(
        capture=capture,
        specialization={
            layer: specialization(capture, layer, LABELS, n_shuffles, n_bootstrap, seed=seed)
            for layer in layers
        },
        beyond_token={layer: beyond_token(capture, layer, seed=seed) for layer in layers},
        consecutive={layer: consecutive_rates(capture, layer) for layer in layers},
        coactivation=(
            {layer: coactivation(capture, layer) for layer in layers} if capture.top_k >= 2 else {}
        ),
        collapse={layer: routing_collapse(capture, layer) for layer in layers},
    )
