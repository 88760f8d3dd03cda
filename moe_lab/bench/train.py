"""Training throughput of the tiny MoE against the dense model with the same active parameters.

``python -m moe_lab.bench train`` builds both presets in one process, runs their real training
steps (batch sampling, forward, backward, clipping, AdamW, bias update, History recording) in
interleaved blocks, and reports tokens per second and the MoE / dense ratio. The course's target
is a ratio of at least 0.8: routing should cost little next to the expert FLOPs it saves.
Evaluation is not part of a timed block.

``--expert-width F`` scales every FFN of both presets by the same factor (the MoE's experts to
width F, the dense model's FFN alike, so it keeps the same active parameters). Since the
routing work does not depend on F, this separates what the MoE costs per step whatever its
experts' arithmetic (the gap at a tiny F) from the arithmetic itself.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from moe_lab.bench.common import machine_info, median, time_interleaved, write_result
from moe_lab.config import ModelConfig
from moe_lab.data import make_corpus
from moe_lab.model import PRESETS, get_preset
from moe_lab.train import TrainConfig, Trainer

TARGET_RATIO = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moe-preset", default="tiny-moe", choices=sorted(PRESETS))
    parser.add_argument("--dense-preset", default="tiny-dense", choices=sorted(PRESETS))
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed blocks per model first")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts to measure (default: 1 and torch's default)",
    )
    parser.add_argument(
        "--expert-width",
        type=int,
        default=None,
        help="scale both presets' FFNs so the MoE's experts have this width (default: as is)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON result")


def _thread_counts(text: str | None) -> list[int]:
    if text is None:
        return sorted({1, torch.get_num_threads()})
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--threads {text!r}: give comma-separated integers, e.g. 1,2") from None
    if any(count < 1 for count in counts):
        raise ValueError(f"--threads {text!r}: thread counts must be >= 1")
    return counts


def scaled_presets(
    moe_preset: str, dense_preset: str, expert_width: int | None
) -> tuple[ModelConfig, ModelConfig]:
    """Both presets' configs, every FFN width scaled by ``expert_width / d_expert`` (or as is).

    The scale must keep every width an integer: with the course presets (experts 128 wide,
    dense FFNs 256 and 1024) any ``expert_width`` from 1 up works.
    """
    moe, dense = get_preset(moe_preset), get_preset(dense_preset)
    if moe.moe is None:
        raise ValueError(f"--moe-preset {moe_preset!r} has no MoE layers")
    if expert_width is None:
        return moe, dense
    if expert_width < 1:
        raise ValueError(f"--expert-width {expert_width}: give a width >= 1")
    old = moe.moe.d_expert

    def scaled(width: int, name: str) -> int:
        if width * expert_width % old:
            raise ValueError(
                f"--expert-width {expert_width}: {name} {width} x {expert_width}/{old}"
                " is not an integer"
            )
        return width * expert_width // old

    moe = dataclasses.replace(
        moe,
        d_ff=scaled(moe.d_ff, "d_ff"),
        moe=dataclasses.replace(moe.moe, d_expert=expert_width),
    )
    return moe, dataclasses.replace(dense, d_ff=scaled(dense.d_ff, "the dense d_ff"))


def run(args: argparse.Namespace) -> dict:
    """Time both presets' training steps, interleaved, at each thread count; returns the result.

    The notebooks train with one thread (tiny matrices gain little from a second one and a
    shared CPU makes two threads per process thrash), so 1 thread is always measured; torch's
    default thread count is measured too.
    """
    thread_counts = _thread_counts(args.threads)
    default_threads = torch.get_num_threads()
    train_config = TrainConfig(
        steps=10**9,  # never reach the end of the schedule while timing
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        eval_every=10**9,
        device=args.device,
    )
    corpus = make_corpus(train_config.corpus_chars, seed=train_config.corpus_seed)
    moe_config, dense_config = scaled_presets(args.moe_preset, args.dense_preset, args.expert_width)
    trainers = {
        "moe": Trainer(moe_config, train_config, corpus),
        "dense": Trainer(dense_config, train_config, corpus),
    }
    candidates = {
        name: (lambda t=trainer: t.run(steps=args.steps, progress=False))
        for name, trainer in trainers.items()
    }
    tokens_per_block = args.steps * train_config.tokens_per_step
    measurements = []
    lines = [
        f"training throughput, {args.moe_preset} vs {args.dense_preset}"
        f" (B={args.batch_size}, T={args.seq_len}, expert width {moe_config.moe.d_expert},"
        f" {args.repeats} x {args.steps} steps each):"
    ]
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            times = time_interleaved(
                candidates, repeats=args.repeats, warmup=args.warmup, device=trainers["moe"].device
            )
            speed = {name: tokens_per_block / median(t) for name, t in times.items()}
            per_step = {name: median(t) / args.steps for name, t in times.items()}
            ratio = speed["moe"] / speed["dense"]
            measurements.append(
                {
                    "threads": threads,
                    "tokens_per_second": speed,
                    "ratio_moe_over_dense": ratio,
                    "seconds_per_step": per_step,
                    "meets_target": ratio >= TARGET_RATIO,
                    "block_seconds": times,
                }
            )
            lines.append(
                f"  {threads} thread(s): {args.moe_preset} {speed['moe']:,.0f} tokens/s,"
                f" {args.dense_preset} {speed['dense']:,.0f} tokens/s,"
                f" ratio {ratio:.3f} (target >= {TARGET_RATIO}),"
                f" MoE step {1e3 * per_step['moe'] - 1e3 * per_step['dense']:+.1f} ms"
            )
    finally:
        torch.set_num_threads(default_threads)
    result = {
        "benchmark": "train",
        "presets": {"moe": args.moe_preset, "dense": args.dense_preset},
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "ffn_widths": {"moe_d_expert": moe_config.moe.d_expert, "dense_d_ff": dense_config.d_ff},
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "target_ratio": TARGET_RATIO,
        "measurements": measurements,
        "meets_target": all(m["meets_target"] for m in measurements),
        "training_flops_per_token": {n: t.flops_per_token for n, t in trainers.items()},
        "parameters": {
            n: dataclasses.asdict(t.model.parameter_counts()) for n, t in trainers.items()
        },
        "machine": machine_info(trainers["moe"].device),
    }
    print("\n".join(lines))
    if not args.no_write:
        path = write_result("train", result)
        result["path"] = str(path)
        print(f"  written to {path}")
    return result


if __name__ == "__main__":  # also runnable alone: python -m moe_lab.bench.train
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
