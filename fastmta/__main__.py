# SPDX-License-Identifier: MIT
import sys

from fastmta.cli import main

sys.exit(main())
