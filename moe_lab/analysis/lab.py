"""The collapse lab: tiny MoEs trained side by side under each way of balancing the load.

Every setting is the course model of notebook 04 (``tiny-moe``: 3 MoE blocks, top-2 of 8 SwiGLU
experts of width 128, 320 steps of the course recipe) with one change, trained with seeds 0, 1
and 2 by ``tools/make_checkpoints.py``, which stores every run's ``History`` and end-of-run
measurements in ``assets/collapse_lab/``:

=====================  =========================================================================
setting                what changes (balancing weights are per MoE block)
=====================  =========================================================================
none                   no balancing at all: ``aux_loss_weight = 0``
aux 0.01               Switch's auxiliary loss at Switch's weight (Fedus et al. 2021, eq. (4)-(6),
                       alpha = 1e-2): the preset as it is
aux 0.1                ten times Switch's weight
aux 1                  a hundred times: balance bought at a price in quality
z-loss                 only ST-MoE's router z-loss at its weight 1e-3 (Zoph et al. 2022, eq. (5))
loss-free bias         only DeepSeek-V3's selection bias, sign rule, rate 1e-3 (DeepSeek-AI 2024,
                       section 2.1.2; Wang et al. 2024)
noise only             ``noisy_topk`` (Shazeer et al. 2017, eq. (3)-(5)) and nothing else
hash                   hash routing by byte id, top-1 (Roller et al. 2021): no router to learn
32 experts, none       32 experts of width 32 (the same expert parameters), top-2, no balancing
32 experts, aux 0.01   the same with Switch's loss
=====================  =========================================================================

The last two exist because the first answer at this scale is that nothing collapses without
balancing: with 8 experts at top-2 the load stays within a few times the mean and no expert
dies. With 32 experts it does collapse (notebook 05 shows both, with the three seeds).

Shape alphabet: E experts, K experts per token.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from moe_lab.analysis.capture import capture_routing, moe_inputs, window_starts
from moe_lab.analysis.collapse import (
    dead_experts,
    expert_similarity,
    load_entropy,
    mean_off_diagonal,
    representation_collapse,
    routing_collapse,
)
from moe_lab.balancing import max_violation
from moe_lab.config import ModelConfig
from moe_lab.data import Corpus, batch_at
from moe_lab.history import History
from moe_lab.model import TinyLM, get_preset
from moe_lab.train import TrainConfig

LAB_SEEDS = (0, 1, 2)
LAST_STEPS = 20  # end-of-training load: the sum of the last 20 training batches' loads


@dataclass(frozen=True)
class LabSetting:
    """One collapse-lab setting: the course preset with some ``MoEConfig`` fields changed.

    Attributes:
        name: the setting's name in tables and file names.
        description: one line for tables.
        moe_changes: ``MoEConfig`` fields to replace in the ``tiny-moe`` preset.
    """

    name: str
    description: str
    moe_changes: dict = field(default_factory=dict)

    def model_config(self) -> ModelConfig:
        preset = get_preset("tiny-moe")
        return dataclasses.replace(preset, moe=dataclasses.replace(preset.moe, **self.moe_changes))

    def train_config(self, seed: int) -> TrainConfig:
        """The course recipe (``TrainConfig()``'s defaults) with this seed."""
        return TrainConfig(seed=seed)

    @property
    def slug(self) -> str:
        """The name as a file name: ``aux 0.01`` -> ``aux-0.01``."""
        return self.name.replace(", ", "-").replace(" ", "-")


_NO_AUX = {"aux_loss_weight": 0.0}
_SETTINGS = (
    LabSetting("none", "no balancing", dict(_NO_AUX)),
    LabSetting("aux 0.01", "Switch auxiliary loss, weight 0.01 (the preset)"),
    LabSetting("aux 0.1", "Switch auxiliary loss, weight 0.1", {"aux_loss_weight": 0.1}),
    LabSetting("aux 1", "Switch auxiliary loss, weight 1", {"aux_loss_weight": 1.0}),
    LabSetting("z-loss", "router z-loss 1e-3 only", {**_NO_AUX, "z_loss_weight": 1e-3}),
    LabSetting(
        "loss-free bias", "selection bias, rate 1e-3 only", {**_NO_AUX, "bias_update_rate": 1e-3}
    ),
    LabSetting("noise only", "noisy top-k, no loss", {**_NO_AUX, "router": "noisy_topk"}),
    LabSetting("hash", "hash routing by byte, top-1", {**_NO_AUX, "router": "hash", "top_k": 1}),
    LabSetting(
        "32 experts, none",
        "32 experts of width 32, no balancing",
        {**_NO_AUX, "n_experts": 32, "d_expert": 32},
    ),
    LabSetting(
        "32 experts, aux 0.01",
        "32 experts of width 32, Switch loss 0.01",
        {"n_experts": 32, "d_expert": 32},
    ),
)
LAB_SETTINGS: dict[str, LabSetting] = {s.name: s for s in _SETTINGS}

# The checkpoints in assets/checkpoints/: name -> (setting, seed).
CHECKPOINTS: dict[str, tuple[str, int]] = {
    "balanced": ("aux 0.01", 0),
    "balanced-seed1": ("aux 0.01", 1),
    "balanced-seed2": ("aux 0.01", 2),
    "collapsed": ("32 experts, none", 0),
    "hash": ("hash", 0),
}


def get_setting(name: str) -> LabSetting:
    """The setting called ``name``; an unknown name raises a ValueError listing the choices."""
    if name not in LAB_SETTINGS:
        raise ValueError(f"unknown lab setting {name!r}: choose one of {', '.join(LAB_SETTINGS)}")
    return LAB_SETTINGS[name]


def training_summary(history: History, last: int = LAST_STEPS) -> dict:
    """What the History says about the end of training, per MoE block, as plain numbers.

    The load of each block is summed over the last ``last`` training batches (one batch holds
    too few tokens per expert to call an expert dead); ``router_entropy`` is averaged over them.

    Returns:
        {"val_loss", "val_loss_by_domain", "layers": {block: {"max_violation", "dead",
        "load_entropy", "router_entropy"}}}
    """
    layers = {}
    for block, loads in history.tokens_per_expert.items():
        load = torch.tensor(loads[-last:]).sum(0)  # (E,)
        entropies = history.router_entropy[block][-last:]
        layers[block] = {
            "max_violation": max_violation(load),
            "dead": dead_experts(load),
            "load_entropy": load_entropy(load),
            "router_entropy": sum(entropies) / len(entropies),
        }
    return {
        "val_loss": history.val_loss[-1],
        "val_loss_by_domain": {k: v[-1] for k, v in history.val_loss_by_domain.items()},
        "layers": layers,
    }


def end_state(
    model: TinyLM, corpus: Corpus, capture_windows: int = 128, similarity_windows: int = 32
) -> dict:
    """The three collapses of a trained model, measured on the validation split.

    Routing collapse on the first ``capture_windows`` validation windows; expert similarity
    (mean pairwise linear CKA of the experts' outputs on the block's real inputs) and the
    representation measures on the first ``similarity_windows``.

    Returns:
        {block: {"max_violation", "dead", "load_entropy", "router_entropy", "expert_cka",
        "effective_rank", "gate_share"}}
    """
    capture = capture_routing(model, corpus.val, corpus.domain_names, max_windows=capture_windows)
    seq_len = model.config.max_seq_len
    windows = batch_at(corpus.val, window_starts(corpus.val, seq_len, similarity_windows), seq_len)
    inputs = moe_inputs(model, windows.x)  # block -> (N, D)
    result = {}
    for block, layer in model.moe_layers.items():
        routing = routing_collapse(capture, block)
        representation = representation_collapse(inputs[block], layer.router.gate.weight)
        result[block] = {
            "max_violation": routing.max_violation,
            "dead": routing.dead,
            "load_entropy": routing.load_entropy,
            "router_entropy": routing.router_entropy,
            "expert_cka": mean_off_diagonal(expert_similarity(layer.experts, inputs[block])),
            "effective_rank": representation.effective_rank,
            "gate_share": representation.gate_share,
        }
    return result
