"""``build_site``: execute the course's notebooks and write them as a static site that works offline.

The site:

    DIR/index.html            the notebook map: each notebook's title, outcomes and time
    DIR/NN_name.html          one page per notebook, executed, outputs included
    DIR/assets/plotly.min.js  plotly.js, once for the whole site (from the installed plotly)
    DIR/assets/notebook.css   nbconvert's JupyterLab CSS, once for the whole site
    DIR/assets/site.css       the site's own few rules
    DIR/moe_lab_site.json     what was built, with which versions, how long each run took

Nothing is fetched when a page is viewed: no CDN, no MathJax (the notebooks write formulas in
Unicode), no widget manager. The site is built in a temporary folder next to ``DIR`` and moved
into place at the end, so an interrupted build never leaves half a site in ``DIR``.

Taught in: the README ("The course offline").
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path

import nbformat
import plotly
import torch
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune
from plotly.offline import get_plotlyjs
from tqdm.auto import tqdm

import moe_lab
from moe_lab.site.config import MANIFEST_NAME, SiteConfig
from moe_lab.site.execute import ExecutedNotebook, code_cells, execute_notebook

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
COURSE_TITLE = "moe_lab: Mixture of Experts, measured"
NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"


class SiteError(ValueError):
    """A problem the reader can fix (a folder, a notebook name): one line, no traceback."""


@dataclass(frozen=True)
class NotebookSummary:
    """What the notebook map says about a notebook, read from its first Markdown cell."""

    title: str
    outcomes: tuple[str, ...]
    time: str


@dataclass(frozen=True)
class SiteReport:
    """What ``build_site`` built.

    Attributes:
        out: the site's folder.
        pages: notebook name -> its ``ExecutedNotebook``.
        failed: names of the notebooks that stopped at an error.
        bytes: the site's total size on disk.
    """

    out: Path
    pages: dict[str, ExecutedNotebook]
    failed: tuple[str, ...]
    bytes: int


def select_notebooks(source: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The notebooks in ``source`` (course order), or those ``wanted`` names pick.

    Raises:
        SiteError: a wanted name matches no notebook, or ``source`` holds none.
    """
    available = sorted(source.glob(NOTEBOOK_PATTERN))
    if not available:
        raise SiteError(f"no notebooks (NN_name.ipynb) in {source}: pass --source DIR")
    if not wanted:
        return available
    chosen: list[Path] = []
    for name in wanted:
        matches = [p for p in available if name in (p.name, p.stem, p.stem.split("_", 1)[0])]
        if not matches:
            names = ", ".join(p.stem for p in available)
            raise SiteError(f"--notebooks {name}: no such notebook in {source} (have: {names})")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen)


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless told to, and then only over a site.

    Raises:
        SiteError: ``out`` is not empty and ``overwrite`` is False, or ``out`` is not empty
            and holds no site (no ``moe_lab_site.json``).
    """
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise SiteError(
            f"--out {out} is not empty: choose a new or empty folder, or pass --overwrite"
            " to replace the site in it"
        )
    if not (out / MANIFEST_NAME).is_file():
        raise SiteError(
            f"--out {out} is not empty and holds no moe-lab site (no {MANIFEST_NAME}):"
            " --overwrite replaces only a site; choose another folder"
        )


def summarize(notebook: nbformat.NotebookNode, fallback: str) -> NotebookSummary:
    """Title, outcomes and time, from the notebook's first Markdown cell.

    Title: the first ``# `` heading. Outcomes: the bullets under "**After this notebook you
    can**", or the rest of that paragraph when it is written as one sentence. Time: the
    paragraph that starts with "**Time".
    """
    markdown = next((c.source for c in notebook.cells if c.cell_type == "markdown"), "")
    lines = markdown.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), fallback)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", markdown) if p.strip()]
    outcomes: list[str] = []
    time_text = ""
    for paragraph in paragraphs:
        if paragraph.startswith("**After this notebook you can**"):
            rest = paragraph.removeprefix("**After this notebook you can**").strip()
            bullets = [line[2:].strip() for line in rest.splitlines() if line.startswith("- ")]
            outcomes = bullets or [" ".join(rest.split())]
        elif paragraph.startswith("**Time"):
            time_text = re.sub(r"^\*\*Time:?\*\*:?\s*", "", " ".join(paragraph.split()))
    return NotebookSummary(title=title, outcomes=tuple(outcomes), time=time_text)


def _nav(pages: list[Path], index: int | None) -> str:
    """The navigation bar: the map, and the previous and next notebooks."""
    links = [f'<a class="moe-home" href="index.html">{escape(COURSE_TITLE)}: all notebooks</a>']
    if index is not None:
        if index > 0:
            links.append(
                f'<a href="{pages[index - 1].stem}.html">&larr; {pages[index - 1].stem}</a>'
            )
        if index + 1 < len(pages):
            links.append(
                f'<a href="{pages[index + 1].stem}.html">{pages[index + 1].stem} &rarr;</a>'
            )
    return f'<nav class="moe-nav">{"".join(links)}</nav>'


def _link_pages(html: str, built: set[str]) -> str:
    """Links to a notebook of this site (``NN_name.ipynb``) point at its page instead."""

    def swap(match: re.Match[str]) -> str:
        stem = match.group(2)
        return f"{match.group(1)}{stem}.html" if stem in built else match.group(0)

    return re.sub(r'(href=")(?:[./\w-]*/)?(\d\d_[\w-]+)\.ipynb', swap, html)


def _write_assets(folder: Path, exporter: HTMLExporter) -> None:
    assets = folder / "assets"
    assets.mkdir(parents=True)
    (assets / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
    css = [
        Path(base) / "static" / name
        for base in exporter.template_paths
        for name in ("index.css", "theme-light.css")
        if (Path(base) / "static" / name).is_file()
    ]
    if len(css) < 2:
        raise SiteError("nbconvert's JupyterLab CSS was not found: reinstall nbconvert")
    (assets / "notebook.css").write_text(
        "\n".join(path.read_text(encoding="utf-8") for path in css[:2]), encoding="utf-8"
    )
    shutil.copy(STATIC / "site.css", assets / "site.css")


def _inline_markdown(text: str) -> str:
    """Markdown to HTML without the enclosing paragraph (for a table cell or a list item)."""
    html = markdown2html_mistune(text).strip()
    return html.removeprefix("<p>").removesuffix("</p>")


def _index_html(rows: list[tuple[Path, NotebookSummary, ExecutedNotebook]]) -> str:
    body = []
    for path, summary, run in rows:
        outcomes = "".join(f"<li>{_inline_markdown(o)}</li>" for o in summary.outcomes)
        status = (
            f'<span class="moe-failed">stopped at {escape(run.error)}</span>'
            if run.error
            else f"ran in {run.seconds:.0f} s"
        )
        body.append(
            f'<tr><td><a href="{path.stem}.html">{escape(summary.title)}</a></td>'
            f"<td><ul>{outcomes}</ul></td><td>{_inline_markdown(summary.time)}</td>"
            f"<td>{status}; {run.figures} figures, {run.explorers} explorers</td></tr>"
        )
    built = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{escape(COURSE_TITLE)}</title>
<link rel="stylesheet" href="assets/notebook.css"><link rel="stylesheet" href="assets/site.css">
</head><body class="moe-page moe-index jp-RenderedHTMLCommon">
<h1>{escape(COURSE_TITLE)}</h1>
<p>An offline copy of the course, built by <code>moe-lab site</code> on {built} with moe_lab
{moe_lab.__version__}, torch {torch.__version__} and plotly {plotly.__version__}, on
{escape(platform.machine())} ({escape(platform.system())}). Every output is what the notebook
printed when it ran for this build. The explorers are snapshots of their starting state: they are
live in JupyterLab (<code>jupyter lab notebooks/</code>). Nothing on these pages is fetched from
the network.</p>
<table class="moe-map"><thead><tr><th>notebook</th><th>after it you can</th><th>time</th>
<th>this build</th></tr></thead><tbody>
{"".join(body)}
</tbody></table></body></html>
"""


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_site(config: SiteConfig) -> SiteReport:
    """Execute the selected notebooks and write the site into ``config.out``.

    Args:
        config: a ``SiteConfig``.

    Returns:
        A ``SiteReport``. A notebook that fails still gets its page (up to the failing cell,
        with the error) and is listed in ``failed``.

    Raises:
        SiteError: bad folders or notebook names (nothing is executed then).

    Taught in: the README ("The course offline").
    """
    paths = select_notebooks(config.source, config.notebooks)
    check_out_folder(config.out, config.overwrite)
    exporter = HTMLExporter(template_name="moe_lab_site", extra_template_basedirs=[str(TEMPLATES)])
    notebooks = [nbformat.read(path, as_version=4) for path in paths]
    total = sum(code_cells(nb) for nb in notebooks)
    config.out.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{config.out.name}-", dir=config.out.resolve().parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a site is for reading
    try:
        _write_assets(staging, exporter)
        rows = []
        pages: dict[str, ExecutedNotebook] = {}
        built = {path.stem for path in paths}
        with tqdm(total=total, unit="cell", disable=not config.progress) as bar:
            for index, (path, notebook) in enumerate(zip(paths, notebooks, strict=True)):
                bar.set_description(path.stem)
                done = [0]

                def step(done: list[int] = done) -> None:
                    done[0] += 1
                    bar.update(1)

                run = execute_notebook(path, config.timeout_s, config.kernel_name, step)
                bar.update(code_cells(notebook) - done[0])  # the cells a failure skipped
                summary = summarize(run.notebook, path.stem)
                resources = {
                    "metadata": {"name": summary.title, "path": str(path.parent)},
                    "moe_site": {"nav": _nav(paths, index)},
                }
                html, _ = exporter.from_notebook_node(run.notebook, resources=resources)
                (staging / f"{path.stem}.html").write_text(
                    _link_pages(html, built), encoding="utf-8"
                )
                rows.append((path, summary, run))
                pages[path.name] = run
        (staging / "index.html").write_text(_index_html(rows), encoding="utf-8")
        manifest = {
            "generator": "moe-lab site",
            "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "versions": {
                "moe_lab": moe_lab.__version__,
                "torch": torch.__version__,
                "plotly": plotly.__version__,
                "python": platform.python_version(),
            },
            "notebooks": [
                {
                    "source": name,
                    "page": f"{Path(name).stem}.html",
                    "seconds": round(run.seconds, 1),
                    "figures": run.figures,
                    "explorers": run.explorers,
                    "error": run.error,
                }
                for name, run in pages.items()
            ],
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if config.out.exists():
            shutil.rmtree(config.out)
        staging.rename(config.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    failed = tuple(name for name, run in pages.items() if run.error)
    return SiteReport(out=config.out, pages=pages, failed=failed, bytes=_folder_bytes(config.out))
