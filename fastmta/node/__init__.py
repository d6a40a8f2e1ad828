# SPDX-License-Identifier: MIT
"""What runs a node: the composition root, the worker processes and their supervisor."""
