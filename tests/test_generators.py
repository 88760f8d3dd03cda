"""Generated files have one generator each, and the committed output is what it generates."""

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
GENERATORS = sorted(TOOLS.glob("make_*.py"))


@pytest.mark.parametrize("generator", GENERATORS, ids=lambda p: p.name)
def test_generated_file_is_up_to_date(generator):
    result = subprocess.run(
        [sys.executable, str(generator), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, (
        f"{generator.name} --check failed: re-run `python tools/{generator.name}` and commit.\n"
        f"{result.stdout}{result.stderr}"
    )
