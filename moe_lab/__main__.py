"""``python -m moe_lab``: the same command line as ``moe-lab`` (see ``moe_lab.cli``)."""

import sys

from moe_lab.cli import main

sys.exit(main())
