"""The three-seed comparison quoted in notebook 04: train, then print the table's rows.

    python tools/three_seeds.py --out runs/seeds            # 9 runs, then the table
    python tools/three_seeds.py --out runs/seeds --lr-sweep # also the seed-0 learning rates
    python tools/three_seeds.py --out runs/seeds --table-only

Each run is ``moe-lab train --preset NAME --seed S --out DIR --no-progress`` with one torch
thread, one run at a time (the tokens/s column means little if runs share the CPU). The columns
are computed as notebook 04 computes them for its own seed-0 run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PRESETS = ("tiny-dense", "tiny-moe", "tiny-dense-wide")
SEEDS = (0, 1, 2)
LR_SWEEP = (("tiny-dense-wide", 3e-3), ("tiny-dense-wide", 1e-2), ("tiny-moe", 3e-3),
            ("tiny-dense", 3e-3))  # fmt: skip


def run_dir(out: Path, preset: str, seed: int, lr: float | None = None) -> Path:
    return out / (f"{preset}-{seed}" if lr is None else f"{preset}-{seed}-lr{lr:g}")


def train(out: Path, preset: str, seed: int, lr: float | None = None) -> None:
    directory = run_dir(out, preset, seed, lr)
    if (directory / "history.json").exists():
        print(f"{directory}: done already")
        return
    command = [sys.executable, "-m", "moe_lab", "train", "--preset", preset, "--seed", str(seed),
               "--out", str(directory), "--no-progress"]  # fmt: skip
    if lr is not None:
        command += ["--lr", str(lr)]
    print(" ".join(command[1:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation of ys at x; clamped to the ends (as notebook 04 does)."""
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def tokens_per_second(h: dict, skip: int = 5) -> float:
    times, tokens = h["wall_time"], h["tokens"]
    return (tokens[-1] - tokens[skip]) / (times[-1] - times[skip])


def table(out: Path) -> str:
    lines = [
        "| seed | tiny-dense | tiny-moe | tiny-dense-wide | wide at the MoE's FLOPs"
        " | MoE when the dense run ended | MoE / dense tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    finals = {name: [] for name in PRESETS}
    wide_at_flops = []
    for seed in SEEDS:
        h = {n: json.loads((run_dir(out, n, seed) / "history.json").read_text()) for n in PRESETS}
        final = {n: h[n]["val_loss"][-1] for n in PRESETS}
        for n in PRESETS:
            finals[n].append(final[n])
        dense, moe, wide = h["tiny-dense"], h["tiny-moe"], h["tiny-dense-wide"]
        at_flops = interpolate(wide["eval_flops"], wide["val_loss"], moe["flops"][-1])
        wide_at_flops.append(at_flops)
        at_time = interpolate(moe["eval_wall_time"], moe["val_loss"], dense["wall_time"][-1])
        speed = tokens_per_second(moe) / tokens_per_second(dense)
        lines.append(
            f"| {seed} | {final['tiny-dense']:.3f} | **{final['tiny-moe']:.3f}**"
            f" | {final['tiny-dense-wide']:.3f} | {at_flops:.3f} | {at_time:.3f} | {speed:.2f} |"
        )

    def mean(values):
        return sum(values) / len(values)

    lines.append(
        f"| mean | {mean(finals['tiny-dense']):.3f} | **{mean(finals['tiny-moe']):.3f}**"
        f" | {mean(finals['tiny-dense-wide']):.3f} | {mean(wide_at_flops):.3f} | | |"
    )
    return "\n".join(lines)


def sweep_lines(out: Path) -> str:
    lines = []
    for preset, lr in LR_SWEEP:
        path = run_dir(out, preset, 0, lr) / "history.json"
        if path.exists():
            loss = json.loads(path.read_text())["val_loss"][-1]
            lines.append(f"seed 0, {preset}, lr {lr:g}: {loss:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--lr-sweep", action="store_true", help="also the seed-0 learning rates")
    parser.add_argument("--table-only", action="store_true", help="print from existing runs")
    args = parser.parse_args()
    if not args.table_only:
        for seed in SEEDS:
            for preset in PRESETS:
                train(args.out, preset, seed)
        if args.lr_sweep:
            for preset, lr in LR_SWEEP:
                train(args.out, preset, 0, lr)
    print(table(args.out))
    print(sweep_lines(args.out))


if __name__ == "__main__":
    main()
