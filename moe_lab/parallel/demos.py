"""What the spawned processes of the tests and of notebook 07 run (importable functions).

Each function runs on every rank of a process group started by ``run_parallel`` and returns
plain numbers (a dict or a list of dicts) from each rank:

    layer_equality      ExpertParallelMoE vs a single-process MoELayer on the concatenated
                        batch: outputs, losses, every gradient, dropped tokens
    exchange_volume     bytes each rank sent, next to moe_lab.budget's formula on the routing
    exchange_timing     seconds in the experts and in the exchanges (loopback on one machine)
    straggler_step      per-rank load and step time under balanced and skewed routing
    memory_per_rank     parameter and optimizer bytes each rank holds
    training_equality   ExpertParallelTrainer vs Trainer over some steps, and resume
    error_messages      the one-line errors of the misuse cases

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from moe_lab.config import MoEConfig
from moe_lab.moe_layer import MoELayer
from moe_lab.parallel.layer import EXPERT_WEIGHTS, ExpertParallelMoE


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the calling process."""
    return dist.get_rank(), dist.get_world_size()


def run_tasks(tasks: list[tuple]) -> list:
    """Run ``(function, *args)`` tasks one after the other in the same process group, so that
    one start of W processes serves many checks; returns each task's result."""
    return [function(*args) for function, *args in tasks]


# --------------------------------------------------------------------------------------------
# Equality with a single process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EqualityCase:
    """One comparison: a layer config, the tokens each rank holds, and how they route.

    ``pattern``: ``"random"`` (every rank's tokens anywhere); ``"skewed"`` (rank 0's tokens
    choose only experts of the first half, rank 1's only of the second half, the other ranks'
    anywhere, and the last expert is never chosen: ranks that send nothing to some ranks,
    experts that receive nothing from some ranks, an expert with no token at all);
    ``"one_rank"`` (every token chooses experts of the first E/W, so the other ranks' experts
    compute nothing).
    """

    config: MoEConfig
    pattern: str = "random"
    batch_per_rank: int = 2
    seq_len: int = 6
    seed: int = 0


def _steer_routing(layer: MoELayer, x: torch.Tensor, case: EqualityCase, world_size: int) -> None:
    """Bend the router and the inputs so that tokens route as ``case.pattern`` says.

    Router feature 0 pushes towards the experts of the first (positive) or the second
    (negative) half; feature 1 is a constant 1 that the last expert's gate weighs by -30.
    """
    if case.pattern == "random":
        return
    n_experts = layer.config.routed_experts
    rows = case.batch_per_rank
    gate = layer.router.gate.weight  # (E, D)
    with torch.no_grad():
        if case.pattern == "skewed":
            half = n_experts // 2
            gate[:half, 0], gate[half:, 0] = 4.0, -4.0
            gate[-1, 1] = -30.0
            x[..., 1] = 1.0
            x[..., 0] = 0.0
            x[:rows, :, 0] = 3.0  # rank 0: first half only
            x[rows : 2 * rows, :, 0] = -3.0  # rank 1: second half only
        elif case.pattern == "one_rank":
            block = n_experts // world_size
            gate[:block, 0], gate[block:, 0] = 4.0, -4.0
            x[..., 0] = 3.0
        else:
            raise ValueError(f"pattern={case.pattern!r} is unknown")


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to the size of b: ``max|a - b| / max(1, max|b|)``."""
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def layer_equality(cases: list[EqualityCase], atol: float | None = None) -> list[dict]:
    """On every rank: one ``ExpertParallelMoE`` vs one ``MoELayer`` per case.

    The single-process layer runs on the W ranks' batches concatenated in rank order (with
    ``capacity_groups=W`` when there is a capacity, GShard's per-rank groups). Each rank's loss
    is ``sum(y_r * g_r) + aux_loss / W``, so the ranks' losses add up to the single process's
    ``sum(y * g) + aux_loss``; replicated gradients (router, shared experts) are summed over
    the ranks, expert gradients compared block by block.

    Returns, per case, the largest differences relative to the size of the single-process
    value (``max|a - b| / max(1, max|b|)``: ``y``, ``aux_loss``, each loss part, the input,
    router and expert gradients), whether tokens per expert and dropped
    assignments match exactly, and the rows sent and received.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = []
    for case in cases:
        config = case.config
        if config.capacity_factor is not None:
            config = replace(config, capacity_groups=world_size)
        torch.manual_seed(case.seed)
        reference = MoELayer(config)
        rows, T, D = case.batch_per_rank, case.seq_len, config.d_model
        generator = torch.Generator().manual_seed(case.seed)
        x = torch.randn(world_size * rows, T, D, generator=generator)  # (B, T, D): all ranks
        g = torch.randn(world_size * rows, T, D, generator=generator)  # dL/dy
        _steer_routing(reference, x, case, world_size)
        layer = ExpertParallelMoE.from_layer(reference)

        mine = slice(rank * rows, (rank + 1) * rows)
        x_local = x[mine].clone().requires_grad_()
        out = layer(x_local)
        ((out.y * g[mine]).sum() + out.aux_loss / world_size).backward()

        x_all = x.clone().requires_grad_()
        expected = reference(x_all)
        ((expected.y * g).sum() + expected.aux_loss).backward()

        block = slice(layer.first_expert, layer.first_expert + layer.n_local)
        diffs = {
            "y": _max_difference(out.y, expected.y[mine]),
            "aux_loss": _max_difference(out.aux_loss, expected.aux_loss),
            "grad_x": _max_difference(x_local.grad, x_all.grad[mine]),
        }
        for name, value in out.losses.items():
            diffs[f"loss_{name}"] = _max_difference(value, expected.losses[name])
        for name in EXPERT_WEIGHTS:
            mine_w, theirs = getattr(layer.experts, name), getattr(reference.experts, name)
            if mine_w is not None:
                diffs[f"grad_{name}"] = _max_difference(mine_w.grad, theirs.grad[block])
        replicated = dict(reference.named_parameters())
        for name, parameter in layer.named_parameters():
            if name.startswith("experts."):
                continue
            grad = parameter.grad.clone()
            dist.all_reduce(grad)  # every rank's share of a replicated parameter's gradient
            diffs[f"grad_{name}"] = _max_difference(grad, replicated[name].grad)
        n_local_tokens = rows * T
        token_rows = slice(rank * n_local_tokens, (rank + 1) * n_local_tokens)
        result = {
            "case": case,
            "max_diff": diffs,
            "tokens_per_expert_equal": bool(
                torch.equal(out.tokens_per_expert, expected.tokens_per_expert)
            ),
            "dropped_equal": bool(torch.equal(out.dropped, expected.dropped[token_rows])),
            "n_dropped": int(out.dropped.sum()),
            "sent_rows": out.exchange.bytes.get("dispatch", 0) // (D * out.y.element_size()),
            "expert_rows": out.expert_rows.tolist(),
            "local_tokens_per_expert": out.routing.tokens_per_expert().tolist(),
        }
        if atol is not None:
            result["ok"] = max(diffs.values()) <= atol and result["dropped_equal"]
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------
# Communication: bytes counted against the formula, and time
# --------------------------------------------------------------------------------------------


def _layer_spec(config: MoEConfig):
    """The ``moe_lab.budget`` description of a model made of this one MoE block."""
    from moe_lab.budget import from_model_config
    from moe_lab.config import ModelConfig

    return from_model_config(ModelConfig(d_model=config.d_model, n_layers=1, n_heads=1, moe=config))


def _layer_and_inputs(config: MoEConfig, tokens_per_rank: int, seed: int, time_exchanges=False):
    """This rank's ExpertParallelMoE (same weights on every rank for a seed) and its tokens."""
    world_size = dist.get_world_size()
    if config.capacity_factor is not None:
        config = replace(config, capacity_groups=world_size)
    torch.manual_seed(seed)
    layer = ExpertParallelMoE(config, time_exchanges=time_exchanges)
    generator = torch.Generator().manual_seed(seed + 1 + dist.get_rank())
    x = torch.randn(tokens_per_rank, config.d_model, generator=generator)  # (N_r, D)
    return layer, x.requires_grad_()


def exchange_volume(config: MoEConfig, tokens_per_rank: int, seed: int = 0) -> dict:
    """One forward and backward; the bytes this rank counted next to the budget formula.

    Returns ``counted`` (``ExchangeLog.bytes``), ``formula`` (``moe_lab.budget.
    all_to_all_bytes`` on the same routing, all ranks' indices gathered, with its backward)
    and ``uniform`` (the same formula's expectation under uniform routing).
    """
    from moe_lab.budget import all_to_all_bytes

    rank, world_size = dist.get_rank(), dist.get_world_size()
    layer, x = _layer_and_inputs(config, tokens_per_rank, seed)
    out = layer(x)
    out.y.square().sum().backward()
    parts = [torch.empty_like(out.routing.indices) for _ in range(world_size)]
    dist.all_gather(parts, out.routing.indices)
    indices = torch.cat(parts)  # (N, K): every rank's routing, in rank order
    spec, n_tokens = _layer_spec(config), tokens_per_rank * world_size
    dtype = {torch.float32: "fp32", torch.float64: "fp64"}.get(x.dtype, "fp32")
    if config.capacity_factor is not None:
        formula = all_to_all_bytes(
            spec, n_tokens, world_size, dtype, capacity_factor=config.capacity_factor,
            backward=True,
        )  # fmt: skip
    else:
        formula = all_to_all_bytes(
            spec, n_tokens, world_size, dtype, expert_indices=indices, backward=True
        )
    uniform = all_to_all_bytes(spec, n_tokens, world_size, dtype, backward=True)
    return {
        "rank": rank,
        "world_size": world_size,
        "top_k": config.routed_top_k,
        "counted": dict(out.exchange.bytes),
        "counted_payload": out.exchange.payload_bytes(backward=True),
        "formula_rank": formula["by_rank"][rank],
        "formula_counts": formula["counts"] / world_size,
        "uniform_rank": uniform["per_rank"],
    }


def exchange_timing(config: MoEConfig, tokens_per_rank: int, repeats: int = 5, seed: int = 0):
    """Median seconds this rank spends in its experts (forward) and in each exchange, and in a
    whole forward + backward, over ``repeats`` steps after one warm-up.

    On one machine the exchanges go through loopback TCP (gloo) between processes sharing the
    CPU cores: they say what the exchange costs here, not what a network would.
    """
    layer, x = _layer_and_inputs(config, tokens_per_rank, seed, time_exchanges=True)
    samples: dict[str, list[float]] = {}
    for step in range(repeats + 1):
        dist.barrier()  # start together: a rank's wait then measures the others' work
        start = time.perf_counter()
        out = layer(x)
        out.y.square().sum().backward()
        total = time.perf_counter() - start
        if step == 0:
            continue  # warm-up (first-call allocations, kernel loading)
        for name, seconds in out.exchange.seconds.items():
            samples.setdefault(name, []).append(seconds)
        samples.setdefault("step", []).append(total)
    return {name: statistics.median(values) for name, values in samples.items()}


def straggler_step(
    config: MoEConfig, tokens_per_rank: int, bias: float, repeats: int = 5, seed: int = 0
) -> dict:
    """Per-rank load and time of a forward + backward when rank 0's experts are favoured.

    ``bias`` is added to the selection scores of rank 0's experts (the router's
    ``selection_bias``, the knob of loss-free balancing): 0 routes as the router likes, a
    larger value sends rank 0 more copies. Returns this rank's ``expert_rows`` (rows its
    experts computed: deterministic) and median seconds in its experts, in the exchanges and
    in the whole step.
    """
    layer, x = _layer_and_inputs(config, tokens_per_rank, seed, time_exchanges=True)
    with torch.no_grad():
        layer.router.selection_bias[: layer.n_local] += bias
    samples: dict[str, list[float]] = {"experts": [], "exchange": [], "step": []}
    rows = None
    for step in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        out = layer(x)
        out.y.square().sum().backward()
        total = time.perf_counter() - start
        rows = int(out.expert_rows.sum())
        if step == 0:
            continue
        seconds = out.exchange.seconds
        samples["experts"].append(seconds.get("experts", 0.0))
        samples["exchange"].append(sum(v for k, v in seconds.items() if k != "experts"))
        samples["step"].append(total)
    result = {name: statistics.median(values) for name, values in samples.items()}
    return {"rank": dist.get_rank(), "expert_rows": rows, **result}


# --------------------------------------------------------------------------------------------
# Memory per rank
# --------------------------------------------------------------------------------------------


def memory_per_rank(model_config) -> dict:
    """Parameters this rank holds once the experts are sharded, split into replicated and
    expert parameters (AdamW keeps two more float32 values per parameter)."""
    from moe_lab.model import TinyLM
    from moe_lab.parallel.layer import shard_experts

    torch.manual_seed(0)
    model = shard_experts(TinyLM(model_config))
    expert = sum(
        p.numel() for layer in model.moe_layers.values() for p in layer.experts.parameters()
    )
    total = sum(p.numel() for p in model.parameters())
    return {"rank": dist.get_rank(), "expert": expert, "replicated": total - expert}


# --------------------------------------------------------------------------------------------
# Training and checkpoints
# --------------------------------------------------------------------------------------------


def _relative(a, b) -> float:
    return _max_difference(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b))


def _state_difference(a: dict, b: dict) -> float:
    """Largest relative difference between two state dicts with the same keys and shapes."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(a.keys() ^ b.keys())}")
    return max(_max_difference(a[key], b[key]) for key in a)


def training_equality(model_config, train_config, folder: str, resume_at: int) -> dict:
    """Expert-parallel training against single-process training, and checkpoint resume.

    On every rank: (a) an uninterrupted ``ExpertParallelTrainer`` run of ``train_config.steps``
    that saves a checkpoint to ``folder`` at step ``resume_at`` on its way; (b) a new trainer
    loaded from that checkpoint and finished. On rank 0
    only: (c) the single-process ``Trainer`` run on the same global batches, and (d) a
    single-process ``Trainer.load`` of that expert-parallel checkpoint, finished.

    Returns (rank 0; other ranks an empty dict) the largest relative differences of (a) vs (c)
    (training loss, validation loss, gradient norm, auxiliary loss, router entropy per step,
    final parameters and optimizer moments), whether (b) equals (a) exactly, and (d) vs (a).
    """
    from pathlib import Path

    from moe_lab.parallel.training import ExpertParallelTrainer
    from moe_lab.train import Trainer, corpus_for

    corpus = corpus_for(train_config)
    checkpoint = Path(folder) / "expert_parallel"
    uninterrupted = ExpertParallelTrainer(model_config, train_config, corpus)
    uninterrupted.run(steps=resume_at, progress=False)
    uninterrupted.save(checkpoint)  # reads the state, changes nothing: the run goes on
    uninterrupted.run(progress=False)
    ep_state = uninterrupted.state_dict()  # gathered: the single-process layout

    resumed = ExpertParallelTrainer.load(checkpoint, corpus)
    resumed.run(progress=False)
    resumed_state = resumed.state_dict()
    if dist.get_rank() != 0:
        return {}

    single = Trainer(model_config, train_config, corpus)
    single.run(progress=False)
    single_state = single.state_dict()
    crossed = Trainer.load(checkpoint, corpus)  # the EP checkpoint, in one process
    crossed.run(progress=False)

    ep, ref = uninterrupted.history, single.history
    moe_layers = list(ref.router_entropy)
    differences = {
        "loss": _relative(ep.loss, ref.loss),
        "val_loss": _relative(ep.val_loss, ref.val_loss),
        "grad_norm": _relative(ep.grad_norm, ref.grad_norm),
        "aux_loss": _relative(ep.aux_loss, ref.aux_loss),
        "router_entropy": max(
            _relative(ep.router_entropy[i], ref.router_entropy[i]) for i in moe_layers
        ),
        "parameters": _state_difference(ep_state["model"], single_state["model"]),
        "adam_moments": max(
            _state_difference(
                {k: v for k, v in ep_state["optimizer"]["state"][i].items() if k != "step"},
                {k: v for k, v in single_state["optimizer"]["state"][i].items() if k != "step"},
            )
            for i in single_state["optimizer"]["state"]
        ),
    }
    return {
        "steps": len(ep.loss),
        "loss_curve": ep.loss,
        "single_loss_curve": ref.loss,
        "max_diff": differences,
        "tokens_per_expert_equal": ep.tokens_per_expert == ref.tokens_per_expert,
        "resume_exact": resumed.history.loss == ep.loss
        and all(torch.equal(resumed_state["model"][k], v) for k, v in ep_state["model"].items()),
        "resume_max_diff": _state_difference(resumed_state["model"], ep_state["model"]),
        "single_resumes_ep_checkpoint": _state_difference(
            crossed.state_dict()["model"], ep_state["model"]
        ),
    }


def cli_train(argv: list[str]) -> int:
    """``moe-lab train ...`` on every rank (the process group exists already); exit status."""
    from moe_lab.cli import main

    return main(argv)


# --------------------------------------------------------------------------------------------
# Misuse: one line each
# --------------------------------------------------------------------------------------------


def _message(make) -> str:
    try:
        make()
    except (ValueError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def error_messages() -> dict[str, str]:
    """The error each misuse raises on this rank, as ``"Type: message"`` (run with W = 2).

    ``indivisible``: 3 experts over 2 ranks; ``different_configs``: rank 1 builds a wider
    expert than rank 0; ``capacity_groups``: a capacity without ``capacity_groups=W``;
    ``batch``: a batch of 5 windows over 2 ranks; ``dense``: a dense model; ``launch``:
    ``--expert-parallel 4`` in a group of 2.
    """
    from moe_lab.config import ModelConfig
    from moe_lab.parallel.training import ExpertParallelTrainer, join_cli_run
    from moe_lab.train import TrainConfig

    rank = dist.get_rank()
    small = MoEConfig(d_model=8, d_expert=8, n_experts=4, top_k=1)
    model = ModelConfig(d_model=8, n_layers=1, n_heads=1, max_seq_len=8, d_ff=8, moe=small)
    return {
        "indivisible": _message(lambda: ExpertParallelMoE(replace(small, n_experts=3))),
        "different_configs": _message(
            lambda: ExpertParallelMoE(replace(small, d_expert=8 + 8 * rank))
        ),
        "capacity_groups": _message(lambda: ExpertParallelMoE(replace(small, capacity_factor=1.0))),
        "batch": _message(
            lambda: ExpertParallelTrainer(model, TrainConfig(batch_size=5, device="cpu"))
        ),
        "dense": _message(
            lambda: ExpertParallelTrainer(
                replace(model, moe=None), TrainConfig(batch_size=4, device="cpu")
            )
        ),
        "launch": _message(lambda: join_cli_run(4, "cpu")),
    }
