"""Expert parallelism: an MoE layer whose E experts are spread over the W ranks of a group.

Rank r holds experts ``[r E/W, (r+1) E/W)`` (a contiguous block) and everything else of the
layer (router, shared experts) as a replica. One forward, on every rank at once:

1. route this rank's own N_r tokens (the router is replicated);
2. dropless: sort the token copies by expert, send each rank the per-expert counts of the
   copies addressed to its experts (an all-to-all of E integers), then the copies themselves
   (``all_to_all_single`` with variable split sizes);
   capacity: scatter the copies into a fixed (E, C, D) buffer with C from this rank's N_r
   tokens (GShard's per-group capacity, dropping the rest) and send block s of E/W experts to
   rank s (equal split sizes, no counts needed);
3. run the local experts on what arrived, through a ``moe_lab.dispatch`` backend (dropless)
   or the capacity backend's batched expert step;
4. send the outputs back with the reverse all-to-all and combine them with the router weights.

The result equals a single-process ``MoELayer`` with the same weights on the W ranks' batches
concatenated in rank order (with ``capacity_groups=W`` when there is a capacity, since each
rank's batch is one capacity group): outputs, the balancing losses (computed from counts and
sums all-reduced over the ranks) and every gradient. The exchanges are differentiable
(``moe_lab.parallel.collectives``), so ``loss.backward()`` on every rank brings each expert the
gradient from every rank's tokens.

Reference: Lepikhin et al. 2020 (GShard: experts sharded over devices, tokens moved by
all-to-all; capacity per group of tokens, section 2.2 and Algorithm 1); Fedus et al. 2021
(Switch Transformer), section 5.4 and Figure 9 (expert and data parallelism); Qiu et al. 2025,
"Demons in the Detail" (balancing loss from global-batch statistics, as here).

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from moe_lab.balancing import router_z_loss, sequence_balance_loss, switch_loss
from moe_lab.config import MoEConfig
from moe_lab.dispatch.capacity import capacity_buffer, capacity_combine
from moe_lab.dispatch.common import combine_sorted, sort_by_expert
from moe_lab.experts import StackedExperts
from moe_lab.moe_layer import MoELayer, MoEOutput
from moe_lab.parallel.collectives import (
    ExchangeLog,
    Stopwatch,
    all_reduce_sum,
    all_to_all,
    exchange_counts,
)
from moe_lab.parallel.group import check_same_on_all_ranks, require_process_group
from moe_lab.routers import RoutingResult

EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


@dataclass
class ExpertParallelOutput(MoEOutput):
    """``MoEOutput`` of one rank, plus what the exchange moved.

    ``y``, ``dropped`` and ``routing`` are this rank's tokens; ``aux_loss``, ``losses`` and
    ``tokens_per_expert`` (E,) are global: the same on every rank, equal to a single process's
    on the concatenated batch.

    Attributes:
        exchange: bytes this rank sent to other ranks (and seconds, when timed), by exchange;
            the backward adds its two exchanges when it runs.
        expert_rows: (E/W,) long, rows each of this rank's experts computed, from all ranks
            (capacity: the full buffer, padding included).
    """

    exchange: ExchangeLog
    expert_rows: torch.Tensor


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class ExpertParallelMoE(MoELayer):
    """An ``MoELayer`` whose routed experts are split over the ranks of a process group.

    Each rank keeps E/W consecutive experts; the router and shared experts are replicated.
    Every rank must call ``forward`` (and ``backward``) together: they exchange tokens.

    Reference: GShard (Lepikhin et al. 2020); Switch Transformer (Fedus et al. 2021), section
    5.4; see the module docstring.

    Args:
        config: the layer's ``MoEConfig``, the same on every rank (checked). With a
            ``capacity_factor`` it must have ``capacity_groups=W``: each rank fills its own
            share of every expert's capacity (GShard's groups), which is what a single process
            reproduces with ``capacity_groups=W``.
        group: the process group (None: the default group).
        time_exchanges: record the seconds of each exchange and of the local experts in
            ``ExchangeLog.seconds`` (synchronizes the device on CUDA).

    Shape:
        x: (B, T, D) or (N, D), this rank's tokens -> ``ExpertParallelOutput`` with y like x.
        Losses over 2-D inputs count each rank's tokens as one sequence (``seq_balance``).

    Attributes:
        experts: ``StackedExperts`` of this rank's E/W experts, global ids
            ``first_expert ... first_expert + E/W - 1``.
        rank, world_size, first_expert.

    Example (on every rank of a group of 2)::

        layer = ExpertParallelMoE(MoEConfig(d_model=16, d_expert=32, n_experts=4, top_k=2))
        out = layer(x_of_this_rank)  # layer.experts holds 2 of the 4 experts

    Built under the same seed, it holds exactly the expert block that ``MoELayer(config)`` would
    hold (the whole layer is initialized, then cut); ``from_layer`` copies an existing layer.

    Taught in: notebooks/07_gpu_and_scaling.ipynb.
    """

    def __init__(
        self,
        config: MoEConfig,
        group: dist.ProcessGroup | None = None,
        time_exchanges: bool = False,
    ) -> None:
        rank, world_size = require_process_group(group)
        n_experts = config.routed_experts
        if n_experts % world_size:
            raise ValueError(
                f"{n_experts} experts cannot be split evenly over W={world_size} ranks: use a"
                f" world size that divides the number of experts ({divisors(n_experts)})"
            )
        if config.router == "expert_choice":
            raise ValueError(
                "router='expert_choice' lets each expert pick tokens from the whole batch, which"
                " no single rank holds: use a token-choice router with expert parallelism"
            )
        if config.capacity_factor is not None and config.capacity_groups != world_size:
            raise ValueError(
                f"with a capacity_factor each of the W={world_size} ranks fills its own share of"
                f" every expert's capacity (GShard's groups): set capacity_groups={world_size}"
                f" (not {config.capacity_groups}), which a single process reproduces"
            )
        check_same_on_all_ranks("the MoE config", (config, world_size), group)
        super().__init__(config)  # the whole layer, as a single process would build it
        self.group, self.rank, self.world_size = group, rank, world_size
        self.n_local = n_experts // world_size
        self.first_expert = rank * self.n_local
        self.time_exchanges = time_exchanges
        self.experts = self._expert_block(self.experts)
        self.register_load_state_dict_pre_hook(self._take_expert_block)

    @classmethod
    def from_layer(
        cls,
        layer: MoELayer,
        group: dist.ProcessGroup | None = None,
        time_exchanges: bool = False,
    ) -> ExpertParallelMoE:
        """This rank's share of an existing ``MoELayer``: its weights, its expert block.

        Draws nothing from torch's random generator (a model sharded after it was built keeps
        the random stream it would have had).
        """
        with torch.random.fork_rng(devices=[]):
            sharded = cls(layer.config, group, time_exchanges)
        weight = layer.experts.w_up
        sharded.to(device=weight.device, dtype=weight.dtype)
        sharded.load_state_dict(layer.state_dict())  # the full experts: the hook keeps a block
        return sharded.train(layer.training)

    def _expert_block(self, full: StackedExperts) -> StackedExperts:
        """A ``StackedExperts`` holding experts [first, first + E/W) of ``full`` (copies)."""
        with torch.device("meta"):  # no initialization (and no random numbers drawn)
            block = StackedExperts(self.n_local, full.d_model, full.d_expert, full.activation)
        block.to_empty(device=full.w_up.device).to(full.w_up.dtype)
        rows = slice(self.first_expert, self.first_expert + self.n_local)
        with torch.no_grad():
            for name in EXPERT_WEIGHTS:
                if getattr(full, name) is not None:
                    getattr(block, name).copy_(getattr(full, name)[rows])
        return block

    def _take_expert_block(self, module, state_dict, prefix, *args) -> None:
        """``load_state_dict`` accepts the whole layer's experts (E, ...) and keeps this rank's
        block, so a single-process checkpoint loads into any world size."""
        n_experts = self.config.routed_experts
        rows = slice(self.first_expert, self.first_expert + self.n_local)
        for name in EXPERT_WEIGHTS:
            key = f"{prefix}experts.{name}"
            value = state_dict.get(key)
            if value is not None and value.shape[0] == n_experts != self.n_local:
                state_dict[key] = value[rows]

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, token_ids: torch.Tensor | None = None
    ) -> ExpertParallelOutput:
        self._check_input(x, token_ids)
        batch_size = x.shape[0] if x.dim() == 3 else 1
        flat = x.reshape(-1, self.config.d_model)  # (B, T, D) -> (N, D)
        routing = self.router(flat, token_ids)
        log = ExchangeLog()
        if self.config.capacity_factor is None:
            y, dropped, expert_rows = self._exchange_dropless(flat, routing, log)
        else:
            y, dropped, expert_rows = self._exchange_with_capacity(flat, routing, log)
        y = self.add_shared_experts(flat, y)  # (N, D)
        losses, tokens_per_expert = self._global_statistics(routing, batch_size)
        return ExpertParallelOutput(
            y=y.view(x.shape),  # (N, D) -> x's shape
            aux_loss=self.weighted_aux_loss(losses, y.device),
            losses=losses,
            tokens_per_expert=tokens_per_expert,
            dropped=dropped,
            routing=routing,
            exchange=log,
            expert_rows=expert_rows,
        )

    def _local_routing(self, local_expert: torch.Tensor, dtype: torch.dtype) -> RoutingResult:
        """Received rows as a routing over the E/W local experts: one expert each, weight 1
        (the router weights are applied back on the token's own rank)."""
        n_rows = local_expert.shape[0]
        nothing = torch.zeros(1, self.n_local, device=local_expert.device).expand(n_rows, -1)
        ones = torch.ones(n_rows, 1, dtype=dtype, device=local_expert.device)
        return RoutingResult(local_expert[:, None], ones, nothing, nothing)  # (R, 1), (R, E/W)

    def _exchange_dropless(self, flat, routing, log):
        W, n_local, group, timed = self.world_size, self.n_local, self.group, self.time_exchanges
        order = sort_by_expert(routing, None)  # copies sorted by expert; counts on the host
        send_counts = order.device_offsets.diff()  # (E,) copies per expert, on the device
        # [s, j]: copies rank s sends to local expert j (block s of what each rank sent)
        recv_table = exchange_counts(send_counts, group, log, timed).view(W, n_local)
        # all_to_all_single takes its split sizes as Python lists, so the host waits for the
        # counts (the sort's offsets, the received table): the synchronization every dropless
        # exchange pays. Rows to rank r: the copies for its experts, from the sort's offsets.
        offsets = order.offsets  # (E+1,) on the host
        send_splits = [offsets[(r + 1) * n_local] - offsets[r * n_local] for r in range(W)]
        recv_splits = recv_table.sum(1).tolist()  # rows from each rank
        rows = flat.index_select(0, order.token_index)  # (M, D), M = N*K, by expert
        received = all_to_all(rows, send_splits, recv_splits, group, log, "dispatch", timed)
        # received (R, D): from rank 0 its rows for local experts 0..E/W-1 in order, then rank 1
        local_expert = torch.arange(n_local, device=flat.device).repeat(W)  # (W*E/W,)
        local_expert = local_expert.repeat_interleave(
            recv_table.reshape(-1), output_size=sum(recv_splits)
        )  # (R,)
        with Stopwatch(timed, flat.device) as watch:
            expert_out = self.dispatch(
                received, self._local_routing(local_expert, flat.dtype), self.experts
            ).y  # (R, D)
        log.time("experts", watch.seconds)
        back = all_to_all(expert_out, recv_splits, send_splits, group, log, "combine", timed)
        top_k = routing.indices.shape[1]
        y = combine_sorted(back, order.inverse, top_k, routing.weights.to(flat.dtype))  # (N, D)
        dropped = torch.zeros_like(routing.indices, dtype=torch.bool)  # (N, K)
        return y, dropped, recv_table.sum(0)

    def _exchange_with_capacity(self, flat, routing, log):
        W, n_local, group, timed = self.world_size, self.n_local, self.group, self.time_exchanges
        n_tokens, d_model = flat.shape
        if self.config.validate_inputs:  # fixed-size buffers: every rank must have as many rows
            check_same_on_all_ranks("the number of tokens per rank", n_tokens, group)
        capacity = self.config.capacity(n_tokens)  # this rank's tokens are one group
        buffer, placement = capacity_buffer(flat, routing, capacity, self.config.drop_policy)
        splits = [n_local * capacity] * W  # block s: rank s's experts, C rows each
        received = all_to_all(
            buffer.view(-1, d_model), splits, splits, group, log, "dispatch", timed
        )
        per_expert = (
            received.view(W, n_local, capacity, d_model)  # (W, E/W, C, D): by source rank
            .transpose(0, 1)
            .reshape(n_local, W * capacity, d_model)  # (E/W, W*C, D): by local expert
        )
        with Stopwatch(timed, flat.device) as watch:
            out = self.experts.batched_forward(per_expert)  # (E/W, W*C, D)
        log.time("experts", watch.seconds)
        out = out.view(n_local, W, capacity, d_model).transpose(0, 1).reshape(-1, d_model)
        back = all_to_all(out, splits, splits, group, log, "combine", timed)  # (E*C, D)
        y = capacity_combine(back, placement, n_tokens)  # (N, D)
        expert_rows = torch.full((n_local,), W * capacity, dtype=torch.long, device=flat.device)
        return y, placement.dropped, expert_rows

    # -- balancing losses from global statistics -------------------------------------------

    def _global_statistics(
        self, routing: RoutingResult, batch_size: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The balancing losses of the whole (all ranks') batch, and its tokens per expert.

        Each loss is a mean over tokens or sequences, so each rank contributes sums and counts,
        added up by one differentiable all-reduce (float64, so the counts stay exact): the
        Switch loss needs the global f_i (assignment fractions) and P_i (mean probabilities),
        the z-loss the mean over all tokens, DeepSeek-V3's sequence loss the mean over all
        sequences. A part whose weight is 0 is computed without an autograd graph. (Many
        frameworks average per-rank losses instead; Qiu et al. 2025 found that the global-batch
        statistics let experts specialize more, and Qwen3-MoE uses them.)
        """
        weights, grad = self.loss_weights(), torch.is_grad_enabled()
        n_tokens = routing.indices.shape[0]
        device = routing.probs.device
        with torch.set_grad_enabled(grad and weights["load_balance"] > 0):
            prob_sums = routing.probs.double().sum(0)  # (E,)
        with torch.set_grad_enabled(grad and weights["z"] > 0):
            z_sum = router_z_loss(routing.logits).double() * n_tokens
        with torch.set_grad_enabled(grad and weights["seq_balance"] > 0):
            seq_sum = sequence_balance_loss(
                routing.probs, routing.indices, batch_size, self.config.routed_top_k
            ).double() * batch_size  # fmt: skip
        sizes = torch.tensor([n_tokens, batch_size], dtype=torch.float64, device=device)
        counts = routing.tokens_per_expert().double()  # (E,)
        local = torch.cat([prob_sums, z_sum[None], seq_sum[None], sizes, counts])
        total = all_reduce_sum(local, self.group)  # (2E + 4,)
        n_experts = prob_sums.shape[0]
        prob_sums, (z_sum, seq_sum, n_all, b_all), counts = total.split([n_experts, 4, n_experts])
        fractions = counts / counts.sum().clamp_min(1.0)  # f_i, no gradient
        losses = {
            "load_balance": switch_loss(fractions.float(), (prob_sums / n_all).float()),
            "z": (z_sum / n_all).float(),
            "seq_balance": (seq_sum / b_all).float(),
        }
        return losses, counts.detach().round().long()

    def balancing_losses(self, routing: RoutingResult, batch_size: int) -> dict[str, torch.Tensor]:
        """The losses of the whole batch over all ranks (a collective: every rank calls it)."""
        return self._global_statistics(routing, batch_size)[0]

    def extra_repr(self) -> str:
        last = self.first_expert + self.n_local - 1
        return (
            f"{super().extra_repr()}, rank={self.rank} of W={self.world_size},"
            f" experts {self.first_expert}..{last}"
        )


def shard_experts(
    module: nn.Module, group: dist.ProcessGroup | None = None, time_exchanges: bool = False
) -> nn.Module:
    """Replace every ``MoELayer`` inside ``module`` by this rank's ``ExpertParallelMoE`` of it.

    In place; returns ``module``. The replacement keeps the attribute name, so parameter names
    and their order (and thus optimizer state indices) stay those of the unsharded model.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, MoELayer) and not isinstance(child, ExpertParallelMoE):
            setattr(module, name, ExpertParallelMoE.from_layer(child, group, time_exchanges))
        else:
            shard_experts(child, group, time_exchanges)
    return module
