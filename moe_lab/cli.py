"""The ``moe-lab`` command line: train a preset, sample from a checkpoint, list the presets.

    moe-lab train --preset tiny-moe --steps 400 --out runs/moe
    moe-lab train --resume runs/moe            # continue an interrupted run exactly
    torchrun --nproc-per-node 2 -m moe_lab.cli train --expert-parallel 2   # experts on 2 ranks
    moe-lab train --resume runs/moe --steps 800   # extend a run to 800 steps (warm restart)
    moe-lab sample --checkpoint runs/moe --prompt "12+7="
    moe-lab presets
    moe-lab grill --topic balancing --n 10 --seed 1   # interview questions, graded
    moe-lab site --out site/                   # the course as an offline HTML site

Errors in the arguments (an unknown preset, a missing checkpoint or text file, an output folder
that cannot be written or already holds a checkpoint) print one line naming the problem and exit
with status 2, as argparse does; nothing prints a stack trace. Nothing is overwritten without
``--overwrite``, except the run being resumed in place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from moe_lab.data import ByteTokenizer
from moe_lab.grill.question import DIFFICULTIES, TOPICS
from moe_lab.history import History
from moe_lab.model import PRESETS, TinyLM, get_preset
from moe_lab.site.cli import add_site_command, run_site_command
from moe_lab.train import CHECKPOINT_FILE, DEVICES, TrainConfig, Trainer, load_model, lr_at


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
    train.add_argument(
        "--steps",
        type=_positive_int,
        help=f"steps in the run (default {TrainConfig.steps}); with --resume, the new total",
    )
    train.add_argument("--out", help="output folder for the checkpoint (default runs/PRESET)")
    train.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in --out"
    )
    train.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    train.add_argument("--batch-size", type=_positive_int, default=TrainConfig.batch_size)
    train.add_argument("--seq-len", type=_positive_int, default=TrainConfig.seq_len)
    train.add_argument("--lr", type=float, default=TrainConfig.lr)
    train.add_argument("--eval-every", type=_positive_int, default=TrainConfig.eval_every)
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument("--device", default="auto", choices=DEVICES)
    train.add_argument("--text", metavar="FILE", help="train on a UTF-8 text file instead")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--expert-parallel",
        type=_positive_int,
        metavar="W",
        help="shard the experts over W processes started by torchrun (README: Expert parallelism)",
    )

    sample = commands.add_parser("sample", help="generate text from a checkpoint")
    sample.add_argument("--checkpoint", required=True, metavar="DIR")
    sample.add_argument("--prompt", default="", help="text to continue (default: empty)")
    sample.add_argument("--max-new-tokens", type=_positive_int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    sample.add_argument("--top-k", type=_positive_int, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--device", default="cpu", choices=DEVICES)

    commands.add_parser("presets", help="list the model presets with their parameter counts")

    grill = commands.add_parser("grill", help="practise interview questions, graded by moe_lab")
    grill.add_argument("--topic", choices=list(TOPICS), help="default: every topic")
    grill.add_argument("--difficulty", choices=list(DIFFICULTIES), help="default: any")
    grill.add_argument("--n", type=_positive_int, default=10, help="questions (default 10)")
    grill.add_argument("--seed", type=int, default=0, help="question order and numbers")
    add_site_command(commands)
    return parser


def _writable_folder(path: Path) -> None:
    """Raise UsageError unless ``path`` is (or can be made) a folder we can write into."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a folder: choose a folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".moe_lab_write_test_{os.getpid()}"  # one per process: ranks share it
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to --out {path}: {error.strerror or error}") from None


def _whole_model(trainer: Trainer) -> TinyLM:
    """The trainer's model with every expert, for counting (on the meta device: no memory),
    also when this process holds only its shard of the experts."""
    with torch.device("meta"):
        return TinyLM(trainer.model_config)


def _refuse_to_overwrite(out: Path, overwrite: bool, resume: str | None = None) -> None:
    """UsageError if ``out`` holds a checkpoint that this command would replace unasked."""
    if overwrite or not (out / CHECKPOINT_FILE).is_file():
        return
    if resume is not None and out.resolve() == Path(resume).resolve():
        return  # resuming in place: updating that checkpoint is the point
    raise UsageError(
        f"--out {out} already holds a checkpoint: pass --overwrite to replace it,"
        f" --resume {out} to continue it, or choose another --out"
    )


def _extend(trainer: Trainer, total_steps: int) -> str:
    """Extend the run to ``total_steps`` and say what happens to the learning rate."""
    done, old = trainer.step, trainer.config
    trainer.extend(total_steps)
    last = lr_at(done - 1, old) if done else 0.0
    how = "stretched" if total_steps > old.steps else "shortened"
    return (
        f"the run (step {done} of {old.steps}) now ends at step {total_steps}: the cosine"
        f" schedule is {how} to end there, so the learning rate goes from {last:.3g} (step"
        f" {done}) to {lr_at(done, trainer.config):.3g} (step {done + 1}) and decays to"
        f" {old.min_lr_ratio * old.lr:.3g} at step {total_steps}"
    )


def _summary(trainer: Trainer, out: Path) -> str:
    h: History = trainer.history
    counts = _whole_model(trainer).parameter_counts()
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
    trainer_class = Trainer
    if args.expert_parallel is not None:  # joins torchrun's process group
        from moe_lab.parallel.training import join_cli_run

        trainer_class = join_cli_run(args.expert_parallel, args.device)
    if args.resume is not None:
        if args.preset is not None or args.text is not None:
            raise UsageError(
                "--resume continues a saved run with its own preset and data:"
                " drop --preset and --text (--steps N extends it to N steps)"
            )
        out = Path(args.out or args.resume)
        trainer = trainer_class.load(args.resume)
        if args.steps is not None:
            if args.steps <= trainer.step:
                raise UsageError(
                    f"--steps {args.steps}: the run in {args.resume} has trained {trainer.step}"
                    f" steps already; give a larger total to extend it"
                )
            if args.steps != trainer.config.steps:
                print(f"moe-lab train: {_extend(trainer, args.steps)}")
        elif trainer.step >= trainer.config.steps:
            raise UsageError(
                f"the run in {args.resume} finished its {trainer.step} steps: add --steps N"
                f" (N > {trainer.step}) to train it further"
            )
        _refuse_to_overwrite(out, args.overwrite, args.resume)
        _writable_folder(out)
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
        _refuse_to_overwrite(out, args.overwrite)
        trainer = trainer_class(model_config, train_config)  # fails early on unreadable data
        _writable_folder(out)
        print(f"moe-lab train: {preset} on {trainer.device}, {train_config.steps} steps")
        _whole_model(trainer).summary()
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
        elif args.command == "grill":
            from moe_lab.grill.terminal import run as run_grill  # the grill's own module

            run_grill(args.topic, args.difficulty, args.n, args.seed)
        elif args.command == "site":
            return run_site_command(args)
        else:
            _presets()
    except KeyboardInterrupt:
        if args.command != "grill":
            raise
        return 130  # the grill printed its score already
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


if __name__ == "__main__":  # python -m moe_lab.cli (what torchrun -m runs on every rank)
    raise SystemExit(main())
