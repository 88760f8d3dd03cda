"""The record of a training run: one list entry per step, plain enough to plot and save as JSON.

Taught in: notebooks/04_train_tiny_moe.ipynb.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class History:
    """What happened at every step, as plain lists: easy to plot, saved as JSON.

    Per step (index i is optimizer step ``step[i]``, 1-based): ``loss`` (language-model
    cross-entropy of the training batch), ``aux_loss`` (weighted total), ``aux_parts`` (name ->
    unweighted part, summed over MoE layers), ``lr``, ``grad_norm`` (before clipping),
    ``tokens`` and ``flops`` (cumulative), ``tokens_per_second`` of the step and cumulative
    ``wall_time`` in seconds (training only, evaluation excluded). Per MoE layer (block index
    -> one entry per step): ``tokens_per_expert`` (a list of E counts), ``router_entropy`` (mean
    over tokens of -sum_e p_e log p_e, in nats; log E is uniform) and ``dropped_fraction``.
    Per evaluation: ``eval_step`` (0 = before training), ``val_loss``, ``val_loss_by_domain``,
    and ``eval_wall_time``/``eval_flops``/``eval_tokens`` (the training cost spent so far).
    ``routing_snapshots`` (MoE block index -> one entry per evaluation) holds the top-K experts
    (a list of K ids per token) of a fixed probe set of validation tokens, for router
    saturation (``moe_lab.analysis.saturation``). Histories saved before this field existed
    load with it empty; a run resumed from one records snapshots only for its later
    evaluations, which are then the *last* ``len(snapshots)`` entries of ``eval_step``.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    aux_parts: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    tokens_per_expert: dict[int, list[list[int]]] = field(default_factory=dict)
    router_entropy: dict[int, list[float]] = field(default_factory=dict)
    dropped_fraction: dict[int, list[float]] = field(default_factory=dict)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_loss_by_domain: dict[str, list[float]] = field(default_factory=dict)
    eval_wall_time: list[float] = field(default_factory=list)
    eval_flops: list[float] = field(default_factory=list)
    eval_tokens: list[int] = field(default_factory=list)
    routing_snapshots: dict[int, list[list[list[int]]]] = field(default_factory=dict)

    _LAYER_KEYED = ("tokens_per_expert", "router_entropy", "dropped_fraction", "routing_snapshots")

    def to_dict(self) -> dict:
        """A JSON-ready dict (layer keys become strings)."""
        data = asdict(self)
        for name in self._LAYER_KEYED:
            data[name] = {str(layer): values for layer, values in data[name].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> History:
        """The inverse of ``to_dict``; a field missing from ``data`` (an older history) is empty."""
        data = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in cls._LAYER_KEYED:
            if name in data:
                data[name] = {int(layer): values for layer, values in data[name].items()}
        return cls(**data)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def mean_tokens_per_second(self, skip: int = 5) -> float:
        """Tokens per second over the run, skipping the first ``skip`` (warm-up) steps."""
        times = self.wall_time
        if len(times) <= skip + 1:
            return self.tokens[-1] / times[-1] if times else float("nan")
        return (self.tokens[-1] - self.tokens[skip]) / (times[-1] - times[skip])
