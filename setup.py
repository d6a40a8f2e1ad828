# SPDX-License-Identifier: MIT
"""Only the extension list: the Cython SMTP parser and protocol core. FASTMTA_DEBUG=1 builds with line tracing."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTMTA_DEBUG") == "1"
macros = [("CYTHON_TRACE", "1")] if debug else []
extensions = [
    Extension(
        name,
        [source],
        define_macros=macros,
        extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
    )
    for name, source in (
        ("fastmta._parser", "fastmta/_parser.pyx"),
        ("fastmta.smtp._core", "fastmta/smtp/_core.pyx"),
    )
]
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "linetrace": debug},
        annotate=debug,
    )
)
