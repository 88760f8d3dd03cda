"""``moe-lab site``: the command's arguments and what it prints.

    moe-lab site --out site/                       # every notebook in notebooks/
    moe-lab site --out site/ --notebooks 02 06     # a subset
    moe-lab site --out site/ --overwrite           # replace the site built there before

Taught in: the README ("The course offline").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moe_lab.site.config import SiteConfig, default_source


def add_site_command(commands: argparse._SubParsersAction) -> None:
    """Register ``site`` on ``moe-lab``'s sub-commands."""
    site = commands.add_parser(
        "site",
        help="execute the notebooks and write the course as an offline HTML site",
        description="Execute every notebook in notebooks/ and write a static site (an index and"
        " one page per notebook) that renders every figure with the network off.",
    )
    site.add_argument("--out", required=True, metavar="DIR", help="folder to write the site to")
    site.add_argument(
        "--notebooks",
        nargs="+",
        default=[],
        metavar="NAME",
        help="build only these notebooks, by number (02) or name (02_routing)",
    )
    site.add_argument("--overwrite", action="store_true", help="replace the site already in DIR")
    site.add_argument(
        "--source",
        metavar="DIR",
        help=f"the notebooks folder (default: {default_source()})",
    )
    site.add_argument(
        "--timeout", type=int, default=SiteConfig.timeout_s, help="seconds one cell may run"
    )
    site.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_site_command(args: argparse.Namespace) -> int:
    """Build the site; print where it is and how big. Returns the exit status (1: a notebook
    failed; its page shows where). Bad arguments raise ``ValueError`` or ``SiteError``."""
    from moe_lab.site.build import build_site  # nbconvert is imported only for this command

    config = SiteConfig(
        out=Path(args.out),
        source=Path(args.source) if args.source else default_source(),
        notebooks=tuple(args.notebooks),
        overwrite=args.overwrite,
        timeout_s=args.timeout,
        progress=not args.no_progress,
    )
    report = build_site(config)
    print(
        f"moe-lab site: {len(report.pages)} notebooks, {report.bytes / 1e6:.1f} MB in"
        f" {report.out} (open {report.out / 'index.html'})"
    )
    for name in report.failed:
        print(f"moe-lab site: {name} stopped at {report.pages[name].error}", file=sys.stderr)
    return 1 if report.failed else 0
