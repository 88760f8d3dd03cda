"""Training with expert parallelism: experts sharded, everything else data-parallel.

``ExpertParallelTrainer`` is ``moe_lab.train.Trainer`` on W ranks. Every rank builds the whole
model from the seed (so the initialization is the single-process one), keeps its block of
every MoE layer's experts (``shard_experts``) and trains on its slice of each global batch:

* Batches: every rank draws the same global batch of B windows from the shared, seeded
  generator and takes rows ``[r B/W, (r+1) B/W)``; the W slices concatenated are the batch a
  single process trains on, in the same order.
* Gradients: each rank backpropagates its own loss ``L_r`` (the mean over its tokens plus the
  global balancing losses). The sum over ranks of ``L_r`` is W times the single-process loss
  ``L``. Replicated parameters get ``dL_r/dtheta`` from their own rank only, and
  ``DistributedDataParallel`` averages them: ``sum_r dL_r/dtheta / W = dL/dtheta``. An expert
  lives on one rank, and the backward all-to-all already brought it the gradient from every
  rank's tokens, ``sum_r dL_r/dtheta_e``, which is divided by W here. DDP cannot do that part:
  it would average an expert's gradient with the *other* experts held by the other ranks, so
  the experts are excluded from DDP.
* Clipping: the global gradient norm is the norm over the replicated gradients (equal on every
  rank after DDP) and every rank's expert gradients (one all-reduce of their squared norms).
* AdamW is elementwise, so each rank's optimizer updates its own parameters exactly as a
  single process would; loss-free balancing uses the global tokens per expert.

So an EP run follows the single-process run on the same global batches to float32 round-off.

Checkpoints: ``save`` gathers the expert blocks (and their optimizer state) into rank 0, which
writes the single-process checkpoint format, one file. Why not ``torch.distributed.checkpoint``
(DCP): DCP writes each rank's shards in parallel and reshards on load, which is what a model too
large for one process needs; but it recognizes shards only as DTensors, and these experts are
plain per-rank tensors, so it would take each rank's block for a replica. For the course's
models one file is small and it is interchangeable: ``moe-lab sample``, a single-process
``Trainer.load`` and an EP run with any W that divides E all read it (``load_state_dict`` keeps
each rank's block of a full tensor).

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from moe_lab.config import ModelConfig
from moe_lab.data import Batch, Corpus, sample_batch
from moe_lab.model import LMOutput
from moe_lab.moe_layer import MoEOutput
from moe_lab.parallel.group import (
    backend_for,
    check_same_on_all_ranks,
    init_distributed,
    require_process_group,
)
from moe_lab.parallel.layer import EXPERT_WEIGHTS, ExpertParallelMoE, shard_experts
from moe_lab.routers import RoutingResult
from moe_lab.train import CHECKPOINT_FILE, TrainConfig, Trainer, evaluate, lr_at


def rank_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """Rows ``[r B/W, (r+1) B/W)`` of a global batch: rank r's slice."""
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} cannot be split evenly over W={world_size} ranks:"
            f" use a batch size that is a multiple of {world_size}"
        )
    rows = batch_size // world_size
    return slice(rank * rows, (rank + 1) * rows)


def gather_rows(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on each) concatenated along dim 0, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts)


class RankSlicedModel(nn.Module):
    """Runs each rank on its rows of a global batch and returns the logits of the whole batch.

    Lets ``moe_lab.train.evaluate`` evaluate a sharded model unchanged: it sees the logits a
    single process would compute and returns the global validation loss on every rank.
    """

    def __init__(self, model: nn.Module, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.model, self.group = model, group

    def forward(self, idx: torch.Tensor) -> LMOutput:
        rank, world_size = require_process_group(self.group)
        out = self.model(idx[rank_rows(idx.shape[0], rank, world_size)])
        logits = gather_rows(out.logits, self.group)  # (B/W, T, V) per rank -> (B, T, V)
        return LMOutput(logits, None, out.aux_loss, out.aux_losses, {})


class ExpertParallelTrainer(Trainer):
    """``Trainer`` with the experts sharded over the ranks of a process group.

    Call it on every rank with the same configs (checked). ``run``, ``save``, ``evaluate`` and
    ``load`` are collectives: every rank calls them. The History is the global one, the same on
    every rank and equal to a single-process run's (the routing statistics are gathered).

    Args:
        model_config: an MoE ``ModelConfig`` whose experts divide evenly over the ranks.
        train_config: its ``batch_size`` must be a multiple of W; ``device`` must match the
            group's backend (cpu for gloo, cuda for nccl).
        corpus: as for ``Trainer``.
        group: the process group (None: the default group; ``load`` always uses it).

    Attributes:
        model: the sharded ``TinyLM`` (this rank's experts); ``ddp``: the same model wrapped in
        ``DistributedDataParallel`` for the replicated parameters.

    Taught in: notebooks/07_gpu_and_scaling.ipynb.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        corpus: Corpus | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        rank, world_size = require_process_group(group)
        if model_config.moe is None:
            raise ValueError(
                "expert parallelism shards the experts of an MoE model, and this model is dense:"
                " choose an MoE preset (tiny-moe)"
            )
        rank_rows(train_config.batch_size, rank, world_size)  # raises unless W divides B
        check_same_on_all_ranks(
            "the model and training configs", (model_config, train_config), group
        )
        super().__init__(model_config, train_config, corpus)  # the whole model, from the seed
        if backend_for(self.device) != dist.get_backend(group):
            raise ValueError(
                f"device {self.device.type} needs a {backend_for(self.device)} process group,"
                f" this one is {dist.get_backend(group)}: set the device the group was made for"
            )
        self.group, self.rank, self.world_size = group, rank, world_size
        shard_experts(self.model, group)
        layers = self.model.moe_layers.values()
        self.expert_parameters = [p for layer in layers for p in layer.experts.parameters()]
        expert_ids = {id(p) for p in self.expert_parameters}
        self.replicated_parameters = [p for p in self.model.parameters() if id(p) not in expert_ids]
        ignored = [name for name, p in self.model.named_parameters() if id(p) in expert_ids]
        # DDP's documented (if underscored) way to leave parameters alone: the experts.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, ignored)
        # At construction DDP broadcasts rank 0's replicated parameters and buffers (equal on
        # every rank anyway); the selection bias then changes identically on every rank, from
        # the global counts, so no buffer needs syncing in the forward.
        self.ddp = DistributedDataParallel(
            self.model, process_group=group, forward_sync_buffers=False
        )
        self.optimizer = self._build_optimizer()  # over this rank's parameters
        self.optimizer.register_load_state_dict_pre_hook(self._take_expert_block_of_state)

    # -- one step -----------------------------------------------------------------------------

    def _train_step(self) -> None:
        config = self.config
        start = time.perf_counter()
        batch = sample_batch(
            self.corpus.train, config.batch_size, config.seq_len, self.data_generator
        )  # the global batch: every rank draws the same one
        rows = rank_rows(config.batch_size, self.rank, self.world_size)
        local = Batch(*(t[rows] for t in (batch.x, batch.y, batch.domain, batch.char_class)))
        local = local.to(self.device)
        out = self.ddp(local.x, local.y)
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        out.total_loss.backward()  # DDP averages the replicated gradients over the ranks
        for parameter in self.expert_parameters:  # sum over every rank's tokens -> the mean
            if parameter.grad is not None:
                parameter.grad.div_(self.world_size)
        grad_norm = self._clip_gradients(config.grad_clip if config.grad_clip > 0 else math.inf)
        self.optimizer.step()
        for index, layer in self.model.moe_layers.items():
            layer.update_bias(out.moe_outputs[index].tokens_per_expert)  # global counts
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._record(self._global_output(out), lr, grad_norm, time.perf_counter() - start)

    def _clip_gradients(self, max_norm: float) -> torch.Tensor:
        """Clip to the global norm over all ranks' gradients; returns that norm."""
        replicated = [p.grad for p in self.replicated_parameters if p.grad is not None]
        experts = [p.grad for p in self.expert_parameters if p.grad is not None]
        replicated_norm = torch.nn.utils.get_total_norm(replicated)
        expert_square = torch.nn.utils.get_total_norm(experts).square().to(self.device)
        dist.all_reduce(expert_square, group=self.group)  # every rank's experts
        total = (replicated_norm.to(self.device).square() + expert_square).sqrt()
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), max_norm, total)
        return total

    @torch.no_grad()
    def _global_output(self, out: LMOutput) -> LMOutput:
        """``out`` with the loss averaged and the routing gathered over the ranks, for the
        History (the balancing losses and tokens per expert are global already)."""
        loss = out.loss.detach().clone()
        dist.all_reduce(loss, group=self.group)
        moe_outputs = {}
        for index, o in out.moe_outputs.items():
            r = o.routing
            parts = (r.indices, r.weights, r.probs, r.logits, o.dropped)
            packed = torch.cat([t.double() for t in parts], dim=1)  # one gather per layer
            columns = [t.shape[1] for t in parts]
            indices, weights, probs, logits, dropped = gather_rows(packed, self.group).split(
                columns, dim=1
            )
            routing = RoutingResult(
                indices.long(), weights.to(r.weights.dtype), probs.float(), logits.float()
            )
            moe_outputs[index] = MoEOutput(
                o.y, o.aux_loss, o.losses, o.tokens_per_expert, dropped.bool(), routing
            )
        return LMOutput(
            out.logits, loss / self.world_size, out.aux_loss, out.aux_losses, moe_outputs
        )

    def evaluate(self) -> tuple[float, dict[str, float]]:
        """The global validation loss, on every rank (each evaluates its rows)."""
        c = self.config
        return evaluate(
            RankSlicedModel(self.model, self.group),
            self.corpus.val,
            c.batch_size,
            c.seq_len,
            c.eval_batches,
            self.corpus.domain_names,
            self.device,
        )

    def run(self, steps=None, progress: bool = True, description: str | None = None):
        """``Trainer.run`` on every rank; rank 0 alone shows the progress bar."""
        return super().run(steps, progress and self.rank == 0, description)

    # -- checkpoints --------------------------------------------------------------------------

    def _expert_layers(self) -> dict[str, ExpertParallelMoE]:
        return {
            name: module
            for name, module in self.model.named_modules()
            if isinstance(module, ExpertParallelMoE)
        }

    def state_dict(self) -> dict:
        """The single-process state: expert blocks and their AdamW moments gathered from every
        rank (a collective). Every rank returns it; ``save`` writes rank 0's."""
        state = super().state_dict()
        model = dict(state["model"])
        for name in self._expert_layers():
            for weight in EXPERT_WEIGHTS:
                key = f"{name}.experts.{weight}"
                if key in model:
                    model[key] = gather_rows(model[key], self.group).cpu()
        state["model"] = model
        optimizer = state["optimizer"]
        expert_ids = {id(p) for p in self.expert_parameters}
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        gathered = {}
        for index, entry in optimizer["state"].items():
            if id(params[index]) in expert_ids:
                entry = {
                    key: gather_rows(value, self.group).cpu() if value.dim() > 0 else value
                    for key, value in entry.items()
                }
            gathered[index] = entry
        state["optimizer"] = {**optimizer, "state": gathered}
        return state

    def save(self, directory: str | Path) -> Path:
        """Rank 0 writes ``Trainer.save``'s files with the gathered state; every rank calls it."""
        if self.rank == 0:
            path = super().save(directory)
        else:
            self.state_dict()  # take part in the gathers
            path = Path(directory) / CHECKPOINT_FILE
        dist.barrier(group=self.group)  # nobody reads the checkpoint before it is written
        return path

    def _take_expert_block_of_state(self, optimizer, state_dict: dict) -> dict:
        """Optimizer ``load_state_dict`` pre-hook: keep this rank's rows of full expert states."""
        layers = list(self.model.moe_layers.values())
        block = {}
        for layer in layers:
            rows = slice(layer.first_expert, layer.first_expert + layer.n_local)
            for p in layer.experts.parameters():
                block[id(p)] = (layer.config.routed_experts, rows)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = {}
        for index, entry in state_dict["state"].items():
            if id(params[int(index)]) in block:
                n_experts, rows = block[id(params[int(index)])]
                entry = {
                    key: value[rows] if value.dim() > 0 and value.shape[0] == n_experts else value
                    for key, value in entry.items()
                }
            state[index] = entry
        return {**state_dict, "state": state}


def join_cli_run(world_size: int, device: str) -> type[ExpertParallelTrainer]:
    """For ``moe-lab train --expert-parallel W``: join torchrun's process group.

    Checks that the launcher started W processes, initializes the group (gloo on the CPU, NCCL
    on CUDA), silences the standard output of every rank but 0 (one report, not W), and returns
    the trainer class to use.
    """
    if dist.is_initialized():
        launched = dist.get_world_size()
    else:
        launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world_size:
        raise ValueError(
            f"--expert-parallel {world_size} needs {world_size} processes and this run has"
            f" {launched}: launch with torchrun --nproc-per-node {world_size} -m moe_lab.cli"
            " train ... (README: Expert parallelism)"
        )
    owns_group = not dist.is_initialized()
    init_distributed(device)
    if owns_group:
        atexit.register(dist.destroy_process_group)
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    print(f"expert parallelism: {world_size} ranks, {dist.get_backend()} process group")
    return ExpertParallelTrainer
