"""Time analysing one trained checkpoint on the validation split (the course's budget: 5 s).

``python -m moe_lab.bench analysis`` loads a checkpoint from ``assets/`` and the course corpus,
then times ``moe_lab.analysis.analyse_checkpoint`` (capture the routing of the whole validation
split; per MoE block: specialization with its shuffled baseline and bootstrap interval, what the
domain adds beyond the byte, consecutive-token rates, co-activation, routing collapse) and, as
separate lines, the two measures notebook 05 runs on one seed only: expert ablation on 64
windows and the three collapses' end state. The median of ``--repeats`` runs is reported, wall
time and the process's CPU time side by side: with one thread, on a machine other jobs share,
the CPU time is close to what the wall time would be on a quiet one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moe_lab.analysis import ablation_effects, analyse_checkpoint
from moe_lab.analysis.lab import end_state
from moe_lab.assets import load_checkpoint
from moe_lab.bench.common import machine_info, write_result
from moe_lab.data import make_corpus

BUDGET_SECONDS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="balanced", help="an asset checkpoint name")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-write", action="store_true", help="do not write the JSON result")


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(args: argparse.Namespace) -> dict:
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: give at least 1")
    torch.set_num_threads(args.threads)
    corpus = make_corpus(seed=0)
    model, _ = load_checkpoint(args.checkpoint)
    split = corpus.val
    tasks = {
        "analyse_checkpoint": lambda: analyse_checkpoint(model, split, corpus.domain_names),
        "ablation (64 windows)": lambda: ablation_effects(
            model, split, corpus.domain_names, max_windows=64
        ),
        "end_state (three collapses)": lambda: end_state(model, corpus),
    }
    if model.config.moe.router == "hash":
        del tasks["ablation (64 windows)"]  # hash routing has no next choice to ablate towards
    tasks["analyse_checkpoint"]()  # warm-up: first-use compilation, allocator
    seconds, cpu_seconds = {}, {}
    for name, fn in tasks.items():
        runs = [_timed(fn) for _ in range(args.repeats)]
        seconds[name] = statistics.median(wall for wall, _ in runs)
        cpu_seconds[name] = statistics.median(cpu for _, cpu in runs)
    main = seconds["analyse_checkpoint"]
    print(
        f"checkpoint {args.checkpoint!r}: {len(split):,} validation tokens,"
        f" {len(model.moe_layers)} MoE blocks, {args.threads} thread(s)"
    )
    print(f"  {'':<30} {'wall':>8} {'CPU':>8}")
    for name, value in seconds.items():
        print(f"  {name:<30} {value:7.2f}s {cpu_seconds[name]:7.2f}s")
    verdict = "within" if main <= BUDGET_SECONDS else "over"
    print(f"analyse_checkpoint: {main:.2f} s, {verdict} the {BUDGET_SECONDS:.0f} s budget")
    payload = {
        "benchmark": "analysis",
        "checkpoint": args.checkpoint,
        "validation_tokens": len(split),
        "repeats": args.repeats,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "budget_seconds": BUDGET_SECONDS,
        "machine": machine_info("cpu"),
    }
    if not args.no_write:
        print(f"wrote {write_result('analysis', payload)}")
    return payload
