# SPDX-License-Identifier: MIT
"""Only the extension list: the Cython SMTP parser. FASTMTA_DEBUG=1 builds with line tracing."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTMTA_DEBUG") == "1"
macros = [("CYTHON_TRACE", "1")] if debug else []
extensions = [
    Extension(
        "fastmta._parser",
        ["fastmta/_parser.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"] if not debug else ["-O0", "-g"],
    )
]
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "linetrace": debug},
        annotate=debug,
    )
)
