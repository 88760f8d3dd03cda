"""Router saturation (moe_lab.analysis.saturation) and the History's routing snapshots.

References: OLMoE's definition evaluated by hand on two tokens, a hash router (a fixed function
of the token id, so saturated from step 0), and an old History without the new field.
"""

from __future__ import annotations

import dataclasses

import pytest

from moe_lab.analysis import saturation, saturation_curves, steps_to_reach
from moe_lab.data import make_corpus
from moe_lab.history import History
from moe_lab.model import get_preset
from moe_lab.train import ROUTING_PROBE_WINDOWS, TrainConfig, Trainer


def test_saturation_by_hand() -> None:
    # token 0: {0, 1} at t, {1, 5} at the end: 1 of 2 experts kept; token 1 kept both: 3/4.
    snapshots = [[[0, 1], [2, 3]], [[1, 5], [2, 3]]]
    assert saturation(snapshots) == [0.75, 1.0]
    # top-1: token 0's first choice changed (0 -> 1), token 1's did not: 1/2
    assert saturation(snapshots, top1=True) == [0.5, 1.0]


def test_a_constant_router_is_saturated_from_the_start() -> None:
    assert saturation([[[4, 2]] * 5] * 6) == [1.0] * 6


def test_random_routing_saturates_at_chance() -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    # independent top-2 of 8 sets: E|S(t) & S(T)| / K = K / E = 1/4 (OLMoE: 8/64 for top-8)
    sets = torch.stack(
        [torch.multinomial(torch.ones(20_000, 8), 2, generator=generator) for _ in range(3)]
    )
    values = saturation(sets)
    assert values[0] == pytest.approx(0.25, abs=0.01) and values[-1] == 1.0
    assert saturation(sets, top1=True)[0] == pytest.approx(1 / 8, abs=0.01)


def test_steps_to_reach() -> None:
    assert steps_to_reach([0, 25, 50], [0.2, 0.7, 1.0], 0.6) == 25
    assert steps_to_reach([0, 25], [0.2, 0.5], 0.9) is None


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_chars=30_000, seed=0)


def test_trainer_records_probe_routing_at_every_evaluation(corpus) -> None:
    config = TrainConfig(steps=6, eval_every=3, batch_size=4, seq_len=32, eval_batches=2)
    trainer = Trainer(get_preset("tiny-moe"), config, corpus)
    history = trainer.run(progress=False)
    assert history.eval_step == [0, 3, 6]
    assert trainer.model.training  # evaluation put the model back
    for snapshots in history.routing_snapshots.values():
        assert len(snapshots) == 3
        assert len(snapshots[0]) == ROUTING_PROBE_WINDOWS * 32 and len(snapshots[0][0]) == 2
    steps, values = saturation_curves(history)[0]
    assert steps == [0, 3, 6] and values[-1] == 1.0


def test_hash_router_trainer_is_saturated_from_step_zero(corpus) -> None:
    preset = get_preset("tiny-moe")
    hashed = dataclasses.replace(
        preset, moe=dataclasses.replace(preset.moe, router="hash", top_k=1, aux_loss_weight=0.0)
    )
    config = TrainConfig(steps=4, eval_every=2, batch_size=4, seq_len=32, eval_batches=1)
    history = Trainer(hashed, config, corpus).run(progress=False)
    for steps, values in saturation_curves(history).values():
        assert steps == [0, 2, 4] and values == [1.0, 1.0, 1.0]


def test_old_history_without_snapshots_loads_and_says_so() -> None:
    data = History(step=[1], loss=[2.0], eval_step=[0], val_loss=[5.5]).to_dict()
    del data["routing_snapshots"]  # a History saved before the field existed
    old = History.from_dict(data)
    assert old.routing_snapshots == {} and old.loss == [2.0]
    with pytest.raises(ValueError, match="no routing snapshots"):
        saturation_curves(old)


def test_snapshots_of_a_resumed_old_run_align_with_the_last_evaluations() -> None:
    history = History(eval_step=[0, 25, 50, 75], routing_snapshots={0: [[[1, 2]], [[1, 3]]]})
    steps, values = saturation_curves(history)[0]
    assert steps == [50, 75] and values == [0.5, 1.0]
