"""Training loop for the tiny LM: AdamW, warm-up + cosine, clipping, History, checkpoints.

One training step, in order:

1. draw a batch from the training split with the run's own ``torch.Generator``;
2. forward: ``loss = cross_entropy + aux_loss`` (the MoE layers' weighted balancing losses);
3. backward, clip the global gradient norm, set the learning rate for this step, AdamW step;
4. loss-free balancing: ``update_bias(tokens_per_expert)`` on every MoE layer (a no-op unless
   ``MoEConfig.bias_update_rate > 0``; DeepSeek-V3 updates the bias after each step);
5. record the step in the ``History``: losses, per MoE layer the tokens per expert, router
   entropy and dropped fraction, throughput and wall time; evaluate every ``eval_every`` steps
   (validation loss, and the routing of a fixed probe set for router saturation).

Everything a run depends on is in the checkpoint (model, optimizer, step, data generator and
torch RNG states, History), so ``Trainer.load(dir).run()`` continues exactly as an
uninterrupted run would: the same parameters, bit for bit, on the same device.

Taught in: notebooks/04_train_tiny_moe.ipynb.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from moe_lab.config import ModelConfig, MoEConfig, require_positive_ints
from moe_lab.data import Corpus, Split, eval_batches, load_text_file, make_corpus, sample_batch
from moe_lab.history import History
from moe_lab.model import TinyLM

DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINT_FILE = "checkpoint.pt"
# Router saturation's probe: this many evenly spaced validation windows (512 tokens at T=64),
# the same at every evaluation (History.routing_snapshots).
ROUTING_PROBE_WINDOWS = 8


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, schedule, batches, evaluation, data and seed.

    The defaults are the course recipe of notebook 04: three tiny presets trained side by side
    in about a minute and a half on one CPU core, long enough for them to differ.

    Args:
        steps: optimizer steps in the run (the cosine schedule ends here).
        batch_size: B windows per step.
        seq_len: T tokens per window (at most the model's ``max_seq_len``).
        lr: peak learning rate, reached after ``warmup_steps``.
        min_lr_ratio: the cosine decays from ``lr`` to ``min_lr_ratio * lr`` at ``steps``.
        warmup_steps: linear warm-up from 0 (a run shorter than this is all warm-up).
        weight_decay: AdamW's decoupled weight decay on matrices (not on norms).
        beta1, beta2: AdamW's moment decay rates.
        grad_clip: clip the global gradient norm to this (0 disables clipping).
        eval_every: evaluate on the validation split every this many steps (and at the end).
        eval_batches: batches of fixed, evenly spaced validation windows per evaluation.
        seed: seeds the model's initialization, the batch order and torch's RNG.
        device: ``"auto"`` (cuda, then mps, then cpu) or one of them by name.
        corpus_chars: size of the generated course corpus (``moe_lab.data.make_corpus``).
        corpus_seed: seed of the generated corpus.
        text_file: train on this UTF-8 text file instead of the generated corpus.
    """

    steps: int = 320
    batch_size: int = 24
    seq_len: int = 64
    lr: float = 6e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 25
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"
    corpus_chars: int = 400_000
    corpus_seed: int = 0
    text_file: str | None = None

    def __post_init__(self) -> None:
        require_positive_ints(
            self, "steps", "batch_size", "seq_len", "eval_every", "eval_batches", "corpus_chars"
        )
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be a positive number (6e-3 suits the presets)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.device not in DEVICES:
            raise ValueError(
                f"device={self.device!r} is unknown: choose one of {', '.join(DEVICES)}"
            )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    The schedule is a pure function of the step, so the step is all the "scheduler state" a
    checkpoint needs.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    min_lr = config.min_lr_ratio * config.lr
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * progress))


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; a named device that is missing is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name not in DEVICES:
        raise ValueError(f"device={name!r} is unknown: choose one of {', '.join(DEVICES)}")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ValueError(f"device={name!r} is not available on this machine: use 'cpu' or 'auto'")
    return torch.device(name)


def corpus_for(config: TrainConfig) -> Corpus:
    """The corpus a TrainConfig describes: the generated course corpus or a text file."""
    if config.text_file is not None:
        return load_text_file(config.text_file, seed=config.corpus_seed)
    return make_corpus(config.corpus_chars, seed=config.corpus_seed)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: TinyLM,
    split: Split,
    batch_size: int,
    seq_len: int,
    n_batches: int,
    domain_names: tuple[str, ...],
    device: torch.device | str = "cpu",
) -> tuple[float, dict[str, float]]:
    """Mean next-token cross-entropy on fixed validation windows, overall and per domain.

    A token's domain is that of the input token at its position (``Batch.domain``).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    by_domain = torch.zeros(len(domain_names), dtype=torch.float64)
    by_domain_count = torch.zeros(len(domain_names), dtype=torch.float64)
    for batch in eval_batches(split, batch_size, seq_len, n_batches):
        batch = batch.to(device)
        logits = model(batch.x).logits  # (B, T, V)
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.y.flatten(), reduction="none"
        ).cpu()  # (B*T,)
        domains = batch.domain.flatten().cpu()  # (B*T,)
        total += losses.sum()
        count += losses.numel()
        by_domain.index_add_(0, domains, losses.double())
        by_domain_count.index_add_(0, domains, torch.ones_like(losses, dtype=torch.float64))
    model.train(was_training)
    per_domain = {
        name: (by_domain[i] / by_domain_count[i]).item()
        for i, name in enumerate(domain_names)
        if by_domain_count[i] > 0
    }
    return (total / count).item(), per_domain


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def _decay_groups(model: TinyLM, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings (ndim >= 2), none on norm weights and biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _model_config_from_dict(data: dict) -> ModelConfig:
    data = dict(data)
    if data.get("moe") is not None:
        data["moe"] = MoEConfig(**data["moe"])
    return ModelConfig(**data)


class Trainer:
    """Owns a model, its optimizer, the batch generator and the History of one training run.

    Args:
        model_config: the model to build (``moe_lab.model.PRESETS`` has the course's three).
        train_config: how to train it.
        corpus: the data; ``None`` builds the one ``train_config`` describes.

    Example:
        >>> from moe_lab.model import get_preset
        >>> trainer = Trainer(get_preset("tiny-moe"), TrainConfig(steps=3, eval_every=3))
        >>> history = trainer.run(progress=False)
        >>> len(history.loss)
        3

    Taught in: notebooks/04_train_tiny_moe.ipynb.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        corpus: Corpus | None = None,
    ) -> None:
        if train_config.seq_len > model_config.max_seq_len:
            raise ValueError(
                f"seq_len={train_config.seq_len} > the model's max_seq_len="
                f"{model_config.max_seq_len}: shorten seq_len or widen the model's context"
            )
        self.model_config = model_config
        self.config = train_config
        self.corpus = corpus if corpus is not None else corpus_for(train_config)
        self.device = resolve_device(train_config.device)
        torch.manual_seed(train_config.seed)  # the initialization is a function of the seed
        self.model = TinyLM(model_config).to(self.device)
        self.optimizer = self._build_optimizer()
        # Batches come from their own generator, so nothing else that draws random numbers
        # (dropout, noisy routers) changes which windows the model sees.
        self.data_generator = torch.Generator().manual_seed(train_config.seed)
        self.step = 0
        self.history = History()
        self.flops_per_token = self.model.training_flops_per_token(train_config.seq_len)

    def _build_optimizer(self) -> torch.optim.AdamW:
        """AdamW over the model's parameters (``moe_lab.parallel`` rebuilds it after sharding)."""
        config = self.config
        return torch.optim.AdamW(
            _decay_groups(self.model, config.weight_decay),
            lr=lr_at(0, config),
            betas=(config.beta1, config.beta2),
            # The fused kernel updates every tensor in one pass; the default loops in Python
            # over tensors, which costs the MoE (3x the parameters) more than its dense twin.
            fused=self.device.type in ("cpu", "cuda"),
        )

    # -- one step -----------------------------------------------------------------------------

    def _train_step(self) -> None:
        config, model = self.config, self.model
        start = time.perf_counter()
        batch = sample_batch(
            self.corpus.train, config.batch_size, config.seq_len, self.data_generator
        ).to(self.device)
        out = model(batch.x, batch.y)
        lr = lr_at(self.step, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        out.total_loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        self.optimizer.step()
        for index, layer in model.moe_layers.items():
            layer.update_bias(out.moe_outputs[index].tokens_per_expert)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # kernels run asynchronously: wait before reading the clock
        self._record(out, lr, grad_norm, time.perf_counter() - start)

    @torch.no_grad()
    def _record(self, out, lr: float, grad_norm: torch.Tensor, seconds: float) -> None:
        h = self.history
        tokens = self.config.tokens_per_step
        loss = out.loss.item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at step {self.step}: lower the learning rate"
                f" (lr={self.config.lr}) or check the data"
            )
        h.step.append(self.step)
        h.loss.append(loss)
        h.aux_loss.append(out.aux_loss.item())
        for name, value in out.aux_losses.items():
            h.aux_parts.setdefault(name, []).append(value.item())
        h.lr.append(lr)
        h.grad_norm.append(grad_norm.item())
        h.tokens.append((h.tokens[-1] if h.tokens else 0) + tokens)
        h.flops.append((h.flops[-1] if h.flops else 0.0) + float(self.flops_per_token * tokens))
        h.tokens_per_second.append(tokens / seconds)
        h.wall_time.append((h.wall_time[-1] if h.wall_time else 0.0) + seconds)
        for index, moe_out in out.moe_outputs.items():
            probs = moe_out.routing.probs.float()  # (N, E)
            entropy = torch.special.entr(probs).sum(-1).mean()  # mean over tokens of -sum p log p
            valid = moe_out.routing.valid_mask()  # (N, K)
            dropped = moe_out.dropped.sum() / valid.sum().clamp(min=1)
            h.tokens_per_expert.setdefault(index, []).append(moe_out.tokens_per_expert.tolist())
            h.router_entropy.setdefault(index, []).append(entropy.item())
            h.dropped_fraction.setdefault(index, []).append(dropped.item())

    def evaluate(self) -> tuple[float, dict[str, float]]:
        """Validation loss now, overall and per domain (does not change any state)."""
        c = self.config
        return evaluate(
            self.model,
            self.corpus.val,
            c.batch_size,
            c.seq_len,
            c.eval_batches,
            self.corpus.domain_names,
            self.device,
        )

    def _record_eval(self) -> None:
        h = self.history
        val_loss, by_domain = self.evaluate()
        h.eval_step.append(self.step)
        h.val_loss.append(val_loss)
        for name, value in by_domain.items():
            h.val_loss_by_domain.setdefault(name, []).append(value)
        h.eval_wall_time.append(h.wall_time[-1] if h.wall_time else 0.0)
        h.eval_flops.append(h.flops[-1] if h.flops else 0.0)
        h.eval_tokens.append(h.tokens[-1] if h.tokens else 0)
        self._record_routing_snapshot()

    @torch.no_grad()
    def _record_routing_snapshot(self) -> None:
        """Each MoE block's top-K experts for the fixed probe tokens (router saturation)."""
        if not self.model.moe_layers:
            return
        probe = next(eval_batches(self.corpus.val, ROUTING_PROBE_WINDOWS, self.config.seq_len, 1))
        was_training = self.model.training
        self.model.eval()  # no noise, no dropout: routing as at inference, and no RNG drawn
        out = self.model(probe.x.to(self.device))
        self.model.train(was_training)
        for index, moe_out in out.moe_outputs.items():
            snapshots = self.history.routing_snapshots.setdefault(index, [])
            snapshots.append(moe_out.routing.indices.tolist())  # (8*T, K)

    def _eval_due(self) -> bool:
        return self.step % self.config.eval_every == 0 or self.step == self.config.steps

    # -- the loop -----------------------------------------------------------------------------

    def run(
        self,
        steps: int | None = None,
        progress: bool = True,
        description: str | None = None,
    ) -> History:
        """Train ``steps`` more steps (default: until ``config.steps``); returns the History.

        Stopping early and calling ``run`` again (or saving, loading and calling it) gives the
        same result as one uninterrupted call: the schedule depends only on the step.
        """
        end = self.config.steps if steps is None else min(self.config.steps, self.step + steps)
        if self.step == 0 and not self.history.eval_step:
            self._record_eval()  # the loss before training, about log(256) = 5.55
        bar = tqdm(
            total=end - self.step,
            disable=not progress,
            desc=description or self._label(),
            unit="step",
            dynamic_ncols=True,
        )
        try:
            while self.step < end:
                self._train_step()
                if self._eval_due():
                    self._record_eval()
                bar.update(1)
                if self.step % 10 == 0 or self.step == end:
                    postfix = {
                        "loss": f"{self.history.loss[-1]:.3f}",
                        "tok/s": f"{self.history.tokens_per_second[-1]:,.0f}",
                    }
                    if self.history.val_loss:
                        postfix["val"] = f"{self.history.val_loss[-1]:.3f}"
                    bar.set_postfix(postfix, refresh=False)
        finally:
            bar.close()
        return self.history

    def _label(self) -> str:
        return "moe" if self.model_config.moe is not None else "dense"

    def extend(self, total_steps: int) -> None:
        """Continue this run until ``total_steps`` instead of ``config.steps`` (then ``run()``).

        The warm-up + cosine schedule is a function of ``config.steps``, so extending stretches
        it to end at ``total_steps``: the steps already taken keep the rates they had, and the
        next step uses the longer schedule's rate at that step. A finished run, which ended near
        ``min_lr_ratio * lr``, therefore restarts at a higher rate (a warm restart, as in SGDR,
        Loshchilov & Hutter 2017) and decays toward the same floor by ``total_steps``; an
        interrupted run continues from a higher point of the longer cosine.

        Args:
            total_steps: the run's new length; more than the steps already trained.
        """
        if total_steps <= self.step:
            raise ValueError(
                f"the run has trained {self.step} steps already: extend it to more than that"
                f" (got {total_steps})"
            )
        self.config = replace(self.config, steps=total_steps)

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly (plain types and tensors only)."""
        return {
            "model_config": asdict(self.model_config),
            "train_config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "data_generator": self.data_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history.to_dict(),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``checkpoint.pt`` (everything), ``history.json`` and ``config.json`` into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        path = directory / CHECKPOINT_FILE
        torch.save(state, path)
        self.history.save_json(directory / "history.json")
        readable = {
            "model": state["model_config"],
            "train": state["train_config"],
            "step": self.step,
        }
        (directory / "config.json").write_text(json.dumps(readable, indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls, directory: str | Path, corpus: Corpus | None = None, device: str | None = None
    ) -> Trainer:
        """Rebuild a Trainer from ``save``'s directory (or the checkpoint file itself).

        ``corpus`` must be the corpus the run trained on (``None`` rebuilds it from the saved
        TrainConfig). ``device`` overrides the saved one (exact resume needs the same device).
        """
        state = _read_checkpoint(directory)
        model_config = _model_config_from_dict(state["model_config"])
        train_config = TrainConfig(**state["train_config"])
        if device is not None:
            train_config = replace(train_config, device=device)
        trainer = cls(model_config, train_config, corpus)
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = state["step"]
        trainer.data_generator.set_state(state["data_generator"])
        torch.set_rng_state(state["torch_rng"])
        trainer.history = History.from_dict(state["history"])
        return trainer


_CHECKPOINT_KEYS = ("model_config", "train_config", "model", "optimizer", "step", "history")


def _read_checkpoint(directory: str | Path) -> dict:
    """The saved state dict; clear errors for a missing path or a file that is not a checkpoint."""
    path = Path(directory)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here (expected {CHECKPOINT_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file it cannot read
        raise ValueError(f"{path} is not a moe_lab checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in _CHECKPOINT_KEYS):
        raise ValueError(f"{path} is not a moe_lab checkpoint (missing keys)")
    return state


def load_model(directory: str | Path, device: str = "cpu") -> TinyLM:
    """The trained model alone from ``Trainer.save``'s directory, in eval mode (for sampling)."""
    state = _read_checkpoint(directory)
    model = TinyLM(_model_config_from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(resolve_device(device)).eval()


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    corpus: Corpus | None = None,
    progress: bool = True,
    description: str | None = None,
) -> Trainer:
    """Build a Trainer and run it to ``train_config.steps``; returns the Trainer.

    Example:
        >>> from moe_lab.model import get_preset
        >>> trainer = train(get_preset("tiny-dense"), TrainConfig(steps=2), progress=False)
        >>> trainer.step
        2
    """
    trainer = Trainer(model_config, train_config, corpus)
    trainer.run(progress=progress, description=description)
    return trainer
