"""``SiteConfig``: what ``moe-lab site`` builds, from where, and how carefully.

Taught in: the README ("The course offline").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import moe_lab
from moe_lab.config import require

MANIFEST_NAME = "moe_lab_site.json"  # written into every site; marks a folder as one


def default_source() -> Path:
    """The course's ``notebooks/`` folder: beside the ``moe_lab`` package in a checkout."""
    return Path(moe_lab.__file__).resolve().parents[1] / "notebooks"


@dataclass(frozen=True)
class SiteConfig:
    """Settings of one site build.

    Args:
        out: the folder to write the site into (created; see ``overwrite``).
        source: the folder holding the notebooks (``NN_name.ipynb``).
        notebooks: which notebooks to build, by number ("02") or name ("02_routing",
            "02_routing.ipynb"); empty = every notebook in ``source``.
        overwrite: replace the site already in ``out``. Without it a non-empty ``out`` is
            refused; with it, only a folder holding a site (its ``moe_lab_site.json``) is
            replaced, never another folder's contents.
        timeout_s: the longest one cell may run.
        progress: show a progress bar (cells executed) on stderr.
        kernel_name: the Jupyter kernel the notebooks run in.
    """

    out: Path
    source: Path
    notebooks: tuple[str, ...] = ()
    overwrite: bool = False
    timeout_s: int = 1200
    progress: bool = True
    kernel_name: str = "python3"

    def __post_init__(self) -> None:
        require(self.timeout_s > 0, f"timeout_s={self.timeout_s} must be > 0")
        require(
            self.source.is_dir(),
            f"the notebooks folder {self.source} does not exist: pass --source DIR",
        )
        require(
            not (self.out.exists() and not self.out.is_dir()),
            f"--out {self.out} is a file, not a folder: choose a folder name",
        )
        require(
            self.out.resolve() != self.source.resolve(),
            f"--out {self.out} is the notebooks folder: choose another folder",
        )
