"""``python -m moe_lab.bench {layer,train,analysis} [options]``: benchmarks with side-by-side ratios.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> dict`` and writes a
JSON result with the machine description under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "layer": "moe_lab.bench.layer",
    "train": "moe_lab.bench.train",
    "analysis": "moe_lab.bench.analysis",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.bench", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").splitlines()[0]))
    args = parser.parse_args(argv)
    modules[args.benchmark].run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
