"""Expert parallelism on ``torch.distributed``: experts spread over ranks, tokens exchanged.

With W ranks (processes, one per device), each rank holds E/W of an MoE layer's experts and a
replica of everything else, and trains on its slice of the global batch. In every MoE layer
the ranks exchange token copies with an all-to-all, compute their own experts, and send the
results back; the other parameters are replicated and their gradients all-reduced (data
parallelism, by torch's ``DistributedDataParallel``).

    layer.py         ExpertParallelMoE: the layer (dropless and with capacity), shard_experts
    collectives.py   the differentiable all-to-all and all-reduce, ExchangeLog (bytes, seconds)
    training.py      ExpertParallelTrainer: the training loop, checkpoints in one file
    group.py         init_distributed (torchrun), config checks across ranks, run_parallel
    demos.py         what notebook 07's spawned processes run: equality, volume, stragglers

Launch training on one machine with two processes (gloo on the CPU, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m moe_lab.cli train --preset tiny-moe --expert-parallel 2

The README shows the same on several machines (torchrun's rendezvous flags).

Reference: Lepikhin et al. 2020 (GShard: experts sharded over devices, tokens moved by
all-to-all); Fedus et al. 2021 (Switch Transformer), section 5.4 and Figure 9 (expert and data
parallelism).

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from moe_lab.parallel.collectives import ExchangeLog, all_reduce_sum, all_to_all
from moe_lab.parallel.group import (
    check_same_on_all_ranks,
    init_distributed,
    require_process_group,
    run_parallel,
)
from moe_lab.parallel.layer import ExpertParallelMoE, ExpertParallelOutput, shard_experts
from moe_lab.parallel.training import ExpertParallelTrainer

__all__ = [
    "ExchangeLog",
    "ExpertParallelMoE",
    "ExpertParallelOutput",
    "ExpertParallelTrainer",
    "all_reduce_sum",
    "all_to_all",
    "check_same_on_all_ranks",
    "init_distributed",
    "require_process_group",
    "run_parallel",
    "shard_experts",
]
