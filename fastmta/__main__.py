# SPDX-License-Identifier: MIT
"""``python -m fastmta``: the ``fastmta`` command, for when the script is not on PATH."""

import sys

from fastmta.cli import main

sys.exit(main())
