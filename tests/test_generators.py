"""Generated files have one generator each, and the committed output is what it generates.

The notebooks' ``.ipynb`` files are generated from their Jupytext sources by
``tools/sync_notebooks.py`` (its own tests are in ``tests/test_notebooks.py``).
"""

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_every_notebook_matches_its_source():
    result = subprocess.run(
        [sys.executable, str(TOOLS / "sync_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        "a notebook and its .py source differ: run `python tools/sync_notebooks.py` and commit.\n"
        f"{result.stdout}{result.stderr}"
    )


def test_three_seeds_table_from_hand_made_histories(tmp_path):
    """tools/three_seeds.py turns run histories into notebook 04's table; values by hand."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("three_seeds", TOOLS / "three_seeds.py")
    three_seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(three_seeds)
    for seed in three_seeds.SEEDS:
        for preset, final, speed in (("tiny-dense", 1.5, 2.0), ("tiny-moe", 1.2, 1.0),
                                     ("tiny-dense-wide", 1.3, 1.0)):  # fmt: skip
            steps = range(11)
            history = {
                "val_loss": [3.0, 2.0, final],  # evaluated at 0, 50 and 100 FLOPs / 0, 5, 10 s
                "eval_flops": [0.0, 50.0, 100.0],
                "eval_wall_time": [0.0, 5.0, 10.0],
                "flops": [10.0 * s for s in steps],
                "tokens": [100 * s for s in steps],
                "wall_time": [s / speed for s in steps],  # tokens/s = 100 * speed
            }
            run = three_seeds.run_dir(tmp_path, preset, seed)
            run.mkdir(parents=True)
            (run / "history.json").write_text(json.dumps(history))
    rows = three_seeds.table(tmp_path).splitlines()
    # wide at the MoE's 100 FLOPs: its last point, 1.3; MoE when the dense run ended (5 s): 2.0;
    # MoE / dense tokens/s: 100 / 200 = 0.50
    assert rows[2] == "| 0 | 1.500 | **1.200** | 1.300 | 1.300 | 2.000 | 0.50 |"
    assert rows[-1] == "| mean | 1.500 | **1.200** | 1.300 | 1.300 | | |"


def test_run_under_load_starts_and_stops_its_busy_processes():
    """tools/run_under_load.py: the spinning processes run until stopped, and are stopped."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("run_under_load", TOOLS / "run_under_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    busy = module.start_busy(2)
    try:
        time.sleep(0.2)
        assert [p.poll() for p in busy] == [None, None]  # still spinning
    finally:
        module.stop(busy)
    assert all(p.returncode is not None for p in busy)
    assert module.TIMING_NOTEBOOKS and all(
        (TOOLS.parent / nb).is_file() for nb in module.TIMING_NOTEBOOKS
    )
