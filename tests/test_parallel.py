"""Expert parallelism (moe_lab.parallel) against a single process, in spawned gloo groups.

The reference is always the single-process library on the same data: a ``MoELayer`` with the
same weights on the ranks' batches concatenated in rank order, a ``Trainer`` on the same global
batches, ``moe_lab.budget.all_to_all_bytes`` on the same routing. Starting a group of
processes costs time, so each world size starts one group that runs all of its checks
(``run_tasks``); the tests below read their part of the results.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.data import make_corpus
from moe_lab.parallel import ExpertParallelMoE, ExpertParallelTrainer, run_parallel
from moe_lab.parallel.demos import (
    EqualityCase,
    cli_train,
    error_messages,
    exchange_volume,
    layer_equality,
    run_tasks,
    training_equality,
)
from moe_lab.parallel.group import NO_PROCESS_GROUP
from moe_lab.train import CHECKPOINT_FILE, TrainConfig, load_model

pytestmark = pytest.mark.distributed

# float32 round-off: the ranks add the same numbers in other orders (sums over experts' rows,
# over ranks). Measured: about 1e-7 relative.
TOLERANCE = 1e-5

BASE = MoEConfig(
    d_model=16,
    d_expert=24,
    n_experts=8,
    top_k=2,
    aux_loss_weight=0.01,
    z_loss_weight=1e-3,
    seq_aux_loss_weight=1e-3,
)
LAYER_CASES = [
    EqualityCase(BASE),  # sorted backend (C++ kernels), routing left to the router
    EqualityCase(BASE, "skewed"),  # ranks that send nothing to some ranks; an idle expert
    EqualityCase(BASE, "one_rank"),  # every token to rank 0's experts: the others compute nothing
    EqualityCase(
        replace(
            BASE, dispatch="naive", activation="gelu", n_shared_experts=1, shared_expert_gate=True
        ),
        "skewed",
    ),
    EqualityCase(replace(BASE, router="sigmoid_bias", top_k=3, dispatch="sorted_python")),
    EqualityCase(replace(BASE, capacity_factor=1.0, dispatch="capacity"), "skewed"),  # drops
    EqualityCase(replace(BASE, capacity_factor=0.75, drop_policy="probability")),  # drops
]
CAPACITY_VOLUME = replace(BASE, capacity_factor=1.25)
VOLUME_CONFIGS = [replace(BASE, top_k=1), BASE, CAPACITY_VOLUME]
TINY = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=2,
    max_seq_len=32,
    d_ff=64,
    # a z-loss and loss-free balancing too: both must see the global batch
    moe=MoEConfig(
        d_model=32, d_expert=32, n_experts=4, top_k=2, z_loss_weight=1e-3, bias_update_rate=0.01
    ),
)
TRAIN = TrainConfig(
    steps=20,
    batch_size=8,
    seq_len=32,
    lr=3e-3,
    warmup_steps=3,
    eval_every=10,
    eval_batches=1,
    device="cpu",
    corpus_chars=20_000,
)


def layer_and_volume_tasks(tokens_per_rank: int = 24) -> list[tuple]:
    return [
        (layer_equality, LAYER_CASES),
        *((exchange_volume, config, tokens_per_rank) for config in VOLUME_CONFIGS),
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[int, list]:
    """world size -> [task results] -> [per-rank result]: one group per world size."""
    folder = tmp_path_factory.mktemp("parallel")
    text = folder / "notes.txt"
    text.write_text(make_corpus(20_000, seed=1).train.text)
    cli_args = [
        "train", "--expert-parallel", "2", "--steps", "2", "--batch-size", "4", "--seq-len",
        "16", "--eval-every", "2", "--device", "cpu", "--no-progress", "--text", str(text),
        "--out", str(folder / "cli"),
    ]  # fmt: skip
    # the first run finishes its 2 steps; resuming it with --steps 3 trains one more
    resume_args = [
        "train",
        "--expert-parallel",
        "2",
        "--resume",
        str(folder / "cli"),
        "--steps",
        "3",
    ]
    two = [
        *layer_and_volume_tasks(),
        (error_messages,),
        (training_equality, TINY, TRAIN, str(folder), 10),
        (cli_train, cli_args),
        (cli_train, [*resume_args, "--device", "cpu", "--no-progress"]),
    ]
    by_world = {
        1: run_parallel(run_tasks, 1, [(layer_equality, LAYER_CASES)]),
        2: run_parallel(run_tasks, 2, two),
        4: run_parallel(run_tasks, 4, layer_and_volume_tasks()),
    }
    regrouped: dict = {"folder": folder}
    for world, per_rank in by_world.items():  # [rank][task] -> [task][rank]
        regrouped[world] = [list(task) for task in zip(*per_rank, strict=True)]
    return regrouped


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_layer_outputs_losses_and_gradients_equal_one_process(results, world_size):
    for rank_cases in results[world_size][0]:
        for result in rank_cases:
            worst = max(result["max_diff"], key=result["max_diff"].get)
            assert result["max_diff"][worst] <= TOLERANCE, (result["case"], worst)
            assert result["tokens_per_expert_equal"], result["case"]
            assert result["dropped_equal"], result["case"]


def test_the_cases_cover_idle_experts_silent_ranks_and_drops(results):
    # The equality above is only as strong as its cases: check that they did what they say.
    per_rank = results[2][0]  # W = 2: ranks 0, 1; experts 0-3 on rank 0, 4-7 on rank 1
    skewed = [ranks[1] for ranks in per_rank]
    assert [r["sent_rows"] for r in skewed] == [0, 0]  # neither rank sends to the other
    assert skewed[1]["expert_rows"][-1] == 0  # expert 7 receives no token at all
    one_rank = [ranks[2] for ranks in per_rank]
    assert one_rank[1]["expert_rows"] == [0, 0, 0, 0] and one_rank[1]["sent_rows"] > 0
    for case in (5, 6):  # the capacity cases drop assignments, on some rank
        assert sum(ranks[case]["n_dropped"] for ranks in per_rank) > 0
    four = results[4][0]  # W = 4: rank 0 sends only to ranks 0 and 1 (experts 0-3)
    assert four[0][1]["sent_rows"] > 0 and four[0][1]["local_tokens_per_expert"][4:] == [0] * 4


@pytest.mark.parametrize("world_size", [2, 4])
def test_bytes_counted_equal_the_budget_formula(results, world_size):
    for task in results[world_size][1 : 1 + len(VOLUME_CONFIGS)]:
        for rank in task:
            assert rank["counted_payload"] == rank["formula_rank"]  # exact, in bytes
            assert rank["counted"].get("counts", 0) == rank["formula_counts"]
            assert rank["counted"]["dispatch.backward"] > 0  # the backward was counted too
    # Capacity by hand: 24 tokens per rank, cf 1.25, E = 8, K = 2 give C = ceil(1.25*24*2/8) = 8;
    # each rank sends (W-1)*(E/W)*C rows of D = 16 fp32 values, 4 times (dispatch, combine and
    # their backward): W = 2: 1*4*8 rows * 64 B * 4 = 8192 B; W = 4: 3*2*8 * 64 * 4 = 12288 B.
    capacity_task = results[world_size][1 + VOLUME_CONFIGS.index(CAPACITY_VOLUME)]
    assert [rank["counted_payload"] for rank in capacity_task] == [
        {2: 8192, 4: 12288}[world_size]
    ] * world_size


def test_error_messages_are_one_line(results):
    expected = {
        "indivisible": "3 experts cannot be split evenly over W=2 ranks",
        "different_configs": "ranks disagree on the MoE config: rank(s) [1] differ from rank 0",
        "capacity_groups": "set capacity_groups=2",
        "batch": "batch_size=5 cannot be split evenly over W=2 ranks",
        "dense": "this model is dense: choose an MoE preset",
        "launch": "--expert-parallel 4 needs 4 processes and this run has 2",
    }
    for messages in results[2][1 + len(VOLUME_CONFIGS)]:
        for name, fragment in expected.items():
            assert fragment in messages[name] and "\n" not in messages[name], messages[name]


def test_no_process_group_is_named():
    with pytest.raises(RuntimeError) as error:
        ExpertParallelMoE(BASE)
    assert str(error.value) == NO_PROCESS_GROUP and "\n" not in NO_PROCESS_GROUP
    with pytest.raises(RuntimeError, match=r"needs an initialized torch\.distributed"):
        ExpertParallelTrainer(TINY, TRAIN)


def test_training_equals_one_process_and_resumes_exactly(results):
    report = results[2][2 + len(VOLUME_CONFIGS)][0]  # rank 0 compares
    assert report["steps"] == 20
    for name, difference in report["max_diff"].items():
        assert difference <= TOLERANCE, name
    assert report["tokens_per_expert_equal"]  # routing (and loss-free balancing) step by step
    # the same ranks redoing the same operations: bit for bit
    assert report["resume_exact"] and report["resume_max_diff"] == 0.0
    # the gathered checkpoint is the single-process format: one process continues it
    assert report["single_resumes_ep_checkpoint"] <= TOLERANCE


def test_cli_trains_and_resumes_under_expert_parallelism(results):
    first, resumed = results[2][3 + len(VOLUME_CONFIGS)], results[2][4 + len(VOLUME_CONFIGS)]
    assert first == [0, 0] and resumed == [0, 0]  # exit status of each rank
    model = load_model(Path(results["folder"]) / "cli")  # one file, every expert in it
    checkpoint = torch.load(Path(results["folder"]) / "cli" / CHECKPOINT_FILE, weights_only=False)
    assert checkpoint["step"] == 3 and checkpoint["history"]["step"] == [1, 2, 3]
    assert model.blocks[0].ffn.experts.w_up.shape[0] == model.config.moe.routed_experts
    assert torch.isfinite(model.token_embedding.weight).all()


def test_backend_follows_the_device():
    from moe_lab.parallel.group import backend_for

    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ValueError, match="not on mps: choose --device cpu or cuda"):
        backend_for(torch.device("mps"))
