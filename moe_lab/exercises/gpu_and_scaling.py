"""Exercises of notebook 07, GPU and scaling: the group offsets of a sorted dispatch without a
host synchronization, the split sizes of expert parallelism's all-to-all, and DeepSeek's
group-limited top-k selection.

Taught in: notebooks/07_gpu_and_scaling.ipynb (exercises at the end).
"""

from __future__ import annotations

import math

import torch

from moe_lab.budget import PRESETS, all_to_all_bytes, from_hf_config
from moe_lab.dispatch.common import sort_by_expert
from moe_lab.exercises.core import (
    call,
    exercise,
    expect_close,
    expect_number,
    expect_tensor,
    fail,
)
from moe_lab.exercises.routing import _expect_indices
from moe_lab.group_routing import select_experts
from moe_lab.profiling import audit_operators
from moe_lab.routers import RoutingResult

NOTEBOOK = "07_gpu_and_scaling"


def _routing(indices: torch.Tensor, n_experts: int) -> RoutingResult:
    """A routing carrying only expert indices (N, K): what sorting and splitting look at."""
    n_tokens, top_k = indices.shape
    uniform = torch.full((n_tokens, n_experts), 1 / n_experts)
    return RoutingResult(indices, torch.ones(n_tokens, top_k), uniform, torch.zeros_like(uniform))


def _expect_integers(got: torch.Tensor, what: str, case: str) -> None:
    if got.dtype.is_floating_point or got.dtype.is_complex or got.dtype == torch.bool:
        fail(f"{case}: {what} has dtype {got.dtype}, expected an integer tensor (torch.long)")


# ----------------------------------------------------------------------------------------------
# 1. The group offsets of a sorted dispatch, on the device
# ----------------------------------------------------------------------------------------------


@exercise(
    NOTEBOOK,
    against="moe_lab.dispatch.common.sort_by_expert(..., host_offsets=False).device_offsets,"
    " with no host synchronization (moe_lab.profiling.audit_operators)",
)
def check_expert_offsets(attempt) -> int:
    """Check ``attempt(sorted_expert_ids, n_experts) -> offsets``, (E + 1,) integers.

    ``sorted_expert_ids`` (M,) long, ascending: the expert of each row of a sorted dispatch.
    ``offsets[e]`` is the first row of expert e and ``offsets[E] = M``, so expert e's rows are
    ``[offsets[e], offsets[e + 1])``, empty for an expert with no row. Compared with
    ``sort_by_expert``'s device offsets; the attempt runs under ``audit_operators``, and any
    operator that would make a GPU wait for the host (``bincount``, ``.item()``, ``.tolist()``,
    ``nonzero``, a tensor built from Python values ...) fails the check, as it would stall
    ``grouped``'s forward.
    """
    settings = [  # (rows M, experts E, experts that get no row)
        (12, 4, ()),
        (30, 8, (0, 5, 7)),  # the first and the last expert empty
        (7, 16, ()),  # more experts than rows: most are empty
        (64, 8, (1, 2, 3)),
        (1, 4, (0, 1, 3)),
    ]
    for seed, (n_rows, n_experts, empty) in enumerate(settings):
        case = f"case {seed + 1} of {len(settings)} (M={n_rows} rows, E={n_experts}"
        case += f", experts {list(empty)} get no row" if empty else ""
        case += f", seed {seed})"
        torch.manual_seed(seed)
        allowed = torch.tensor([e for e in range(n_experts) if e not in empty])
        ids = allowed[torch.randint(len(allowed), (n_rows,))]  # (M,) unsorted
        expected = sort_by_expert(_routing(ids[:, None], n_experts), None, host_offsets=False)
        expected = expected.device_offsets  # (E+1,)
        sorted_ids = ids.sort().values  # (M,)
        with audit_operators() as audit:
            got = call(attempt, sorted_ids.clone(), n_experts, case=case)
        if isinstance(got, list | tuple):
            fail(
                f"{case}: the offsets are a Python {type(got).__name__}: reading them into Python"
                " is the host synchronization grouped GEMM avoids; return a tensor"
            )
        expect_tensor(
            got,
            "the offsets",
            (n_experts + 1,),
            "(E + 1,)",
            case,
            shape_hints={
                (n_experts,): "one number per expert; the offsets have E + 1 entries, from 0"
                " (where expert 0 starts) to M (where the last one ends)"
            },
        )
        _expect_integers(got, "the offsets", case)
        right = torch.arange(n_experts + 1)
        expect_close(
            got,
            expected,
            "the offsets tensor",
            case,
            mistakes={
                "each expert's end is returned instead of its start (searchsorted with"
                " right=True): offsets[e] is the first row of expert e, offsets[0] = 0": (
                    torch.searchsorted(sorted_ids, right, right=True)
                ),
            },
            hint="offsets[e] counts the rows whose expert is smaller than e.",
            atol=0,
            rtol=0,
        )
        if audit.n_host_syncs:
            reasons = ", ".join(f"{n} x {why}" for why, n in audit.host_syncs.items())
            fail(
                f"{case}: the offsets are right, but computing them would make a GPU wait for the"
                f" host {audit.n_host_syncs} time(s) ({reasons}). Find each expert's first row"
                " on the device, without reading any value back: a binary search of"
                " torch.arange(E + 1) in the sorted ids (torch.searchsorted), or a cumulative"
                " sum of one-hot counts"
            )
    return len(settings)


# ----------------------------------------------------------------------------------------------
# 2. The all-to-all's split sizes
# ----------------------------------------------------------------------------------------------


def _send_matrix(indices: torch.Tensor, n_experts: int, world_size: int) -> torch.Tensor:
    """[r, s]: copies rank r sends to rank s, as ``ExpertParallelMoE`` builds its split sizes:
    each rank sorts its own tokens' copies by expert and adds up the counts of each rank's
    block of E/W experts."""
    n_tokens = indices.shape[0]
    per_rank = n_tokens // world_size
    rows = []
    for rank in range(world_size):
        own = indices[rank * per_rank : (rank + 1) * per_rank]  # (N/W, K)
        counts = torch.tensor(sort_by_expert(_routing(own, n_experts), None).counts)  # (E,)
        rows.append(counts.view(world_size, n_experts // world_size).sum(1))  # (W,)
    return torch.stack(rows)  # (W, W)


def _send_mistakes(indices: torch.Tensor, n_experts: int, world_size: int) -> dict:
    n_tokens, top_k = indices.shape
    per_rank_tokens, per_rank_experts = n_tokens // world_size, n_experts // world_size

    def matrix(source: torch.Tensor, destination: torch.Tensor) -> torch.Tensor:
        pairs = (source[:, None] * world_size + destination).flatten()  # (N*K,)
        return torch.bincount(pairs, minlength=world_size**2).view(world_size, world_size)

    token_rank = torch.arange(n_tokens) // per_rank_tokens  # (N,)
    expert_rank = indices // per_rank_experts  # (N, K)
    right = matrix(token_rank, expert_rank)
    no_diagonal = right.clone()
    no_diagonal.fill_diagonal_(0)
    per_token = torch.zeros(world_size, world_size, dtype=torch.long)
    for n in range(n_tokens):  # one row per (token, destination rank), not per copy
        for destination in set(expert_rank[n].tolist()):
            per_token[token_rank[n], destination] += 1
    return {
        "the experts are placed round-robin (expert e on rank e % W): each rank holds a"
        " contiguous block of E/W experts, rank r the experts [r·E/W, (r+1)·E/W)": matrix(
            token_rank, indices % world_size
        ),
        "the tokens are dealt round-robin (token n on rank n % W): each rank holds a contiguous"
        " block of N/W tokens": matrix(torch.arange(n_tokens) % world_size, expert_rank),
        "the matrix is transposed: row r must be what rank r sends (its input split sizes),"
        " column r what it receives (its output split sizes)": right.T,
        "the diagonal is 0: the copies a rank keeps for its own experts still go through"
        " all_to_all_single as its own chunk (copied in memory, not sent), so they count in its"
        " split sizes": no_diagonal,
        "tokens are counted instead of token copies: a token whose K experts share a rank sends"
        f" that rank {top_k} rows, one per expert": per_token,
    }


@exercise(
    NOTEBOOK,
    against="the split sizes ExpertParallelMoE builds (sort_by_expert's counts per rank's block"
    " of experts), and moe_lab.budget.all_to_all_bytes on the same routing",
)
def check_all_to_all_splits(attempt) -> int:
    """Check ``attempt(expert_indices, n_experts, world_size) -> splits``, a (W, W) integer tensor.

    ``expert_indices`` (N, K): each token's K experts, tokens in rank order. Rank r holds tokens
    ``[r N/W, (r+1) N/W)`` and experts ``[r E/W, (r+1) E/W)``. ``splits[r, s]`` is the number of
    token copies rank r sends to rank s in the dispatch all-to-all (``s == r``: the copies it
    keeps): row r is rank r's ``input_split_sizes``, column r its ``output_split_sizes``, and the
    combine all-to-all uses the transpose. Compared with the split sizes
    ``moe_lab.parallel.ExpertParallelMoE`` computes from the same routing; the bytes the
    off-diagonal entries imply are checked against ``moe_lab.budget.all_to_all_bytes``.
    """
    settings = [  # (N, E, K, W, routing)
        (8, 4, 2, 2, "random"),
        (16, 8, 2, 4, "random"),
        (12, 8, 1, 2, "random"),
        (16, 8, 2, 4, "every copy to rank 0's experts"),
        (6, 4, 2, 1, "random"),  # one rank: everything stays
        (24, 16, 4, 4, "random"),
    ]
    spec = PRESETS["Mixtral-8x7B"].config
    for seed, (n_tokens, n_experts, top_k, world, pattern) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} (N={n_tokens}, E={n_experts}, K={top_k},"
            f" W={world}, {pattern}, seed {seed})"
        )
        torch.manual_seed(seed)
        pool = n_experts // world if pattern != "random" else n_experts
        indices = torch.rand(n_tokens, pool).topk(top_k, dim=-1).indices  # (N, K) distinct
        expected = _send_matrix(indices, n_experts, world)  # (W, W)
        got = call(attempt, indices.clone(), n_experts, world, case=case)
        expect_tensor(got, "the split sizes", (world, world), "(W, W)", case)
        _expect_integers(got, "the split sizes", case)
        expect_close(
            got,
            expected,
            "the split-size matrix",
            case,
            mistakes=lambda indices=indices, n_experts=n_experts, world=world: _send_mistakes(
                indices, n_experts, world
            ),
            hint="Rank of token n: n // (N/W); rank of expert e: e // (E/W); count copies.",
            atol=0,
            rtol=0,
        )
        # the bytes these splits send, against moe_lab.budget's count on the same routing
        config = {**spec, "num_local_experts": n_experts, "num_experts_per_tok": top_k}
        moved = all_to_all_bytes(from_hf_config(config), n_tokens, world, expert_indices=indices)
        remote = int(got.sum() - got.diagonal().sum())
        row_bytes = from_hf_config(config).d_model * 2  # bf16
        expect_number(remote * row_bytes, moved["dispatch"], "the dispatch bytes", case)
    return len(settings)


# ----------------------------------------------------------------------------------------------
# 3. DeepSeek's group-limited top-k
# ----------------------------------------------------------------------------------------------


def _limited_topk(scores, top_k, n_group, topk_group, group_score, interleaved=False, fill=None):
    """Group-limited top-k with a chosen group score, group layout and fill value (to name the
    mistakes a reader's output reproduces)."""
    n_tokens, n_experts = scores.shape
    per_group = n_experts // n_group
    order = (
        torch.arange(n_experts).view(per_group, n_group).T.reshape(-1)  # group g: g, g+G, ...
        if interleaved
        else torch.arange(n_experts)
    )
    grouped = scores[:, order].view(n_tokens, n_group, per_group)  # (N, G, E/G)
    best = group_score(grouped).topk(topk_group, dim=-1).indices  # (N, M)
    allowed = torch.zeros(n_tokens, n_group, dtype=torch.bool).scatter(1, best, True)
    allowed = allowed.repeat_interleave(per_group, dim=1)  # (N, E) in `order`
    mask = torch.empty_like(allowed)
    mask[:, order] = allowed
    limited = scores.masked_fill(~mask, -math.inf if fill is None else fill)
    return limited.topk(top_k, dim=-1).indices  # (N, K)


def _best(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.amax(-1)


def _best_two(grouped: torch.Tensor) -> torch.Tensor:
    return grouped.topk(2, dim=-1).values.sum(-1)


@exercise(NOTEBOOK, against="moe_lab.group_routing.select_experts")
def check_group_limited_topk(attempt) -> int:
    """Check ``attempt(scores, top_k, n_group, topk_group, method) -> indices`` (N, K) long.

    ``scores`` (N, E): the selection scores. The E experts form ``n_group`` contiguous groups of
    E/G; each token keeps its best ``topk_group`` groups by a group score, then its top-K experts
    inside them, largest first (as ``torch.topk`` returns them). ``method``:
    ``"group_limited_greedy"`` (DeepSeek-V2: a group's best score) or ``"noaux_tc"``
    (DeepSeek-V3: the sum of a group's two best). Compared with ``select_experts``, including
    scores that are negative (a sigmoid plus a negative selection bias).
    """
    hand = torch.tensor([[0.9, 0.1, 0.8, 0.7]])  # notebook 07's case: V2 and V3 disagree
    settings = [  # (description, scores maker, K, G, M, method)
        ("sigmoid scores", lambda: torch.randn(12, 16).sigmoid(), 4, 4, 2, "noaux_tc"),
        ("softmax scores", lambda: torch.randn(12, 16).softmax(-1), 3, 4, 2,
         "group_limited_greedy"),
        ("notebook 07's hand case", lambda: hand.clone(), 2, 2, 1, "group_limited_greedy"),
        ("notebook 07's hand case", lambda: hand.clone(), 2, 2, 1, "noaux_tc"),
        ("DeepSeek-V3's shape", lambda: torch.randn(8, 256).sigmoid(), 8, 8, 4, "noaux_tc"),
        ("scores below 0: sigmoid plus a selection bias of -0.9",
         lambda: torch.randn(10, 16).sigmoid() - 0.9, 6, 4, 2, "noaux_tc"),
        ("every group allowed: plain top-k", lambda: torch.randn(6, 8).sigmoid(), 2, 4, 4,
         "noaux_tc"),
    ]  # fmt: skip
    for seed, (description, make, k, n_group, topk_group, method) in enumerate(settings):
        case = (
            f"case {seed + 1} of {len(settings)} ({description}: E={make().shape[1]}, K={k},"
            f" n_group={n_group}, topk_group={topk_group}, {method}, seed {seed})"
        )
        torch.manual_seed(seed)
        scores = make()  # (N, E)
        expected = select_experts(scores, k, method, n_group, topk_group)  # (N, K)
        got = call(attempt, scores.clone(), k, n_group, topk_group, method, case=case)
        expect_tensor(got, "indices", tuple(expected.shape), "(N, K)", case)
        right, other = (_best_two, _best) if method == "noaux_tc" else (_best, _best_two)
        wrong_score = (
            "the group score is the best expert's (DeepSeek-V2's rule): noaux_tc (DeepSeek-V3)"
            " scores a group by the sum of its two best"
            if method == "noaux_tc"
            else "the group score is the sum of the two best (DeepSeek-V3's rule):"
            " group_limited_greedy (DeepSeek-V2) scores a group by its best expert"
        )
        _expect_indices(
            got,
            expected,
            case,
            {
                wrong_score: _limited_topk(scores, k, n_group, topk_group, other),
                "the groups are interleaved (expert e in group e % G): a group is a contiguous"
                " block of E/G experts, the block one device or node holds": _limited_topk(
                    scores, k, n_group, topk_group, right, interleaved=True
                ),
                "the experts outside the chosen groups are set to 0 (as Hugging Face's DeepSeek"
                " code does), not to -inf: with scores below 0 an excluded expert then beats an"
                " allowed one": _limited_topk(scores, k, n_group, topk_group, right, fill=0.0),
                "the group score is the sum of all its experts": _limited_topk(
                    scores, k, n_group, topk_group, lambda g: g.sum(-1)
                ),
                "the group limit is ignored (plain top-k over all experts)": scores.topk(
                    k, dim=-1
                ).indices,
            },
        )
    return len(settings)
