# SPDX-License-Identifier: MIT
"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/v1/openapi.json``.

A test checks it against the OpenAPI 3.1 schema and compares its paths and
methods with the routes the server registers, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import fastmta


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {
    "400": _json(_ref("Error"), "bad JSON or a bad field (named in `field`)"),
    "401": _json(_ref("Error"), "no valid bearer token"),
}
_STR = {"type": "string"}
_SUBS = {"type": "object", "description": "values for {{ name }} placeholders (Jinja2 sandbox)"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": _STR,
            "field": {"type": "string", "description": "JSON path of the bad field"},
        },
    },
    "InjectRequest": {
        "type": "object",
        "required": ["envelope_sender", "recipients", "content"],
        "additionalProperties": False,
        "properties": {
            "envelope_sender": {"type": "string", "description": 'the envelope sender; "" for <>'},
            "recipients": {
                "type": "array",
                "minItems": 1,
                "maxItems": 10000,
                "items": {
                    "type": "object",
                    "required": ["email"],
                    "additionalProperties": False,
                    "properties": {"email": _STR, "name": _STR, "substitutions": _SUBS},
                },
            },
            "content": {
                "oneOf": [
                    {"type": "string", "description": "a whole RFC 5322 message (a template itself)"},
                    {
                        "type": "object",
                        "required": ["from"],
                        "additionalProperties": False,
                        "properties": {
                            "from": {
                                "oneOf": [
                                    _STR,
                                    {
                                        "type": "object",
                                        "required": ["email"],
                                        "properties": {"email": _STR, "name": _STR},
                                    },
                                ]
                            },
                            "subject": _STR,
                            "text_body": _STR,
                            "html_body": _STR,
                            "reply_to": _STR,
                            "headers": {"type": "object", "additionalProperties": _STR},
                            "attachments": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["file_name", "base64"],
                                    "properties": {"file_name": _STR, "content_type": _STR, "base64": _STR},
                                },
                            },
                        },
                    },
                ]
            },
            "substitutions": _SUBS,
            "tenant": {"type": "string", "description": "who the mail is sent for [the token's name]"},
            "pool": {"type": "string", "description": "a [[pool]] name [by sender domain, else the default]"},
        },
    },
    "InjectResult": {
        "type": "object",
        "required": ["success_count", "fail_count", "failed_recipients", "ids"],
        "properties": {
            "success_count": {"type": "integer"},
            "fail_count": {"type": "integer"},
            "failed_recipients": {"type": "array", "items": _STR},
            "errors": {"type": "array", "items": _STR},
            "ids": {"type": "array", "items": _STR, "description": "queue ids of the accepted messages"},
        },
    },
    "Queue": {
        "type": "object",
        "properties": {
            "messages": {"type": "integer"},
            "recipients": {"type": "integer"},
            "destinations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "domain": _STR,
                        "ready": {"type": "integer"},
                        "deferred": {"type": "integer"},
                        "bounce": {"type": "integer"},
                        "suspended_until": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
    "Message": {"type": "object", "description": "as `fastmta queue show --json` prints it"},
    "Suspension": {
        "type": "object",
        "required": ["domain"],
        "properties": {
            "domain": _STR,
            "duration": {"type": ["string", "number"], "description": '"30s", "5m", "2h", "5d" or seconds'},
            "reason": _STR,
            "until": _STR,
        },
    },
    "Suppressions": {
        "type": "object",
        "description": "address or addresses; tenant (absent = global); reason (POST)",
        "properties": {
            "address": _STR,
            "addresses": {"type": "array", "items": _STR, "maxItems": 10000},
            "tenant": _STR,
            "reason": _STR,
        },
    },
    "Bounce": {
        "type": "object",
        "description": "exactly one of domain, tenant, id",
        "properties": {"domain": _STR, "tenant": _STR, "id": _STR, "reason": _STR},
    },
}


def _op(
    summary: str, ok: dict[str, Any], body: str | None = None, more: dict[str, Any] | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_ERR, **(more or {})}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return op


def _param(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": _STR}]


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "fastmta HTTP API", "version": fastmta.__version__},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while serving, 503 while starting or stopping (no token needed)",
                "security": [],
                "responses": {"200": {"description": "serving"}, "503": {"description": "not serving"}},
            }
        },
        "/api/v1/inject": {
            "post": _op(
                "Queue one message per recipient; answered after the spool commit",
                _json(_ref("InjectResult"), "queued (see fail_count)"),
                "InjectRequest",
                more={
                    "413": _json(_ref("Error"), "body over [http] max_body_size"),
                    "503": _json(_ref("Error"), "spool full or down; see Retry-After"),
                },
            )
        },
        "/api/v1/queue": {
            "get": _op("Pending recipients per destination and state", _json(_ref("Queue"), "counts"))
        },
        "/api/v1/messages/{id}": {
            "get": {
                **_op(
                    "One queued message",
                    _json(_ref("Message"), "the message"),
                    more={"404": _json(_ref("Error"), "not queued")},
                ),
                "parameters": _param("id"),
            }
        },
        "/api/v1/suspend": {
            "get": _op("Suspensions in force", _json({"type": "object"}, "domain, until, reason of each")),
            "post": _op(
                "Suspend delivery to a domain for a duration (survives restarts)",
                _json(_ref("Suspension"), "suspended"),
                "Suspension",
            ),  # fmt: skip
        },
        "/api/v1/suspend/{domain}": {
            "delete": {
                **_op(
                    "Resume delivery to a domain",
                    _json({"type": "object"}, "resumed"),
                    more={"404": _json(_ref("Error"), "not suspended")},
                ),  # fmt: skip
                "parameters": _param("domain"),
            }
        },
        "/api/v1/bounce": {
            "post": _op(
                "Fail pending recipients now, with a DSN",
                _json({"type": "object"}, "messages changed"),
                "Bounce",
                more={"404": _json(_ref("Error"), "no such message")},
            )  # fmt: skip
        },
        "/api/v1/suppressions": {
            "get": {
                **_op(
                    "Suppression list entries, a page at a time",
                    _json({"type": "object"}, "suppressions and the next page's cursor (null: no more)"),
                ),
                "parameters": [
                    {"name": "tenant", "in": "query", "schema": _STR, "description": '"*" or absent: all'},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}},
                    {
                        "name": "after",
                        "in": "query",
                        "schema": _STR,
                        "description": "next from the previous page",
                    },
                ],
            },
            "post": _op(
                "Suppress addresses (globally or for a tenant)",
                _json({"type": "object"}, "added"),
                "Suppressions",
            ),
            "delete": _op(
                "Lift suppressions (a JSON body, or address and tenant in the query)",
                _json({"type": "object"}, "removed"),
                "Suppressions",
            ),
        },
        "/api/v1/openapi.json": {"get": _op("This document", _json({"type": "object"}, "OpenAPI 3.1"))},
    },
}
