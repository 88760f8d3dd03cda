"""Reproduce everything in assets/: the collapse lab's runs and the checkpoints notebook 05 loads.

    python tools/make_checkpoints.py                   # every missing run (keeps existing files)
    python tools/make_checkpoints.py --list            # what it would make, and what exists
    python tools/make_checkpoints.py --only hash       # one checkpoint (or a run: "none:1")
    python tools/make_checkpoints.py --only hash --overwrite --out /tmp/assets

Each run is one collapse-lab setting (``moe_lab.analysis.lab.LAB_SETTINGS``) trained with one
seed by the course recipe (``TrainConfig(seed=S)``, 320 steps, the generated corpus of seed 0),
with one torch thread. It writes the run's History and its summary (end-of-training loads and
the end-state measures of the three collapses) to ``assets/collapse_lab/``; the runs named in
``CHECKPOINTS`` also write their weights and metadata to ``assets/checkpoints/``.

Nothing is overwritten unless ``--overwrite`` is given: without it, existing runs are kept, and
asking for an existing one by name with ``--only`` is an error.

Reproducibility: on the machine that made the files a rerun gives the same weights bit for bit
(each checkpoint records its CPU). On another CPU the matrix kernels may add in another order;
tests/test_assets.py states how far the weights may then drift.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

import moe_lab
from moe_lab import assets
from moe_lab.analysis.lab import CHECKPOINTS, LAB_SEEDS, LAB_SETTINGS, end_state, training_summary
from moe_lab.bench.common import cpu_name
from moe_lab.train import Trainer, corpus_for

REPO = Path(__file__).resolve().parents[1]


def all_runs() -> list[tuple[str, int]]:
    """Every (setting, seed) of the lab, settings in table order, seeds ascending."""
    return [(name, seed) for name in LAB_SETTINGS for seed in LAB_SEEDS]


def checkpoint_of(setting: str, seed: int) -> str | None:
    """The checkpoint name a run also writes, or None."""
    for name, run in CHECKPOINTS.items():
        if run == (setting, seed):
            return name
    return None


def run_outputs(out: Path, setting: str, seed: int) -> list[Path]:
    """The files one run writes."""
    paths = list(assets.lab_paths(LAB_SETTINGS[setting].slug, seed, out))
    checkpoint = checkpoint_of(setting, seed)
    if checkpoint is not None:
        path = assets.checkpoint_path(checkpoint, out)
        paths += [path, path.with_suffix(".json")]
    return paths


def parse_only(items: list[str]) -> list[tuple[str, int]]:
    """``--only`` items: checkpoint names, or ``SETTING:SEED`` (setting name or file slug)."""
    slugs = {s.slug: s.name for s in LAB_SETTINGS.values()}
    runs = []
    for item in items:
        if item in CHECKPOINTS:
            runs.append(CHECKPOINTS[item])
            continue
        name, _, seed = item.rpartition(":")
        name = slugs.get(name, name)
        if name not in LAB_SETTINGS or not seed.isdigit():
            raise SystemExit(
                f"--only {item!r}: give a checkpoint ({', '.join(CHECKPOINTS)}) or SETTING:SEED"
                f" with a setting from: {', '.join(s.slug for s in LAB_SETTINGS.values())}"
            )
        runs.append((name, int(seed)))
    return runs


def make_run(out: Path, setting_name: str, seed: int, corpus_cache: dict) -> float:
    """Train one run and write its files; returns its final validation loss."""
    setting = LAB_SETTINGS[setting_name]
    train_config = setting.train_config(seed)
    key = (train_config.corpus_chars, train_config.corpus_seed)
    if key not in corpus_cache:
        corpus_cache[key] = corpus_for(train_config)
    corpus = corpus_cache[key]
    trainer = Trainer(setting.model_config(), train_config, corpus)
    history = trainer.run(description=f"{setting.name}, seed {seed}")
    summary = {
        "setting": setting.name,
        "description": setting.description,
        "moe_changes": setting.moe_changes,
        "seed": seed,
        "steps": trainer.step,
        "library_version": moe_lab.__version__,
        "torch_version": str(torch.__version__),
        "training": training_summary(history),
        "end_state": end_state(trainer.model, corpus),
    }
    history_path, summary_path = assets.lab_paths(setting.slug, seed, out)
    assets.save_lab_run(history_path, summary_path, history, summary)
    checkpoint = checkpoint_of(setting_name, seed)
    if checkpoint is not None:
        meta = {
            "name": checkpoint,
            "setting": setting.name,
            "seed": seed,
            "steps": trainer.step,
            "library_version": moe_lab.__version__,
            "torch_version": str(torch.__version__),
            "python": platform.python_version(),
            "val_loss": history.val_loss[-1],
            "val_loss_by_domain": {k: v[-1] for k, v in history.val_loss_by_domain.items()},
            "evaluation": {
                "batch_size": train_config.batch_size,
                "seq_len": train_config.seq_len,
                "eval_batches": train_config.eval_batches,
            },
            "train_config": {
                k: getattr(train_config, k) for k in train_config.__dataclass_fields__
            },
            "made_by": "tools/make_checkpoints.py",
            "machine": {"cpu": cpu_name(), "torch_threads": torch.get_num_threads()},
        }
        assets.save_checkpoint(assets.checkpoint_path(checkpoint, out), trainer.model, meta)
    return history.val_loss[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "assets", help="default: assets/")
    parser.add_argument("--only", nargs="+", metavar="RUN", help="checkpoint names or SETTING:SEED")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs whose files exist")
    parser.add_argument("--list", action="store_true", help="list the runs and exit")
    args = parser.parse_args(argv)

    runs = parse_only(args.only) if args.only else all_runs()
    done = {run: all(p.exists() for p in run_outputs(args.out, *run)) for run in runs}
    if args.list:
        for setting, seed in runs:
            checkpoint = checkpoint_of(setting, seed)
            note = f" -> checkpoints/{checkpoint}.pt" if checkpoint else ""
            print(
                f"{'exists ' if done[(setting, seed)] else 'missing'}  {setting}, seed {seed}{note}"
            )
        return 0
    existing = [run for run in runs if any(p.exists() for p in run_outputs(args.out, *run))]
    if existing and not args.overwrite:
        if args.only:
            names = ", ".join(f"{s}:{seed}" for s, seed in existing)
            print(f"refusing to overwrite {names} in {args.out}: pass --overwrite", file=sys.stderr)
            return 2
        for setting, seed in existing:
            print(f"kept {setting}, seed {seed} (files exist; --overwrite retrains it)")
        runs = [run for run in runs if run not in existing]
    torch.set_num_threads(1)  # one thread: steady on a shared CPU, and the recorded setting
    corpus_cache: dict = {}
    for setting, seed in tqdm(runs, desc="collapse lab", unit="run", disable=len(runs) < 2):
        loss = make_run(args.out, setting, seed, corpus_cache)
        tqdm.write(f"{setting}, seed {seed}: validation loss {loss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
