"""Router saturation: how early in training does the router settle on its final choices?

OLMoE's definition (Muennighoff et al. 2024, section 5, "router saturation"): for a fixed set of
N probe tokens, with S_i(t) the top-K experts of token i at checkpoint t and T the final one,

    saturation(t) = (1/N) sum_i |S_i(t) intersect S_i(T)| / K

the share of the final top-K choices already made at t (1 at t = T). The top-1 variant asks
whether the first choice is already the final first choice. OLMoE measured it on checkpoints at
1, 10, 20 and 40% of pretraining (their analysis script, ``scripts/run_moe_analysis.py`` of
allenai/OLMoE): about 60% of OLMoE-1B-7B's top-8 choices are final after 1% of pretraining, later
layers saturate earlier, and layer 0 much later than the others.

Here the ``Trainer`` records the probe tokens' top-K experts at every evaluation
(``History.routing_snapshots``: 8 evenly spaced validation windows), so the curve needs no
weight snapshots. A router that never changes (hash routing) is saturated from step 0.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe_lab.history import History


def saturation(
    snapshots: Sequence[Sequence[Sequence[int]]] | torch.Tensor, top1: bool = False
) -> list[float]:
    """Router saturation of every snapshot against the last one.

    Args:
        snapshots: S snapshots of the same N probe tokens' top-K experts, as nested lists or an
            (S, N, K) tensor, oldest first.
        top1: compare first choices only (column 0) instead of top-K sets.

    Returns:
        S values in [0, 1]; the last is 1.

    Example:
        >>> saturation([[[0, 1], [2, 3]], [[1, 5], [2, 3]]])   # token 0 kept expert 1 of 2
        [0.75, 1.0]
    """
    choices = torch.as_tensor(snapshots, dtype=torch.long)  # (S, N, K)
    if choices.dim() != 3 or choices.shape[0] == 0:
        raise ValueError(
            f"snapshots must have shape (S, N, K) with S >= 1, got {tuple(choices.shape)}"
        )
    if top1:
        return (choices[:, :, 0] == choices[-1, :, 0]).double().mean(-1).tolist()
    final = choices[-1]  # (N, K)
    # |S(t) & S(T)|: for each of the K experts at t, is it among the K final ones?
    kept = (choices[:, :, :, None] == final[None, :, None, :]).any(-1)  # (S, N, K)
    return kept.double().mean((-2, -1)).tolist()


def saturation_curves(
    history: History, top1: bool = False
) -> dict[int, tuple[list[int], list[float]]]:
    """Per MoE block: (evaluation steps, saturation at each) from a History's snapshots.

    A History resumed from one saved before snapshots existed holds them for its last
    evaluations only; they are aligned with the last steps of ``eval_step``.

    Raises:
        ValueError: the History holds no routing snapshots.
    """
    if not history.routing_snapshots:
        raise ValueError(
            "this History has no routing snapshots: it comes from a dense model or from a"
            " Trainer older than History.routing_snapshots; train again to record them"
        )
    curves = {}
    for layer, snapshots in history.routing_snapshots.items():
        steps = history.eval_step[len(history.eval_step) - len(snapshots) :]
        curves[layer] = (list(steps), saturation(snapshots, top1=top1))
    return curves


def steps_to_reach(steps: Sequence[int], values: Sequence[float], level: float) -> int | None:
    """The first step whose saturation is at least ``level`` (None if none is)."""
    for step, value in zip(steps, values, strict=True):
        if value >= level:
            return step
    return None
