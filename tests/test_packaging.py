"""Set-up invariants: exact pins, conda mirrors pip, the README carries the two commands CI runs."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        requirement for extra in project["optional-dependencies"].values() for requirement in extra
    ]
    pins = {}
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        assert sep, f"{requirement!r} is not pinned exactly (name==version)"
        pins[name.lower()] = version
    return pins


def test_torch_is_pinned_exactly_to_the_cpu_release():
    # a range or a newer torch pulls several GB of CUDA packages
    assert pyproject_pins()["torch"] == "2.13.0"


def test_environment_yml_mirrors_pyproject_pins():
    text = (ROOT / "environment.yml").read_text()
    conda_pins = dict(re.findall(r"^\s+- ([A-Za-z0-9_.-]+)==([0-9][^\s]*)\s*$", text, re.M))
    assert {k.lower(): v for k, v in conda_pins.items()} == pyproject_pins()


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    for marker in ("install-command", "test-command"):
        assert f"<!-- {marker} -->" in readme and f"<!-- /{marker} -->" in readme
    script = (ROOT / ".ci" / "run").read_text()
    assert "readme_block install-command" in script and "readme_block test-command" in script
    # the extraction CI uses gives exactly one line per command
    out = subprocess.run(
        [
            "bash",
            "-c",
            "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md"
            " | grep -v -e '^<!--' -e '^```'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == ".venv/bin/python -m pytest"


def test_default_run_excludes_gpu_and_includes_notebooks():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not gpu and not browser'" in ini["addopts"] and "--nbval-lax" in ini["addopts"]
    assert "notebooks" in ini["testpaths"]
    assert {m.split(":")[0] for m in ini["markers"]} == {"gpu", "slow", "distributed", "browser"}


def test_wheel_ships_the_cpp_kernel_source(tmp_path):
    # moe_lab.cpp_kernels compiles moe_lab/csrc/*.cpp at run time: a non-editable install needs
    # the source inside the package
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        check=True,
    )
    (wheel,) = tmp_path.glob("moe_lab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "moe_lab/csrc/sorted_experts.cpp" in names
    assert "moe_lab/cpp_kernels.py" in names
    assert "moe_lab/grill/questions/routing.toml" in names  # the grill's bank is data, shipped too
