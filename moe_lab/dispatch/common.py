"""What every dispatch backend shares: its output type, capacity queues and the expert sort."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from moe_lab.config import DROP_POLICIES
from moe_lab.routers import RoutingResult

BLOCK_BYTES = 2 * 2**20  # one (rows, F) temporary per block: about an L2 cache or two


def block_rows_for(d_expert: int, itemsize: int) -> int:
    """Rows per block of the sorted backward: a (rows, F) temporary of about ``BLOCK_BYTES``
    (512 rows at F=1024), at least 64."""
    return max(64, BLOCK_BYTES // (d_expert * itemsize))


def expert_step_buffers(pool, x: torch.Tensor, n_rows: int, d_expert: int, swiglu: bool):
    """The sorted expert step's forward buffers from ``pool`` (a ``BufferPool``), uninitialized.

    Returns rows (M, D); gate, act (M, F), None for GELU experts; up, hidden (M, F); out
    (M+1, D), the experts' unweighted outputs, whose last row the step sets to zero.
    """
    d_model = x.shape[1]

    def buffer(name, *shape):
        return pool.empty(name, shape, x.dtype, x.device)

    rows = buffer("rows", n_rows, d_model)  # (M, D): each sorted assignment's token
    gate = buffer("gate", n_rows, d_expert) if swiglu else None  # (M, F)
    act = buffer("act", n_rows, d_expert) if swiglu else None  # (M, F): silu(gate)
    up = buffer("up", n_rows, d_expert)  # (M, F)
    hidden = buffer("hidden", n_rows, d_expert)  # (M, F): input of the down projection
    out = buffer("out", n_rows + 1, d_model)  # (M+1, D)
    return rows, gate, act, up, hidden, out


@dataclass
class DispatchOutput:
    """y (N, D): the weighted sum of expert outputs; dropped (N, K) bool: assignments cut by
    capacity (a dropped assignment contributes zero; the token still rides the residual)."""

    y: torch.Tensor
    dropped: torch.Tensor


def priority_order(routing: RoutingResult, drop_policy: str) -> torch.Tensor:
    """(N*K,) flat assignment ids (n*K + k) in the order they claim expert capacity.

    ``position``: every token's first choice, in token order, then every second choice, and so
    on (GShard's top-2, Switch's top-1: earlier tokens win). ``probability``: by combine weight,
    highest first, ties by position (batch prioritized routing, Riquelme et al. 2021, V-MoE).

    Either way, capacity makes a token's output depend on the other tokens of the batch, later
    positions of its own sequence included: with top-2 a later token's first choice claims a
    slot before an earlier token's second choice. In a decoder this leaks the future during
    training, as expert choice does; the course's language models use dropless dispatch.
    """
    n_tokens, k = routing.indices.shape
    device = routing.indices.device
    if drop_policy == "position":
        ids = torch.arange(n_tokens * k, device=device).view(n_tokens, k)  # (N, K)
        return ids.t().reshape(-1)  # (K, N) -> (N*K,): slot-major
    if drop_policy == "probability":
        position_order = priority_order(routing, "position")  # ties broken by position
        weights = routing.weights.detach().reshape(-1)[position_order]  # (N*K,)
        return position_order[torch.argsort(weights, descending=True, stable=True)]
    raise ValueError(f"drop_policy={drop_policy!r} is unknown: choose one of {DROP_POLICIES}")


def capacity_queue(
    routing: RoutingResult, capacity: int, drop_policy: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each assignment in its expert's queue; keep the first ``capacity`` of each.

    Returns:
        keep (N, K) bool: the assignment is valid and within its expert's capacity.
        position (N, K) long: its place in the expert's queue (0-based; meaningful where valid).
    """
    n_tokens, k = routing.indices.shape
    n_experts = routing.n_experts
    order = priority_order(routing, drop_policy)  # (M,) with M = N*K
    experts = routing.indices.reshape(-1)[order]  # (M,)
    valid = routing.valid_mask().reshape(-1)[order]  # (M,)
    # Invalid slots (expert choice's unchosen pairs) go to a dummy queue E and never keep.
    queue = torch.where(valid, experts, torch.full_like(experts, n_experts))  # (M,)
    sorted_queue, perm = torch.sort(queue, stable=True)  # stable: keeps the priority order
    # where each entry's queue begins: a binary search, not bincount (which syncs on a GPU)
    queue_start = torch.searchsorted(sorted_queue, sorted_queue)  # (M,)
    rank = torch.arange(queue.numel(), device=queue.device) - queue_start  # (M,)
    keep_sorted = (rank < capacity) & (sorted_queue < n_experts)  # (M,)
    flat_ids = order[perm]  # (M,) flat assignment id of each sorted entry
    keep = torch.zeros(n_tokens * k, dtype=torch.bool, device=queue.device)
    position = torch.zeros(n_tokens * k, dtype=torch.long, device=queue.device)
    keep[flat_ids] = keep_sorted
    position[flat_ids] = rank
    return keep.view(n_tokens, k), position.view(n_tokens, k)


def kept_assignments(
    routing: RoutingResult, capacity: int | None, drop_policy: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (N, K) bool, dropped (N, K) bool) for an optional capacity."""
    valid = routing.valid_mask()
    if capacity is None:
        return valid, torch.zeros_like(valid)
    keep, _ = capacity_queue(routing, capacity, drop_policy)
    return keep, valid & ~keep


@dataclass
class ExpertSort:
    """Kept assignments sorted by expert: rows of expert e are ``[offsets[e], offsets[e+1])``.

    ``inverse`` undoes the sort: assignment slot n*K + k reads sorted row ``inverse[n*K + k]``, or
    row M (a zero row the caller appends) when the slot was dropped or is not an assignment. So
    ``combine_sorted`` gathers each token's K rows without a scatter (``index_add`` is several
    times slower than a gather on the CPU).

    ``device_offsets`` holds the offsets on the tensors' device; ``counts`` and ``offsets`` the
    same on the host, for engines that loop over experts in Python (None when not asked for:
    reading them is a host synchronization on a GPU).
    """

    token_index: torch.Tensor  # (M,) long: source token of each sorted assignment
    slot_index: torch.Tensor  # (M,) long: assignment slot n*K + k of each sorted row
    inverse: torch.Tensor  # (N*K,) long: sorted row of each slot, M where there is none
    device_offsets: torch.Tensor  # (E+1,) long: prefix sums of the counts, on the device
    counts: list[int] | None  # (E,) assignments per expert, on the host
    offsets: list[int] | None  # (E+1,) prefix sums of counts, on the host


def sort_by_expert(
    routing: RoutingResult, keep: torch.Tensor | None, host_offsets: bool = True
) -> ExpertSort:
    """Sort the kept (token, slot) assignments by expert.

    ``keep`` (N, K) bool, or None when every slot is kept (dropless token choice). The offsets are
    found on the device (a binary search of each expert id in the sorted ids); ``host_offsets``
    then copies them to the host, the one synchronization of a dropless sort on a GPU. A ``keep``
    with dropped slots costs two more there: checking whether anything was dropped, and
    ``nonzero``, whose output size depends on the data.
    """
    n_tokens, k = routing.indices.shape
    experts = routing.indices.reshape(-1)  # (N*K,)
    if keep is not None and not bool(keep.all()):
        kept_slots = keep.reshape(-1).nonzero().squeeze(1)  # (M,)
        experts_sorted, perm = torch.sort(experts[kept_slots], stable=True)  # (M,)
        slot_index = kept_slots[perm]  # (M,)
    else:  # every slot kept: the sort's permutation is the slot id itself
        experts_sorted, slot_index = torch.sort(experts, stable=True)  # (N*K,)
    expert_ids = torch.arange(routing.n_experts + 1, device=experts.device)  # (E+1,)
    device_offsets = torch.searchsorted(experts_sorted, expert_ids)  # (E+1,): first row of each
    offsets = device_offsets.tolist() if host_offsets else None
    counts = [b - a for a, b in itertools.pairwise(offsets)] if offsets is not None else None
    n_rows = slot_index.numel()
    inverse = torch.full((n_tokens * k,), n_rows, dtype=torch.long, device=experts.device)
    inverse[slot_index] = torch.arange(n_rows, device=experts.device)  # (N*K,)
    return ExpertSort(
        token_index=torch.div(slot_index, k, rounding_mode="floor"),  # (M,)
        slot_index=slot_index,
        inverse=inverse,
        device_offsets=device_offsets,
        counts=counts,
        offsets=offsets,
    )


def combine_sorted(
    rows_padded: torch.Tensor,
    inverse: torch.Tensor,
    top_k: int,
    weights: torch.Tensor | None = None,
    gathered: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each token's weighted sum of its K sorted rows: rows_padded (M+1, D), last row zero.

    ``y[n] = sum_k weights[n, k] * rows_padded[inverse[n*K + k]]``, or the plain sum of the K
    rows when ``weights`` is None (what the input gradient needs). Differentiable.
    ``gathered`` (N*K, D), optional, receives the gathered rows (a reusable buffer); with
    ``weights`` None and K = 1 it is itself the result, so pass a buffer only for K > 1 there.

    Shape: rows_padded (M+1, D), inverse (N*K,), weights (N, K) -> (N, D)
    """
    if gathered is None:
        gathered = rows_padded.index_select(0, inverse)  # (N*K, D)
    else:
        torch.index_select(rows_padded, 0, inverse, out=gathered)
    slots = gathered.view(-1, top_k, rows_padded.shape[1])  # (N*K, D) -> (N, K, D)
    # K strided (multiply-)adds: cheaper than (slots * weights[..., None]).sum(1), which makes
    # an (N, K, D) temporary and reduces over a middle dimension
    if weights is None:
        if top_k == 1:
            return gathered
        y = torch.add(slots[:, 0], slots[:, 1])  # (N, D)
        for k in range(2, top_k):
            y += slots[:, k]
        return y
    y = torch.mul(slots[:, 0], weights[:, 0:1])  # (N, D) * (N, 1)
    for k in range(1, top_k):
        y.addcmul_(slots[:, k], weights[:, k : k + 1])
    return y
