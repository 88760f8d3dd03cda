"""Tests for moe_lab.train: schedule, loss goes down, determinism, exact resume, History."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch

from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.data import make_corpus
from moe_lab.history import History
from moe_lab.train import TrainConfig, Trainer, load_model, lr_at, resolve_device

D = 32
MODEL = ModelConfig(
    d_model=D,
    n_layers=2,
    n_heads=2,
    max_seq_len=32,
    d_ff=64,
    # bias_update_rate > 0: the loss-free balancing bias must also survive a resume.
    moe=MoEConfig(d_model=D, d_expert=32, n_experts=4, top_k=2, bias_update_rate=0.01),
)
TRAIN = TrainConfig(
    steps=12,
    batch_size=8,
    seq_len=32,
    lr=3e-3,
    warmup_steps=3,
    eval_every=4,
    eval_batches=2,
    device="cpu",
)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_chars=20_000, seed=0)


def parameters_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()  # buffers too: the selection bias
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_config_validates_with_the_fix_in_the_message():
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="warmup_steps=-1 must be an integer >= 0"):
        TrainConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="device='tpu' is unknown"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="lr="):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="seq_len=64 > the model's max_seq_len=32"):
        Trainer(MODEL, replace(TRAIN, seq_len=64), corpus=make_corpus(2_000))


def test_learning_rate_schedule_by_hand():
    config = TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4)  # warm-up: (0 + 1) / 10 of the peak
    assert lr_at(9, config) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert lr_at(60, config) == pytest.approx(0.55e-3)  # half-way: the mean of peak and floor
    assert lr_at(110, config) == pytest.approx(1e-4)  # floor: min_lr_ratio * lr
    lrs = [lr_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # cosine only decreases


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")


def test_loss_decreases_on_a_tiny_run(corpus):
    trainer = Trainer(MODEL, replace(TRAIN, steps=40, eval_every=40), corpus)
    history = trainer.run(progress=False)
    # Before training the loss is about log(256) = 5.55; byte frequencies alone get it well
    # below 4 (the corpus uses ~70 distinct characters), which 40 steps must reach.
    assert history.loss[0] > 5.0
    assert sum(history.loss[-5:]) / 5 < 3.8
    assert history.val_loss[0] > 5.0 and history.val_loss[-1] < 3.8
    assert history.eval_step == [0, 40]


def test_same_seed_same_run(corpus):
    a = Trainer(MODEL, TRAIN, corpus)
    b = Trainer(MODEL, TRAIN, corpus)
    a.run(progress=False)
    b.run(progress=False)
    assert parameters_equal(a.model, b.model)
    assert a.history.loss == b.history.loss and a.history.val_loss == b.history.val_loss
    c = Trainer(MODEL, replace(TRAIN, seed=1), corpus)
    c.run(progress=False)
    assert not parameters_equal(a.model, c.model)


def test_resume_continues_exactly_as_an_uninterrupted_run(corpus, tmp_path):
    # Stop at step 6 of 12 (between evaluations at 4 and 8), save, load, finish.
    uninterrupted = Trainer(MODEL, TRAIN, corpus)
    uninterrupted.run(progress=False)

    first = Trainer(MODEL, TRAIN, corpus)
    first.run(steps=6, progress=False)
    first.save(tmp_path / "run")
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer.load(tmp_path / "run", corpus=corpus)
    assert resumed.step == 6
    resumed.run(progress=False)

    assert parameters_equal(resumed.model, uninterrupted.model)  # bit for bit
    assert any(resumed.model.moe_layers[0].router.selection_bias != 0)  # the bias did move
    h1, h2 = resumed.history, uninterrupted.history
    for name in (
        "step",
        "loss",
        "aux_loss",
        "aux_parts",
        "lr",
        "grad_norm",
        "tokens",
        "tokens_per_expert",
        "router_entropy",
        "eval_step",
        "val_loss",
    ):
        assert getattr(h1, name) == getattr(h2, name), name
    opt1, opt2 = (
        resumed.optimizer.state_dict()["state"],
        uninterrupted.optimizer.state_dict()["state"],
    )
    assert all(torch.equal(opt1[i]["exp_avg_sq"], opt2[i]["exp_avg_sq"]) for i in opt1)


def test_history_records_every_step_and_layer(corpus):
    trainer = Trainer(MODEL, TRAIN, corpus)
    h = trainer.run(progress=False)
    n = TRAIN.steps
    assert h.step == list(range(1, n + 1))
    for name in (
        "loss",
        "aux_loss",
        "lr",
        "grad_norm",
        "tokens",
        "flops",
        "tokens_per_second",
        "wall_time",
    ):
        assert len(getattr(h, name)) == n, name
    assert set(h.aux_parts) == {"load_balance", "z", "seq_balance"}
    assert h.tokens[-1] == n * TRAIN.batch_size * TRAIN.seq_len
    assert h.flops[-1] == pytest.approx(h.tokens[-1] * trainer.model.training_flops_per_token(32))
    assert all(b > a for a, b in itertools.pairwise(h.wall_time))
    assert h.eval_step == [0, 4, 8, 12]
    assert set(h.val_loss_by_domain) == set(trainer.corpus.domain_names)
    tokens_per_step = TRAIN.batch_size * TRAIN.seq_len
    for layer in (0, 1):
        assert len(h.tokens_per_expert[layer]) == n
        assert all(sum(c) == tokens_per_step * 2 for c in h.tokens_per_expert[layer])  # N * K
        assert all(0 <= e <= math.log(4) + 1e-6 for e in h.router_entropy[layer])
        assert h.dropped_fraction[layer] == [0.0] * n  # the sorted dispatch is dropless


def test_dropped_fraction_is_recorded_with_a_capacity(corpus):
    moe = replace(MODEL.moe, dispatch="capacity", capacity_factor=0.5)
    trainer = Trainer(replace(MODEL, moe=moe), replace(TRAIN, steps=2), corpus)
    h = trainer.run(progress=False)
    # Capacity factor 0.5 gives each expert room for half its average load: at least half of
    # the assignments must be dropped.
    assert all(f >= 0.5 for f in h.dropped_fraction[0])


def test_history_json_round_trip(tmp_path, corpus):
    trainer = Trainer(MODEL, replace(TRAIN, steps=3), corpus)
    history = trainer.run(progress=False)
    history.save_json(tmp_path / "h.json")
    assert History.load_json(tmp_path / "h.json") == history


def test_dense_model_trains_without_moe_stats(corpus):
    trainer = Trainer(replace(MODEL, moe=None), replace(TRAIN, steps=2), corpus)
    h = trainer.run(progress=False)
    assert h.tokens_per_expert == {} and h.aux_parts == {} and h.aux_loss == [0.0, 0.0]


def test_load_model_and_checkpoint_errors(tmp_path, corpus):
    trainer = Trainer(MODEL, replace(TRAIN, steps=2), corpus)
    trainer.run(progress=False)
    trainer.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"checkpoint.pt", "history.json"}
    model = load_model(tmp_path / "run")
    assert parameters_equal(model, trainer.model) and not model.training
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a moe_lab checkpoint"):
        load_model(tmp_path / "bad")


def test_extend_stretches_the_cosine_schedule():
    # A finished 4-step run extended to 8: steps 1-4 keep the 4-step schedule's rates, steps 5-8
    # follow the 8-step cosine (warm-up 1 step, floor 0.1 x lr), written out by hand here:
    # lr(s) = min + (lr - min) (1 + cos(pi (s - w) / (N - w))) / 2 for s >= w.
    import math

    from moe_lab.model import get_preset
    from moe_lab.train import TrainConfig, Trainer

    config = TrainConfig(steps=4, warmup_steps=1, batch_size=2, seq_len=8, eval_every=2,
                         eval_batches=1, corpus_chars=20_000, device="cpu")  # fmt: skip
    trainer = Trainer(get_preset("tiny-dense"), config)
    trainer.run(progress=False)
    trainer.extend(8)
    trainer.run(progress=False)
    lr, floor = config.lr, config.min_lr_ratio * config.lr

    def cosine(step, total):
        if step < 1:
            return lr * (step + 1)
        return floor + (lr - floor) * (1 + math.cos(math.pi * (step - 1) / (total - 1))) / 2

    expected = [cosine(s, 4) for s in range(4)] + [cosine(s, 8) for s in range(4, 8)]
    assert trainer.history.step == list(range(1, 9))
    assert trainer.history.lr == pytest.approx(expected, rel=1e-12)
    # The extension restarts above the rate the finished run ended with (a warm restart).
    assert trainer.history.lr[4] > trainer.history.lr[3] > floor
    with pytest.raises(ValueError, match="trained 8 steps already"):
        trainer.extend(8)
