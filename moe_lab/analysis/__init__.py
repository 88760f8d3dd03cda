"""Routing analysis: what experts learn, measured against the corpus's planted labels.

One concept per module, each with its derivation and citations in its docstring:

    capture.py          run a trained TinyLM on labelled text; every MoE block's top-K and weights
    specialization.py   expert x label tables, normalized mutual information, shuffled baseline,
                        bootstrap interval; what a label adds beyond the token's byte
    consecutive.py      does token t+1 go where token t went? (Mixtral, Table 5)
    coactivation.py     which experts are chosen together, against independence (OLMoE)
    saturation.py       how early the router settles on its final choices (OLMoE)
    ablation.py         remove one expert at inference: the causal test, per label
    collapse.py         routing collapse, expert homogenization, representation collapse
    lab.py              the collapse lab's settings and the summaries of its runs
    report.py           every measure on one checkpoint in one call (benchmarked)

Taught in: notebooks/05_specialization.ipynb.
"""

from moe_lab.analysis.ablation import (
    AblationEffects,
    ablation_effects,
    token_losses,
    without_experts,
)
from moe_lab.analysis.capture import (
    UNKNOWN,
    RoutingCapture,
    capture_routing,
    capture_text,
    moe_inputs,
)
from moe_lab.analysis.coactivation import Coactivation, coactivation, independent_pair_shares
from moe_lab.analysis.collapse import (
    RepresentationCollapse,
    RoutingCollapse,
    dead_experts,
    effective_rank,
    expert_similarity,
    gate_subspace_share,
    linear_cka,
    load_entropy,
    mean_off_diagonal,
    representation_collapse,
    router_entropy,
    routing_collapse,
)
from moe_lab.analysis.consecutive import ConsecutiveRates, consecutive_rates, uniform_rates
from moe_lab.analysis.report import CheckpointAnalysis, analyse_checkpoint
from moe_lab.analysis.saturation import saturation, saturation_curves, steps_to_reach
from moe_lab.analysis.specialization import (
    BeyondToken,
    Specialization,
    SpecializationReport,
    beyond_token,
    contingency_table,
    mutual_information,
    normalized_mutual_information,
    specialization,
)

__all__ = [
    "UNKNOWN",
    "AblationEffects",
    "BeyondToken",
    "CheckpointAnalysis",
    "Coactivation",
    "ConsecutiveRates",
    "RepresentationCollapse",
    "RoutingCapture",
    "RoutingCollapse",
    "Specialization",
    "SpecializationReport",
    "ablation_effects",
    "analyse_checkpoint",
    "beyond_token",
    "capture_routing",
    "capture_text",
    "coactivation",
    "consecutive_rates",
    "contingency_table",
    "dead_experts",
    "effective_rank",
    "expert_similarity",
    "gate_subspace_share",
    "independent_pair_shares",
    "linear_cka",
    "load_entropy",
    "mean_off_diagonal",
    "moe_inputs",
    "mutual_information",
    "normalized_mutual_information",
    "representation_collapse",
    "router_entropy",
    "routing_collapse",
    "saturation",
    "saturation_curves",
    "specialization",
    "steps_to_reach",
    "token_losses",
    "uniform_rates",
    "without_experts",
]
