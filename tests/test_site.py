"""Tests of moe_lab.site (``moe-lab site``): choosing notebooks, guarding the output folder,
rendering figures and widget snapshots, and one real build of two small notebooks in a kernel.

The browser tests (tests/browser/test_offline_site.py) open a built site in Chromium with the
network off; these check the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest

from moe_lab import cli
from moe_lab.site import SiteConfig, SiteError, build_site, select_notebooks
from moe_lab.site.build import _link_pages, check_out_folder, summarize
from moe_lab.site.config import MANIFEST_NAME
from moe_lab.site.render import figure_html, has_controls, snapshot_html
from moe_lab.site.snapshot import describe
from moe_lab.viz import RoutingExplorer, RoutingState
from moe_lab.viz.explorer import figure_bundle

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebook(path: Path, cells: list) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.cells = cells
    nbformat.write(notebook, path)


# ---------------------------------------------------------------------------------------------
# Choosing notebooks, guarding folders
# ---------------------------------------------------------------------------------------------
def test_every_notebook_of_the_course_is_found_by_glob() -> None:
    found = [p.name for p in select_notebooks(NOTEBOOKS, ())]
    assert found == [
        "01_dense_ffn.ipynb",
        "02_routing.ipynb",
        "03_load_balancing.ipynb",
        "04_train_tiny_moe.ipynb",
        "05_specialization.ipynb",
        "06_compute_budgets.ipynb",
        "07_gpu_and_scaling.ipynb",
        "08_interview_grill.ipynb",
    ]


def test_notebooks_chosen_by_number_stem_or_name(tmp_path: Path) -> None:
    for name in ("01_a", "02_b", "03_c"):
        write_notebook(tmp_path / f"{name}.ipynb", [])
    chosen = select_notebooks(tmp_path, ("03", "01_a", "02_b.ipynb", "03_c"))
    assert [p.name for p in chosen] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    with pytest.raises(SiteError, match=r"--notebooks 9: no such notebook .*have: 01_a, 02_b"):
        select_notebooks(tmp_path, ("9",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiteError, match="no notebooks"):
        select_notebooks(tmp_path / "empty", ())


def test_out_folder_is_never_overwritten_without_asking(tmp_path: Path) -> None:
    check_out_folder(tmp_path / "new", overwrite=False)  # a new folder: fine
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty", overwrite=False)  # an empty one: fine
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("years of work")
    with pytest.raises(SiteError, match=r"not empty: .* or pass --overwrite"):
        check_out_folder(busy, overwrite=False)
    with pytest.raises(SiteError, match="holds no moe-lab site"):
        check_out_folder(busy, overwrite=True)  # --overwrite replaces only a site
    (busy / MANIFEST_NAME).write_text("{}")
    check_out_folder(busy, overwrite=True)


def test_cli_refuses_a_non_empty_folder_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    status = cli.main(["site", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "is not empty" in err and (tmp_path / "notes.txt").read_text() == "keep me"
    assert cli.main(["site", "--out", str(tmp_path / "x"), "--notebooks", "99"]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_site_config_validates() -> None:
    with pytest.raises(ValueError, match="does not exist: pass --source"):
        SiteConfig(out=Path("site"), source=Path("/no/such/folder"))
    with pytest.raises(ValueError, match="is the notebooks folder"):
        SiteConfig(out=NOTEBOOKS, source=NOTEBOOKS)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def test_figure_html_draws_with_the_pages_plotly_and_carries_only_the_data() -> None:
    figure = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout={"title": "t", "height": 333})
    html = figure_html(figure_bundle(figure)["application/vnd.plotly.v1+json"])
    assert "Plotly.newPlot" in html and "height:333px" in html.replace(" ", "")
    assert len(html) < 10_000  # the figure's JSON, not plotly.js (4.8 MB)
    assert "cdn" not in html.lower() and "<script src" not in html
    assert '"responsive": true' in html


def test_snapshot_of_a_live_explorer_shows_its_state_and_figure() -> None:
    explorer = RoutingExplorer(RoutingState(router="hash", n_experts=5))
    snapshot = json.loads(json.dumps(describe(explorer.widget)))  # what crosses the kernel
    controls = {}

    def walk(item: dict) -> None:
        if item["kind"] == "control":
            controls[item["description"]] = item
        for child in item.get("children", []):
            walk(child)

    walk(snapshot)
    assert controls["experts"]["value"] == 5 and controls["router"]["label"] == "hash"
    # the controls hash ignores are greyed out in the kernel, and so in the snapshot
    assert {name for name, c in controls.items() if c["disabled"]} == {
        explorer.controls[field].description
        for field in RoutingState(router="hash").ignored_fields()
    }
    html = snapshot_html(snapshot, "02_routing.ipynb")
    assert "It is live in JupyterLab" in html and "02_routing.ipynb" in html
    assert html.count("Plotly.newPlot") == 1
    assert html.count('class="moe-control moe-ignored"') == 5
    assert explorer.figure.layout.title.text.split("<br>")[0] in html
    assert re.search(r"<option selected>hash</option>", html)
    assert has_controls(snapshot)


def test_a_progress_bar_is_not_called_an_explorer() -> None:
    import ipywidgets as widgets

    snapshot = describe(widgets.HBox([widgets.HTML("50%"), widgets.FloatProgress(1, max=2)]))
    assert not has_controls(snapshot)
    assert "live in JupyterLab" not in snapshot_html(snapshot, "04_x.ipynb")
    assert "<progress" in snapshot_html(snapshot, "04_x.ipynb")


def test_notebook_summary_and_links() -> None:
    notebook = nbformat.read(NOTEBOOKS / "02_routing.ipynb", as_version=4)
    summary = summarize(notebook, "02_routing")
    first = notebook.cells[0].source.splitlines()
    assert summary.title == next(line[2:] for line in first if line.startswith("# "))
    assert len(summary.outcomes) >= 3 and "minutes" in summary.time
    html = '<a href="03_x.ipynb#sec">3</a> <a href="notebooks/05_y.ipynb">5</a> <a href="a.ipynb">'
    assert _link_pages(html, {"03_x"}) == (
        '<a href="03_x.html#sec">3</a> <a href="notebooks/05_y.ipynb">5</a> <a href="a.ipynb">'
    )


# ---------------------------------------------------------------------------------------------
# One real build
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_runs_notebooks_and_writes_a_self_contained_site(tmp_path: Path) -> None:
    source = tmp_path / "notebooks"
    source.mkdir()
    write_notebook(
        source / "01_demo.ipynb",
        [
            nbformat.v4.new_markdown_cell(
                "# 01 · Demo\n\n**After this notebook you can**\n- read a figure.\n\n"
                "**Time**: 1 minute. Next: [the other one](02_fails.ipynb)."
            ),
            nbformat.v4.new_code_cell(
                "import plotly.graph_objects as go\n"
                "go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout={'title': 'bars'})"
            ),
            nbformat.v4.new_code_cell(
                "from moe_lab.viz import RoutingExplorer, RoutingState\n"
                "explorer = RoutingExplorer(RoutingState(router='switch'))\nexplorer.widget"
            ),
            # the next cell changes the explorer: the snapshot must keep the state displayed
            nbformat.v4.new_code_cell("explorer.set_state(RoutingState(router='hash'))\nNone"),
            nbformat.v4.new_code_cell(
                "answer = 6 * 7\nprint(answer)",
                metadata={"tags": ["solution"], "jupyter": {"source_hidden": True}},
            ),
        ],
    )
    write_notebook(
        source / "02_fails.ipynb",
        [
            nbformat.v4.new_markdown_cell("# 02 · Fails"),
            nbformat.v4.new_code_cell("print('before')"),
            nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'a planted failure'"),
            nbformat.v4.new_code_cell("print('never printed')"),
        ],
    )
    out = tmp_path / "site"
    report = build_site(SiteConfig(out=out, source=source, progress=False))

    assert report.failed == ("02_fails.ipynb",)
    assert report.pages["02_fails.ipynb"].error == "cell 2: AssertionError: a planted failure"
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    demo = manifest["notebooks"][0]
    assert (demo["figures"], demo["explorers"], demo["error"]) == (2, 1, None)
    assert sorted(p.name for p in out.iterdir()) == [
        "01_demo.html",
        "02_fails.html",
        "assets",
        "index.html",
        MANIFEST_NAME,
    ]
    assert (out / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    page = (out / "01_demo.html").read_text()
    # nothing from the network: every script and style sheet is one of the site's own files
    sources = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith("assets/") for s in sources), sources
    assert "application/vnd.jupyter.widget-state+json" not in page and len(page) < 300_000
    assert page.count("Plotly.newPlot") == 2  # the bar chart and the explorer's snapshot
    assert "router=&#x27;switch&#x27;" in page or "router='switch'" in page
    assert "It is live in JupyterLab" in page
    assert re.search(r'<details class="moe-solution">.*?answer.*?42.*?</details>', page, re.S)
    assert 'href="02_fails.html"' in page  # a link to a built notebook goes to its page
    failed_page = (out / "02_fails.html").read_text()
    assert "before" in failed_page and "a planted failure" in failed_page
    assert failed_page.count("never printed") == 1  # in the cell's source, never as output
    index = (out / "index.html").read_text()
    assert "01 · Demo" in index and "read a figure." in index and "stopped at cell 2" in index

    # again, through the command line: refused without --overwrite, replaced with it
    assert cli.main(["site", "--out", str(out), "--source", str(source)]) == 2
    rebuild = ["site", "--out", str(out), "--source", str(source), "--notebooks", "02"]
    status = cli.main([*rebuild, "--overwrite", "--no-progress"])
    assert status == 1  # the one notebook built stopped at its failure
    assert sorted(p.name for p in out.glob("*.html")) == ["02_fails.html", "index.html"]
