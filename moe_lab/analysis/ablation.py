"""Expert ablation: remove one expert at inference and measure what the model loses, by label.

The contingency tables of ``specialization`` are correlational: an expert that sees mostly
digits need not be what the model uses to predict them. Ablation is the causal test. Removing
expert e from block l means its tokens go to their next choice: the router picks the top K of
the remaining E - 1 experts, and the combine weights follow the router's own rule over that new
set (renormalized for ``softmax_topk``, Mixtral's top-2). The change in next-token loss, split
by the domain and the character class of the routed token, says what the expert did.

**How an expert is removed.** Every router chooses its experts by the top K of
``scores + selection_bias``, where ``selection_bias`` is a buffer that only ever changes the
choice, never a combine weight (the hook DeepSeek-V3's loss-free balancing uses,
``moe_lab.routers.Router``). ``without_experts`` returns a *copy* of the model whose bias is
-inf at the removed experts: they can never be chosen, the next choice takes their place, and
nothing else changes. No hooks, no globals, no patched methods; the original model is untouched.
Hash routing has no next choice (the expert is a fixed function of the token id), so it cannot
be ablated this way.

Reference: the method is the standard "expert pruning" ablation, e.g. Dai et al. 2024
(DeepSeekMoE), section 4.5, which disables top-routed experts and measures Pile loss; the label
split is this course's.

Shape alphabet: W windows, T window length, C label values, E experts.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_lab.analysis.capture import window_starts
from moe_lab.data import CHAR_CLASSES, Split, batch_at
from moe_lab.model import TinyLM


def without_experts(model: TinyLM, removed: Mapping[int, int | Sequence[int]]) -> TinyLM:
    """A copy of ``model`` in which the given experts are never chosen (in evaluation mode).

    Args:
        model: a ``TinyLM``.
        removed: MoE block index -> the expert (or experts) to remove from that block.

    Returns:
        A new ``TinyLM`` with the same weights, its routers' ``selection_bias`` set to -inf at
        the removed experts (the buffer only affects which experts are chosen).

    Raises:
        ValueError: a block is not an MoE block, an expert id is out of range, the block routes
            by hash (no next choice), or fewer than K experts would remain.

    Example:
        >>> from moe_lab.model import get_preset
        >>> model = TinyLM(get_preset("tiny-moe"))
        >>> ablated = without_experts(model, {0: 3})
        >>> int(ablated(torch.zeros(1, 8, dtype=torch.long)).moe_outputs[0].tokens_per_expert[3])
        0
    """
    layers = model.moe_layers
    for block, experts in removed.items():
        if block not in layers:
            raise ValueError(f"block {block} is not an MoE block: choose one of {sorted(layers)}")
        config = layers[block].config
        ids = [experts] if isinstance(experts, int) else list(experts)
        n_experts, top_k = config.routed_experts, config.routed_top_k
        if any(not 0 <= e < n_experts for e in ids):
            raise ValueError(f"expert ids {ids} out of range for block {block}'s {n_experts}")
        if config.router == "hash":
            raise ValueError(
                f"block {block} routes by hash: a token's expert is a fixed function of its id,"
                " so there is no next choice to send it to"
            )
        if n_experts - len(set(ids)) < top_k:
            raise ValueError(
                f"removing {len(set(ids))} of {n_experts} experts leaves fewer than"
                f" top_k={top_k}: remove fewer experts"
            )
    # A fresh module with copied weights (not deepcopy: the experts' scratch buffers stay
    # behind). Its initialization draws from the global RNG, so fork it: the caller's random
    # stream is not consumed.
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        copy = TinyLM(model.config)
    copy.load_state_dict(model.state_dict())
    copy.to(device).eval()
    with torch.no_grad():
        for block, experts in removed.items():
            ids = [experts] if isinstance(experts, int) else list(experts)
            copy.moe_layers[block].router.selection_bias[ids] = -math.inf
    return copy


@torch.no_grad()
def token_losses(
    model: TinyLM, x: torch.Tensor, y: torch.Tensor, batch_windows: int = 64
) -> torch.Tensor:
    """Next-token cross-entropy of every position, in evaluation mode.

    Shape: x, y (W, T) long -> (W*T,) float, in window order
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = []
    try:
        for xs, ys in zip(x.split(batch_windows), y.split(batch_windows), strict=True):
            logits = model(xs.to(device)).logits  # (w, T, V)
            losses.append(
                F.cross_entropy(logits.flatten(0, 1), ys.to(device).flatten(), reduction="none")
                .float()
                .cpu()
            )
    finally:
        model.train(was_training)
    return torch.cat(losses)


@dataclass(frozen=True)
class AblationEffects:
    """Loss changes when each expert of each MoE block is removed, split by label.

    Attributes:
        layers: the MoE blocks, in order (rows of the ``delta`` tensors).
        label_names: label -> the names of its values (``"domain"``, ``"char_class"``).
        counts: label -> (C,) tokens with each value.
        base: label -> (C,) mean loss of the intact model on tokens with each value (nats).
        delta: label -> (layers, E, C) mean loss increase on those tokens when expert e of
            that block is removed (nats; negative = the model did better without it).
        delta_overall: (layers, E) mean loss increase over all tokens.
        n_tokens: tokens evaluated.
    """

    layers: list[int]
    label_names: dict[str, tuple[str, ...]]
    counts: dict[str, torch.Tensor]
    base: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    delta_overall: torch.Tensor
    n_tokens: int

    def relative(self, label: str) -> torch.Tensor:
        """(layers, E, C) ``delta / base``: the loss increase as a fraction of the intact loss."""
        return self.delta[label] / self.base[label].clamp_min(1e-12)


def ablation_effects(
    model: TinyLM,
    split: Split,
    domain_names: tuple[str, ...],
    layers: Sequence[int] | None = None,
    max_windows: int | None = 128,
    seq_len: int | None = None,
) -> AblationEffects:
    """Remove each expert of each MoE block in turn and measure the loss change per label.

    The loss of position t (predicting token t+1) is attributed to the labels of token t, the
    token the router saw there, as ``moe_lab.train.evaluate`` attributes domains.

    Args:
        model: a trained ``TinyLM`` (not hash-routed).
        split: labelled tokens, e.g. ``corpus.val``.
        domain_names: the corpus's ``domain_names``.
        layers: the MoE blocks to ablate (default: all).
        max_windows: evaluate this many windows, evenly spaced over the split (None: all).
        seq_len: window length (default: the model's ``max_seq_len``).

    Returns:
        ``AblationEffects`` (one forward pass per removed expert, plus one intact).

    Taught in: notebooks/05_specialization.ipynb.
    """
    seq_len = seq_len or model.config.max_seq_len
    layers = sorted(model.moe_layers) if layers is None else list(layers)
    starts = window_starts(split, seq_len)  # (all windows,)
    if max_windows is not None and max_windows < starts.numel():
        # evenly spaced over the split, so every part (and domain) of it is represented
        starts = starts[torch.linspace(0, starts.numel() - 1, max_windows).round().long()]
    batch = batch_at(split, starts, seq_len)  # (W, T)
    labels = {"domain": batch.domain.reshape(-1), "char_class": batch.char_class.reshape(-1)}
    names = {"domain": tuple(domain_names), "char_class": CHAR_CLASSES}
    counts = {k: torch.bincount(v, minlength=len(names[k])) for k, v in labels.items()}

    def by_label(values: torch.Tensor) -> dict[str, torch.Tensor]:
        means = {}
        for key, label in labels.items():
            sums = torch.zeros(len(names[key]), dtype=torch.float64)
            sums.index_add_(0, label, values.double())
            means[key] = sums / counts[key].clamp_min(1).double()  # (C,)
        return means

    base_tokens = token_losses(model, batch.x, batch.y)  # (W*T,)
    n_experts = model.moe_layers[layers[0]].config.routed_experts
    delta = {k: torch.zeros(len(layers), n_experts, len(v)) for k, v in names.items()}
    overall = torch.zeros(len(layers), n_experts)
    for row, block in enumerate(layers):
        for expert in range(n_experts):
            change = token_losses(without_experts(model, {block: expert}), batch.x, batch.y)
            change = change - base_tokens  # (W*T,)
            for key, means in by_label(change).items():
                delta[key][row, expert] = means.float()
            overall[row, expert] = change.mean()
    return AblationEffects(
        layers=layers,
        label_names=names,
        counts=counts,
        base={k: v.float() for k, v in by_label(base_tokens).items()},
        delta=delta,
        delta_overall=overall,
        n_tokens=base_tokens.numel(),
    )
