"""The ``moe-lab`` command line: train a preset, sample from a checkpoint, list the presets.

    moe-lab train --preset tiny-moe --steps 400 --out runs/moe
    moe-lab train --resume runs/moe            # continue an interrupted run exactly
    moe-lab sample --checkpoint runs/moe --prompt "12+7="
    moe-lab presets
    moe-lab site --out site/                   # the course as an offline HTML site

Errors in the arguments (an unknown preset, a missing checkpoint or text file, an output folder
that cannot be written) print one line naming the problem and exit with status 2, as argparse
does; nothing prints a stack trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from moe_lab.data import ByteTokenizer
from moe_lab.history import History
from moe_lab.model import PRESETS, TinyLM, get_preset
from moe_lab.site.cli import add_site_command, run_site_command
from moe_lab.train import DEVICES, TrainConfig, Trainer, load_model


class UsageError(Exception):
    """A problem with the command's arguments: reported in one line, exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-lab", description="Train and sample the moe_lab course's tiny language models."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a preset and save a checkpoint")
    train.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} (default tiny-moe)")
    train.add_argument("--steps", type=_positive_int, help=f"default {TrainConfig.steps}")
    train.add_argument("--out", help="output folder for the checkpoint (default runs/PRESET)")
    train.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    train.add_argument("--batch-size", type=_positive_int, default=TrainConfig.batch_size)
    train.add_argument("--seq-len", type=_positive_int, default=TrainConfig.seq_len)
    train.add_argument("--lr", type=float, default=TrainConfig.lr)
    train.add_argument("--eval-every", type=_positive_int, default=TrainConfig.eval_every)
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument("--device", default="auto", choices=DEVICES)
    train.add_argument("--text", metavar="FILE", help="train on a UTF-8 text file instead")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("--checkpoint", required=True, metavar="DIR")
    sample.add_argument("--prompt", default="", help="text to continue (default: empty)")
    sample.add_argument("--max-new-tokens", type=_positive_int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sample.add_argument("--top-k", type=_positive_int, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="cpu", choices=DEVICES)

    commands.add_parser("presets", help="list the model presets with their parameter counts")
    add_site_command(commands)
    return parser


def _writable_folder(path: Path) -> None:
    """Raise UsageError unless ``path`` is (or can be made) a folder we can write into."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a folder: choose a folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".moe_lab_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {path}: {error.strerror or error}") from None


def _summary(trainer: Trainer, out: Path) -> str:
    h: History = trainer.history
    counts = trainer.model.parameter_counts()
    lines = [
        f"trained {trainer.step} steps, {h.tokens[-1]:,} tokens in {h.wall_time[-1]:.1f} s"
        f" ({h.mean_tokens_per_second():,.0f} tokens/s)",
        f"parameters: {counts.total:,} total, {counts.active:,} active per token",
        f"train loss {h.loss[-1]:.3f}, validation loss {h.val_loss[-1]:.3f} nats/byte",
        "validation loss by domain: "
        + ", ".join(f"{name} {values[-1]:.3f}" for name, values in h.val_loss_by_domain.items()),
    ]
    for layer, counts_per_step in h.tokens_per_expert.items():
        load = counts_per_step[-1]
        mean = sum(load) / len(load)
        lines.append(
            f"MoE block {layer}: router entropy {h.router_entropy[layer][-1]:.2f} nats,"
            f" busiest expert {max(load) / mean:.2f}x the mean load"
        )
    lines.append(f"checkpoint: {out}")
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> None:
    if args.resume is not None:
        if args.preset is not None or args.steps is not None or args.text is not None:
            raise UsageError(
                "--resume continues a saved run with its own preset, steps and data:"
                " drop --preset, --steps and --text"
            )
        out = Path(args.out or args.resume)
        _writable_folder(out)
        trainer = Trainer.load(args.resume)
    else:
        preset = args.preset or "tiny-moe"
        model_config = get_preset(preset)
        if args.text is not None and not Path(args.text).is_file():
            what = "is a folder" if Path(args.text).is_dir() else "does not exist"
            raise UsageError(f"--text {args.text} {what}: give the path of a plain-text file")
        train_config = TrainConfig(
            steps=args.steps or TrainConfig.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            eval_every=args.eval_every,
            seed=args.seed,
            device=args.device,
            text_file=args.text,
        )
        out = Path(args.out or Path("runs") / preset)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder: choose a folder name")
        trainer = Trainer(model_config, train_config)  # fails early on unreadable data
        _writable_folder(out)
        print(f"moe-lab train: {preset} on {trainer.device}, {train_config.steps} steps")
        trainer.model.summary()
    try:
        trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:
        trainer.save(out)
        print(f"\ninterrupted at step {trainer.step}: resume with moe-lab train --resume {out}")
        raise SystemExit(130) from None
    trainer.save(out)
    print(_summary(trainer, out))


def _sample(args: argparse.Namespace) -> None:
    model = load_model(args.checkpoint, device=args.device)
    if args.temperature < 0:
        raise UsageError(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
    tokenizer = ByteTokenizer()
    prompt = tokenizer.encode(args.prompt) or tokenizer.encode("\n")  # start from a line break
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(
        idx, args.max_new_tokens, args.temperature, args.top_k, generator=generator
    )  # (1, T + new)
    print(args.prompt + tokenizer.decode(out[0, len(prompt) :]))


def _presets() -> None:
    for name, config in PRESETS.items():
        print(f"{name}:")
        TinyLM(config).summary()
        print()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``moe-lab`` and ``python -m moe_lab``; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "sample":
            _sample(args)
        elif args.command == "site":
            return run_site_command(args)
        else:
            _presets()
    except BrokenPipeError:
        # `moe-lab presets | head`: the reader closed the pipe; that is not an error. Point
        # stdout at devnull so that Python's exit-time flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, ValueError, OSError) as error:
        # ValueError: invalid settings (configs validate themselves) or unreadable data;
        # OSError: missing files and folders. Both name the problem in their message.
        print(f"moe-lab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # the run diverged: not an argument error
        print(f"moe-lab {args.command}: {error}", file=sys.stderr)
        return 1
    return 0
