"""Committed benchmark results read back and rendered (what notebook 07 shows as GPU figures)."""

import json

from moe_lab.bench import common
from moe_lab.bench.results import layer_ratio_markdown, layer_results

CUDA_RESULT = {  # the shape of a `bench layer --device cuda --dtype bfloat16` result
    "machine": {"device": "cuda", "device_name": "NVIDIA H200", "torch_version": "2.11.0"},
    "dtype": "bfloat16",
    "quick": False,
    "rows": [
        {
            "shape": {
                "n_tokens": 4096,
                "d_model": 512,
                "d_expert": 1024,
                "n_experts": 8,
                "top_k": 2,
            },
            "ratio_dense_over_backend": {
                "forward": {"naive": 0.25, "sorted": 0.5, "grouped": 0.8},
                "forward_backward": {"naive": 0.2, "sorted": 0.45, "grouped": 0.75},
            },
            "cuda_host_syncs_per_forward": {"naive": 8, "sorted": 1, "grouped": 0},
        },
        {
            "shape": {
                "n_tokens": 512,
                "d_model": 512,
                "d_expert": 1024,
                "n_experts": 32,
                "top_k": 1,
            },
            "ratio_dense_over_backend": {
                "forward": {"sorted": 0.3},
                "forward_backward": {"sorted": 0.25},
            },
            "unavailable": {"grouped": "torch's grouped_mm refused bfloat16 on cuda:0"},
        },
    ],
}


def test_layer_results_reads_by_device_and_skips_quick_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    (tmp_path / "layer-cuda-20260101T000000Z.json").write_text(json.dumps(CUDA_RESULT))
    quick = {**CUDA_RESULT, "quick": True}
    (tmp_path / "layer-cuda-20260102T000000Z.json").write_text(json.dumps(quick))
    (tmp_path / "layer-cpu-20260101T000000Z.json").write_text(json.dumps(CUDA_RESULT))
    assert [name for name, _ in layer_results("cuda")] == ["layer-cuda-20260101T000000Z.json"]
    assert len(layer_results("cuda", include_quick=True)) == 2
    assert layer_results("mps") == []


def test_layer_ratio_markdown_names_the_device_and_every_figure():
    text = layer_ratio_markdown("layer-cuda-x.json", CUDA_RESULT)
    assert "**NVIDIA H200** (bfloat16, torch 2.11.0)" in text
    assert "| N=4096 E=8 K=2 | forward_backward | 0.20 | 0.45 | 0.75 |" in text
    assert "| N=512 E=32 K=1 | forward | - | 0.30 | - |" in text  # missing backends shown as -
    assert "`naive` 8, `sorted` 1, `grouped` 0" in text
    assert "`grouped` did not run there: torch's grouped_mm refused" in text
