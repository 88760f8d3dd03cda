"""Group-limited top-K selection (DeepSeek-V2's device-limited, DeepSeek-V3's node-limited routing).

With expert parallelism each device (or node) holds a contiguous block of experts, and a token is
sent to every device that holds one of its K experts. Plain top-K lets a token's experts fall
anywhere, so one token can cost a message to up to K devices. DeepSeek's routers first choose
``topk_group`` of the ``n_group`` expert groups, then the top-K experts inside them only, so a
token's experts live on at most ``topk_group`` groups (devices or nodes):

    scores (N, E) -> view (N, G, E/G) -> group score (N, G) -> best topk_group groups (N, M)
                  -> every expert outside them set to -inf -> top-K (N, K)

The group score is where the two versions differ:

    ``group_limited_greedy`` (DeepSeek-V2): the group's best expert score (max).
    ``noaux_tc``             (DeepSeek-V3): the sum of the group's two best scores, bias-corrected
                             (the selection bias of loss-free balancing is added first); with
                             V3's K=8 experts from M=4 nodes, 2 = K/M.

The weights are unaffected: they are gathered from the unbiased scores of the chosen experts, as
in plain routing. Hugging Face's DeepSeek-V2/V3 code fills the excluded experts with 0.0, not
-inf; the choice is the same whenever the chosen groups hold at least K experts with positive
selection scores (softmax scores always are; sigmoid scores are unless a negative bias pushes
them below 0). DeepSeek's own inference code (``inference/model.py``, ``Gate``) uses -inf, as here.

Reference: DeepSeek-AI 2024, "DeepSeek-V2", section 2.2.2 (device-limited routing; M = 3 groups
of 8 in the released model); DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", section 2.1.2
(node-limited routing: "the sum of the highest K_r/M affinity scores of the experts distributed
on each node", M = 4 of 8 nodes) and the released config.json (n_group 8, topk_group 4,
topk_method noaux_tc).

Taught in: notebooks/07_gpu_and_scaling.ipynb (devices a token touches).
"""

from __future__ import annotations

import math

import torch

from moe_lab.config import TOPK_METHODS


def group_scores(scores: torch.Tensor, n_group: int, topk_method: str) -> torch.Tensor:
    """Each token's score for each of the ``n_group`` contiguous expert groups.

    Shape: scores (N, E) -> (N, G)
    """
    grouped = scores.view(scores.shape[0], n_group, -1)  # (N, E) -> (N, G, E/G)
    if topk_method == "group_limited_greedy":
        return grouped.amax(dim=-1)  # (N, G): the best expert of each group
    if topk_method == "noaux_tc":
        return grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G): sum of the best two
    raise ValueError(
        f"topk_method={topk_method!r} has no group score: choose 'group_limited_greedy' or"
        " 'noaux_tc'"
    )


def select_experts(
    selection_scores: torch.Tensor,
    top_k: int,
    topk_method: str = "greedy",
    n_group: int = 1,
    topk_group: int = 1,
) -> torch.Tensor:
    """The top-K experts of each token, optionally only inside its best ``topk_group`` groups.

    Args:
        selection_scores: (N, E) the scores that choose (softmax probabilities or sigmoid scores,
            plus any selection bias).
        top_k: K.
        topk_method: ``"greedy"`` (no group limit), ``"group_limited_greedy"`` or ``"noaux_tc"``.
        n_group: G, the number of contiguous expert groups.
        topk_group: M, the groups each token may use.

    Returns:
        (N, K) long expert indices, in decreasing order of selection score.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1, 0.8, 0.7]])  # groups {0, 1} and {2, 3}
        >>> select_experts(scores, 2).tolist()  # plain top-2
        [[0, 2]]
        >>> select_experts(scores, 2, "noaux_tc", n_group=2, topk_group=1).tolist()
        [[2, 3]]
    """
    if topk_method not in TOPK_METHODS:
        raise ValueError(
            f"topk_method={topk_method!r} is unknown: choose one of {', '.join(TOPK_METHODS)}"
        )
    if topk_method == "greedy" or topk_group >= n_group:
        return selection_scores.topk(top_k, dim=-1).indices  # (N, K)
    n_tokens, n_experts = selection_scores.shape
    groups = group_scores(selection_scores, n_group, topk_method)  # (N, G)
    best_groups = groups.topk(topk_group, dim=-1).indices  # (N, M)
    allowed = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, best_groups, True)  # (N, G)
    per_group = n_experts // n_group
    allowed = allowed.unsqueeze(-1).expand(n_tokens, n_group, per_group)  # (N, G, E/G)
    allowed = allowed.reshape(n_tokens, n_experts)  # (N, G, E/G) -> (N, E)
    limited = selection_scores.masked_fill(~allowed, -math.inf)  # (N, E)
    return limited.topk(top_k, dim=-1).indices  # (N, K)


def groups_touched(indices: torch.Tensor, n_experts: int, n_group: int) -> torch.Tensor:
    """How many distinct expert groups (devices, when each holds one group) each token uses.

    Shape: indices (N, K) -> (N,) long
    """
    group_of = torch.div(indices, n_experts // n_group, rounding_mode="floor")  # (N, K)
    used = torch.zeros(indices.shape[0], n_group, dtype=torch.bool, device=indices.device)
    return used.scatter_(1, group_of, True).sum(dim=-1)  # (N, G) -> (N,)


def expected_groups_touched(n_experts: int, n_group: int, top_k: int) -> float:
    """Mean groups touched when the K experts are a uniformly random K-subset of the E experts.

    A given group of E/G experts is missed with probability C(E - E/G, K) / C(E, K), so the mean
    over the G groups is ``G * (1 - C(E - E/G, K) / C(E, K))`` (linearity of expectation).
    """
    miss = math.comb(n_experts - n_experts // n_group, top_k) / math.comb(n_experts, top_k)
    return n_group * (1.0 - miss)
