"""The analysis benchmark's plumbing (its 5 s budget is reported by the benchmark, not tested)."""

from __future__ import annotations

import argparse

from moe_lab.bench.__main__ import BENCHMARKS
from moe_lab.bench.analysis import BUDGET_SECONDS, add_arguments, run


def test_analysis_benchmark_reports_every_stage(capsys) -> None:
    assert BENCHMARKS["analysis"] == "moe_lab.bench.analysis"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--checkpoint", "hash", "--repeats", "1", "--no-write"])
    payload = run(args)
    # hash routing has no next choice, so its run skips the ablation line
    assert set(payload["seconds"]) == {"analyse_checkpoint", "end_state (three collapses)"}
    assert all(v > 0 for v in payload["cpu_seconds"].values())
    assert payload["validation_tokens"] > 40_000 and payload["budget_seconds"] == BUDGET_SECONDS
    assert payload["machine"]["torch_threads"] == 1
    assert "analyse_checkpoint" in capsys.readouterr().out
