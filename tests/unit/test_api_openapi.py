# SPDX-License-Identifier: MIT
"""The API's OpenAPI document is valid OpenAPI 3.1 and describes exactly the routes served."""

from __future__ import annotations

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from fastmta.api import openapi
from fastmta.api.app import ROUTES


def test_document_is_valid_openapi_3_1() -> None:
    assert openapi.DOCUMENT["openapi"].startswith("3.1")
    validate(openapi.DOCUMENT, cls=OpenAPIV31SpecValidator)


def test_document_covers_every_route_and_nothing_else() -> None:
    served = {(path, method.lower()) for method, path, _ in ROUTES}
    described = {(path, method) for path, ops in openapi.DOCUMENT["paths"].items() for method in ops}
    assert served == described
