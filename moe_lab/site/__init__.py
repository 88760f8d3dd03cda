"""The course as a static website that works offline: ``moe-lab site --out DIR``.

    config.py    SiteConfig: where from, where to, which notebooks, overwrite or not
    execute.py   run a notebook cell by cell in a Jupyter kernel; make its outputs static
    snapshot.py  (runs in the kernel) describe a displayed widget as JSON, as it is now
    render.py    static HTML for plotly figures and widget snapshots
    build.py     build_site: execute, convert with nbconvert, write pages, assets, the map
    cli.py       the ``moe-lab site`` command

Taught in: the README ("The course offline").
"""

from moe_lab.site.build import SiteError, SiteReport, build_site, select_notebooks
from moe_lab.site.config import SiteConfig

__all__ = ["SiteConfig", "SiteError", "SiteReport", "build_site", "select_notebooks"]
