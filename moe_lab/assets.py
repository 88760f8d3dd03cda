"""The trained checkpoints and recorded collapse-lab runs in the repository's ``assets/`` folder.

Notebook 05 and the routing-on-text explorer analyse models they do not retrain. Everything here
is written by one script, ``tools/make_checkpoints.py``, which reproduces each file from its
seed (see ``moe_lab.analysis.lab`` for the settings):

    assets/checkpoints/NAME.pt        model config + weights + metadata (torch.save, weights only)
    assets/checkpoints/NAME.json      the metadata, readable: setting, seed, steps, library and
                                      torch versions, validation loss (overall and per domain)
    assets/collapse_lab/SLUG-seedS.history.json.gz   the run's History (gzip-compressed JSON)
    assets/collapse_lab/SLUG-seedS.summary.json      end-of-training and end-state measures

Nothing is downloaded. The folder sits next to the package in a source checkout (the README's
install is editable); ``MOE_LAB_ASSETS`` points elsewhere.

Taught in: notebooks/05_specialization.ipynb.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from moe_lab.config import ModelConfig, MoEConfig
from moe_lab.history import History
from moe_lab.model import TinyLM

CHECKPOINT_FORMAT = 1


def assets_dir() -> Path:
    """The assets folder: ``$MOE_LAB_ASSETS`` if set, else ``assets/`` beside the package."""
    override = os.environ.get("MOE_LAB_ASSETS")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "assets"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run `python tools/make_checkpoints.py` to create the assets"
            " (or set MOE_LAB_ASSETS to the folder that holds them)"
        )
    return path


def checkpoint_path(name: str, directory: Path | None = None) -> Path:
    """``assets/checkpoints/NAME.pt``."""
    return (directory or assets_dir()) / "checkpoints" / f"{name}.pt"


def available_checkpoints(directory: Path | None = None) -> list[str]:
    """Names of the checkpoints present, sorted."""
    folder = (directory or assets_dir()) / "checkpoints"
    return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []


def save_checkpoint(path: Path, model: TinyLM, meta: dict) -> None:
    """Write the model's config and weights with ``meta`` to ``path`` and ``meta`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_config": asdict(model.config),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    torch.save(state, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")


def _model_config(data: dict) -> ModelConfig:
    data = dict(data)
    if data.get("moe") is not None:
        data["moe"] = MoEConfig(**data["moe"])
    return ModelConfig(**data)


def load_checkpoint(
    name: str, device: str = "cpu", directory: Path | None = None
) -> tuple[TinyLM, dict]:
    """The model of checkpoint ``name`` (in evaluation mode) and its metadata.

    Raises:
        FileNotFoundError: no such checkpoint (the message says how to create the assets).
        ValueError: the file is not a moe_lab asset checkpoint.

    Example:
        >>> model, meta = load_checkpoint("balanced")   # doctest: +SKIP
        >>> meta["val_loss"]                            # doctest: +SKIP
    """
    path = checkpoint_path(name, directory)
    if not path.exists():
        known = available_checkpoints(directory)
        raise FileNotFoundError(
            f"no checkpoint {name!r} in {path.parent}: choose one of {known}"
            if known
            else f"{path} does not exist: run `python tools/make_checkpoints.py` to create it"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a moe_lab asset checkpoint (format {CHECKPOINT_FORMAT})")
    with torch.random.fork_rng(devices=[]):  # building the model draws initial weights
        model = TinyLM(_model_config(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["meta"]


def lab_paths(slug: str, seed: int, directory: Path | None = None) -> tuple[Path, Path]:
    """(history, summary) file paths of one collapse-lab run."""
    folder = (directory or assets_dir()) / "collapse_lab"
    stem = f"{slug}-seed{seed}"
    return folder / f"{stem}.history.json.gz", folder / f"{stem}.summary.json"


def save_lab_run(history_path: Path, summary_path: Path, history: History, summary: dict) -> None:
    """Write a run's History (gzip JSON, fixed timestamp: same bytes for the same run) and summary."""
    history_path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(history.to_dict()).encode()
    with open(history_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(payload)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")


def _int_keys(value):
    """JSON turns the int keys of per-block dicts into strings; turn digit keys back."""
    if isinstance(value, dict):
        return {
            int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
            for k, v in value.items()
        }
    return value


def load_lab_history(slug: str, seed: int, directory: Path | None = None) -> History:
    """The recorded History of one collapse-lab run (``slug`` = ``LabSetting.slug``)."""
    path = _require(lab_paths(slug, seed, directory)[0])
    return History.from_dict(json.loads(gzip.decompress(path.read_bytes())))


def load_lab_summary(slug: str, seed: int, directory: Path | None = None) -> dict:
    """The recorded summary of one collapse-lab run (per-block keys as ints)."""
    path = _require(lab_paths(slug, seed, directory)[1])
    return _int_keys(json.loads(path.read_text()))
