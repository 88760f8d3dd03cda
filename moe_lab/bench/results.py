"""Read committed benchmark results back (``benchmarks/results/*.json``) and render them.

Notebook 07 shows the GPU figures through ``layer_results`` and ``layer_ratio_markdown``, so a
result committed from a GPU machine appears there, labelled with its device, with no code change.
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_lab.bench import common


def layer_results(device: str = "cpu", include_quick: bool = False) -> list[tuple[str, dict]]:
    """(file name, result) of every ``layer-<device>-*.json``, oldest first (names sort by time)."""
    found = []
    for path in sorted(Path(common.RESULTS_DIR).glob(f"layer-{device}-*.json")):
        result = json.loads(path.read_text())
        if include_quick or not result.get("quick"):
            found.append((path.name, result))
    return found


def layer_ratio_markdown(name: str, result: dict) -> str:
    """A Markdown table of one layer result: time(dense) / time(backend) per shape and mode,
    headed by the device, dtype and torch version, and the host syncs CUDA counted, if any."""
    machine = result["machine"]
    backends = list(
        dict.fromkeys(
            b for row in result["rows"] for b in row["ratio_dense_over_backend"]["forward"]
        )
    )
    lines = [
        f"Measured on **{machine['device_name']}** ({result.get('dtype', 'float32')},"
        f" torch {machine['torch_version']}), `{name}`; time(dense FFN, same FLOPs) /"
        " time(MoE layer), 1.00 = routing is free:",
        "",
        "| shape | mode | " + " | ".join(f"`{b}`" for b in backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    for row in result["rows"]:
        shape = row["shape"]
        label = f"N={shape['n_tokens']} E={shape['n_experts']} K={shape['top_k']}"
        for mode, ratios in row["ratio_dense_over_backend"].items():
            cells = " | ".join(f"{ratios[b]:.2f}" if b in ratios else "-" for b in backends)
            lines.append(f"| {label} | {mode} | {cells} |")
    syncs = result["rows"][0].get("cuda_host_syncs_per_forward")
    if syncs:
        counted = ", ".join(f"`{b}` {n}" for b, n in syncs.items())
        lines += ["", f"Host synchronizations per forward, counted by CUDA: {counted}."]
    unavailable = {b: e for row in result["rows"] for b, e in row.get("unavailable", {}).items()}
    for backend, error in unavailable.items():
        lines += ["", f"`{backend}` did not run there: {error}"]
    return "\n".join(lines)
