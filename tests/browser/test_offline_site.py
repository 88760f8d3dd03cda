"""The offline site in Chromium with the network off: every figure drawn, nothing fetched.

The site is built here with ``moe_lab.site.build_site`` from notebooks 01 and 06 (06's three
figures were the ones nbconvert left blank) and a two-cell notebook that shows both explorers,
so that their snapshots are checked too. Every page is opened with the browser offline and every
request that is not a local file aborted and recorded; no page may ask for one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from moe_lab.site import SiteConfig, build_site

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

pytestmark = pytest.mark.browser

ROOT_NOTEBOOKS = ("01_dense_ffn.ipynb", "06_compute_budgets.ipynb")
EXPLORERS = [
    "from moe_lab.viz import CapacityExplorer, RoutingExplorer\nRoutingExplorer().widget",
    "CapacityExplorer().widget",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    source = tmp_path_factory.mktemp("notebooks")
    for name in ROOT_NOTEBOOKS:
        shutil.copy(NOTEBOOKS / name, source)
    demo = nbformat.v4.new_notebook()
    demo.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    demo.cells = [nbformat.v4.new_markdown_cell("# 90 · Both explorers")]
    demo.cells += [nbformat.v4.new_code_cell(code) for code in EXPLORERS]
    nbformat.write(demo, source / "90_explorers.ipynb")
    out = tmp_path_factory.mktemp("site") / "site"
    report = build_site(SiteConfig(out=out, source=source, progress=False))
    assert report.failed == ()
    return out


def test_every_figure_renders_offline(browser, site, screenshots) -> None:
    manifest = json.loads((site / "moe_lab_site.json").read_text())
    pages = ["index.html"] + [entry["page"] for entry in manifest["notebooks"]]
    assert [entry["source"] for entry in manifest["notebooks"]] == [
        *ROOT_NOTEBOOKS,
        "90_explorers.ipynb",
    ]
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
    fetched: list[str] = []

    def local_files_only(route) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            fetched.append(url)
            route.abort()

    context.route("**/*", local_files_only)
    try:
        for name in pages:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            page.goto((site / name).as_uri())
            page.wait_for_load_state("load")
            plots = page.evaluate(
                "() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({"
                " traces: p._fullData ? p._fullData.length : 0,"
                " drawn: p.querySelectorAll('.trace, .hm, .bars .point').length,"
                " width: p._fullLayout ? p._fullLayout.width : 0 }))"
            )
            entry = next((e for e in manifest["notebooks"] if e["page"] == name), None)
            if entry is not None:
                assert len(plots) == entry["figures"] > 0, name
            assert all(p["traces"] > 0 and p["drawn"] > 0 and p["width"] > 400 for p in plots), (
                name,
                plots,
            )
            assert errors == [], (name, errors)
            page.screenshot(path=screenshots / f"site_{name}.png", full_page=True)
            page.close()
    finally:
        context.close()
    assert fetched == []  # nothing but the site's own files, on every page


def test_explorer_snapshots_say_they_are_live_in_jupyterlab(site) -> None:
    page = (site / "90_explorers.html").read_text()
    assert page.count("It is live in JupyterLab") == 2
    assert page.count("Plotly.newPlot") == 2
    # plotly.js once for the whole site, not in a page
    assert "assets/plotly.min.js" in page and len(page) < 300_000
    assert (site / "assets" / "plotly.min.js").stat().st_size > 1_000_000
