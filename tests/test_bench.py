"""The benchmark's plumbing (no timing assertions: speed targets live in the benchmark itself)."""

import json

from moe_lab.bench.common import machine_info, time_interleaved, write_result
from moe_lab.bench.layer import HEADLINE, Shape, bench_shape, grid


def test_grid_covers_the_summary_shapes():
    shapes = grid(quick=False)
    assert shapes[0] == Shape(*HEADLINE)
    # N in {512, 4096} x E in {8, 32} x K in {1, 2}; the headline is one of the eight
    assert {(s.n_tokens, s.n_experts, s.top_k) for s in shapes} == {
        (n, e, k) for n in (512, 4096) for e in (8, 32) for k in (1, 2)
    }
    assert len(grid(quick=True)) == 3


def test_time_interleaved_alternates_candidates():
    calls = []
    times = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then three interleaved rounds
    assert [len(t) for t in times.values()] == [3, 3]


def test_bench_shape_reports_every_backend_and_writes_json(tmp_path):
    result = bench_shape(Shape(64, 16, 32, 4, 2), repeats=1, include_naive=True, device="cpu")
    for mode in ("forward", "forward_backward"):
        ratios = result["ratio_dense_over_backend"][mode]
        assert {"naive", "sorted"} <= set(ratios) and all(r > 0 for r in ratios.values())
    path = write_result("layer", {"machine": machine_info(), "rows": [result]}, tmp_path)
    saved = json.loads(path.read_text())
    assert saved["machine"]["torch_version"].startswith("2.13")
    assert saved["machine"]["device_name"] and saved["machine"]["torch_threads"] >= 1
