"""The benchmark's plumbing (no timing assertions: speed targets live in the benchmark itself)."""

import json

import pytest

from moe_lab.bench.common import machine_info, time_interleaved, write_result
from moe_lab.bench.layer import HEADLINE, Shape, bench_shape, grid
from moe_lab.model import get_preset


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


def test_scaled_presets_keep_the_twins_matched():
    from moe_lab.bench.train import scaled_presets
    from moe_lab.model import TinyLM

    moe, dense = scaled_presets("tiny-moe", "tiny-dense", 8)
    assert moe.moe.d_expert == 8 and dense.d_ff == moe.moe.top_k * 8  # 2 experts of 8 = 16 wide

    # still the same active parameters but for the routers' gates (3 blocks x D=64 x E=8), as
    # for the unscaled presets; counted from the modules
    def active_gap(moe_config, dense_config):
        return (
            TinyLM(moe_config).parameter_counts().active
            - TinyLM(dense_config).parameter_counts().active
        )

    assert active_gap(moe, dense) == 3 * 64 * 8
    assert active_gap(get_preset("tiny-moe"), get_preset("tiny-dense")) == 3 * 64 * 8
    _, wide = scaled_presets("tiny-moe", "tiny-dense-wide", 8)
    assert wide.d_ff == moe.moe.n_experts * 8  # the same total parameters: all 8 experts' width
    assert scaled_presets("tiny-moe", "tiny-dense", None) == (
        get_preset("tiny-moe"),
        get_preset("tiny-dense"),
    )
    with pytest.raises(ValueError, match="has no MoE layers"):
        scaled_presets("tiny-dense", "tiny-dense", 8)
    with pytest.raises(ValueError, match=">= 1"):
        scaled_presets("tiny-moe", "tiny-dense", 0)
