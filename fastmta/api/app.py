# SPDX-License-Identifier: MIT
"""The HTTP API server (aiohttp on the server's own uvloop loop): routes, auth, limits, errors.

Every endpoint but ``/healthz`` needs ``Authorization: Bearer TOKEN`` (tokens.py);
without a valid one the answer is ``401`` before the body is read. Request bodies
past ``[http] max_body_size`` get ``413``, requests that take longer than
``request_timeout`` ``408``; bad JSON or a bad field ``400`` with
``{"error": "...", "field": "..."}``; no input yields a ``500``. An injection is
answered only after the spool committed its messages (as a ``250``), and with
``503`` and ``Retry-After`` while the spool refuses mail.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from fastmta import config as config_mod
from fastmta import metrics
from fastmta.api import admin, openapi, tokens
from fastmta.api.inject import BadRequest, RenderError, label_ok, parse
from fastmta.config import Config, SpoolConfig
from fastmta.errors import SmtpError, SpoolFullError
from fastmta.smtp.headers import date_field
from fastmta.spool import Envelope, Recipient, Spool, new_id
from fastmta.spool import suppression as supp
from fastmta.spool.admin import iso
from fastmta.spool.suppression import SuppressionList

log = logging.getLogger("fastmta.api")
LISTENER = "http"  # the listener name of injected mail (envelope, log lines)
RETRY_AFTER = "30"  # seconds, when the spool refuses mail
_YIELD_EVERY = 500  # recipients built between two turns of the loop
_ID = re.compile(r"[0-9A-Za-z]{1,64}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Context:
    """What the handlers use of the running server."""

    cfg: Config
    spool: Spool
    node_spool: SpoolConfig  # the whole node's spool (every worker's shard below it)
    tokens: tokens.Tokens
    healthy: Callable[[], bool]
    admin_changed: Callable[[], None]  # a suspension changed: apply it here at once
    suppression: SuppressionList


CTX = web.AppKey("ctx", Context)


def answer(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer (orjson: a 1,000-id injection answer is encoded in microseconds)."""
    body = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def error(status: int, message: str, field: str = "", headers: dict[str, str] | None = None) -> web.Response:
    return answer({"error": message, **({"field": field} if field else {})}, status, headers)


def _endpoint(request: web.Request) -> str:
    """The route's pattern (bounded: a metric label), or ``other``."""
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "other"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, the time limit and error mapping around every handler."""
    ctx = request.app[CTX]
    try:
        if request.path != "/healthz":
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            who = ctx.tokens.check(token.strip()) if scheme.lower() == "bearer" and token else None
            if who is None:
                resp: web.StreamResponse = error(
                    401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
                return resp
            request["token_name"] = who
        async with asyncio.timeout(ctx.cfg.http.request_timeout):
            resp = await handler(request)
    except BadRequest as e:
        resp = error(400, str(e), e.field)
    except TimeoutError:
        resp = error(408, f"request not completed within {ctx.cfg.http.request_timeout:g} s")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = error(e.status, e.reason)
    except Exception:
        log.exception("HTTP API: %s %s failed", request.method, _endpoint(request))
        resp = error(500, "internal error")
    _requests(_endpoint(request), resp.status).inc()
    return resp


@functools.lru_cache(maxsize=256)
def _requests(endpoint: str, status: int) -> Any:
    """The request counter's child (bounded: route patterns × status codes)."""
    return metrics.bound(metrics.http_requests_total, endpoint, str(status))


async def _json(request: web.Request) -> Any:
    body = await request.read()  # 413 past client_max_size
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:  # bad UTF-8, NaN, nesting past 1,024, integers past 64 bits too
        raise BadRequest("body", f"not valid JSON: {e}") from None


def _field_str(doc: dict[str, Any], key: str, required: bool = True) -> str:
    value = doc.get(key, None if required else "")
    if value is None:
        raise BadRequest(key, "required")
    if not isinstance(value, str):
        raise BadRequest(key, "expected a string")
    return value


def _domain(value: str, where: str) -> str:
    d = value.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?|\[[0-9a-f:.]+\]", d):
        raise BadRequest(where, f"bad domain {value[:100]!r}")
    return d


def _reason(doc: dict[str, Any]) -> str:
    reason = _field_str(doc, "reason", required=False)
    if len(reason) > 200 or any(c in reason for c in "\r\n\x00"):
        raise BadRequest("reason", "at most 200 characters on one line")
    return reason


# --- handlers ---------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    ok = request.app[CTX].healthy()
    return web.Response(text="ok\n" if ok else "unavailable\n", status=200 if ok else 503)


async def inject(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    cfg, spool = ctx.cfg, ctx.spool
    inj = parse(await _json(request), cfg.http.max_recipients)
    if inj.pool and inj.pool not in {p.name for p in cfg.pools}:
        raise BadRequest("pool", f"no [[pool]] named {inj.pool!r}")
    tenant = request["token_name"] if inj.tenant is None else inj.tenant
    if spool.unhealthy_reason() is not None:
        return error(
            503, "the spool is not taking mail now; retry later", headers={"Retry-After": RETRY_AFTER}
        )
    peer = request.remote or "unknown"
    hostname = cfg.hostname
    max_size = cfg.limits.max_message_size
    date = date_field()[6:].decode()
    utf8 = not inj.sender.isascii()
    failed: list[tuple[str, str]] = []
    pending: list[tuple[str, asyncio.Future[str]]] = []
    for i, rcpt in enumerate(inj.recipients):
        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)
        msg_id = new_id()
        try:
            data = inj.message(i, msg_id, hostname)
        except RenderError as e:
            failed.append((rcpt.email, str(e)))
            continue
        if len(data) > max_size:
            failed.append((rcpt.email, f"552 5.3.4 message size exceeds the limit of {max_size} octets"))
            continue
        params: dict[str, str] = {}
        if utf8 or not rcpt.email.isascii():
            params["SMTPUTF8"] = ""
        if inj.eight_bit and not data.isascii():
            params["BODY"] = "8BITMIME"
        head = (f"Received: from {peer} by {hostname} (fastmta HTTP API) with HTTP id {msg_id}\r\n"
                f"\tfor <{rcpt.email}>; {date}\r\n").encode("utf-8", "surrogateescape")  # fmt: skip
        env = Envelope(msg_id, inj.sender, [Recipient(rcpt.email)], client_ip=peer, listener=LISTENER,
                       params=params, pool=inj.pool, tenant=tenant)  # fmt: skip
        try:
            pending.append((rcpt.email, spool.put(env, data, head)))
        except SmtpError as e:  # the spool stopped meanwhile
            failed.append((rcpt.email, f"{e}"))
    results = await _settled([f for _, f in pending])
    ids: list[str] = []
    full = False
    for (addr, _), res in zip(pending, results, strict=True):
        if isinstance(res, BaseException):
            full = full or isinstance(res, SpoolFullError)
            failed.append(
                (addr, "452 4.3.1 insufficient system storage" if full else "451 4.3.0 spool error")
            )
        else:
            ids.append(res)
    if not ids and pending and len(failed) == len(inj.recipients):
        return error(
            503, "the spool did not take the messages; retry later", headers={"Retry-After": RETRY_AFTER}
        )
    return answer(
        {
            "success_count": len(ids),
            "fail_count": len(failed),
            "failed_recipients": [a for a, _ in failed],
            "errors": [f"{a}: {why}" for a, why in failed],
            "ids": ids,
        }
    )


async def _settled(futures: list[asyncio.Future[str]]) -> list[str | BaseException]:
    """Each future's result or exception, once all are done (a lone one without gather's wrapper)."""
    if len(futures) == 1:
        try:
            return [await futures[0]]
        except Exception as e:
            return [e]
    return await asyncio.gather(*futures, return_exceptions=True)


async def queue(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return answer(await asyncio.to_thread(admin.queue, ctx.node_spool, ctx.spool.store))


async def message(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    msg_id = request.match_info["id"]
    if not _ID.fullmatch(msg_id):
        raise BadRequest("id", "not a message id")
    doc = await asyncio.to_thread(admin.message, ctx.node_spool, ctx.spool.store, msg_id)
    if doc is None:
        return error(404, f"no message {msg_id} in the queue", "id")
    return answer(doc)


async def suspend(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _json(request)
    if not isinstance(doc, dict):
        raise BadRequest("body", "expected an object")
    domain = _domain(_field_str(doc, "domain"), "domain")
    if "duration" not in doc:
        raise BadRequest("duration", "required")
    try:
        duration = config_mod.parse_duration(doc["duration"])
    except ValueError as e:
        raise BadRequest("duration", str(e)) from None
    if not 0 < duration <= 365 * 86400:
        raise BadRequest("duration", "expected more than 0 and at most 365 days")
    reason = _reason(doc)
    until = time.time() + duration
    try:
        await asyncio.to_thread(admin.set_suspension, ctx.node_spool, ctx.spool.store, domain, until, reason)
    except ValueError as e:
        raise BadRequest("domain", str(e)) from None
    ctx.admin_changed()
    return answer({"domain": domain, "until": iso(until), "reason": reason})


async def suspensions(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    entries = await asyncio.to_thread(admin.suspensions, ctx.spool.store)
    return answer(
        {"suspensions": [{"domain": d, "until": iso(u), "reason": r} for d, (u, r) in entries.items()]}
    )


async def unsuspend(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    domain = _domain(request.match_info["domain"], "domain")
    found = await asyncio.to_thread(admin.lift_suspension, ctx.node_spool, ctx.spool.store, domain)
    ctx.admin_changed()
    if not found:
        return error(404, f"{domain} is not suspended", "domain")
    return answer({"domain": domain, "lifted": True})


async def bounce(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _json(request)
    if not isinstance(doc, dict):
        raise BadRequest("body", "expected an object")
    given = [k for k in ("domain", "tenant", "id") if k in doc]
    if len(given) != 1:
        raise BadRequest("domain", 'expected exactly one of "domain", "tenant" or "id"')
    reason = _reason(doc)
    if given[0] == "tenant":
        tenant = _field_str(doc, "tenant")
        if not label_ok(tenant):
            raise BadRequest("tenant", "not a tenant name")
        n = await asyncio.to_thread(
            admin.bounce, ctx.node_spool, ctx.spool.store, tenant=tenant, reason=reason
        )
    elif given[0] == "id":
        msg_id = _field_str(doc, "id")
        if not _ID.fullmatch(msg_id):
            raise BadRequest("id", "not a message id")
        n = await asyncio.to_thread(
            admin.bounce, ctx.node_spool, ctx.spool.store, msg_id=msg_id, reason=reason
        )
        if n == 0:
            return error(404, f"no message {msg_id} with pending recipients", "id")
    else:
        domain = _domain(_field_str(doc, "domain"), "domain")
        n = await asyncio.to_thread(
            admin.bounce, ctx.node_spool, ctx.spool.store, domain=domain, reason=reason
        )
    return answer({"messages": n})


MAX_LIST = 10_000  # suppression entries per GET page
MAX_ADDRESSES = 10_000  # addresses per POST or DELETE


def _tenant_arg(value: Any, where: str = "tenant") -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not label_ok(value):
        raise BadRequest(where, "not a tenant name")
    return value


def _addresses(doc: dict[str, Any]) -> list[str]:
    raw = doc.get("addresses", [doc["address"]] if "address" in doc else None)
    if not isinstance(raw, list) or not raw:
        raise BadRequest("addresses", 'expected "address" or a non-empty list "addresses"')
    if len(raw) > MAX_ADDRESSES:
        raise BadRequest("addresses", f"more than {MAX_ADDRESSES} addresses")
    out = []
    for i, a in enumerate(raw):
        if not isinstance(a, str) or "@" not in a or len(a) > 1000 or any(c in a for c in "\r\n\x00 "):
            raise BadRequest(f"addresses[{i}]", "not an address")
        out.append(a)
    return out


async def suppressions_list(request: web.Request) -> web.Response:
    """Entries (of one ``tenant``, "*" or none = all), ``limit`` at a time after ``after``."""
    lst = request.app[CTX].suppression
    q = request.query
    tenant = q.get("tenant")
    tenant = None if tenant in (None, "*") else _tenant_arg(tenant)
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise BadRequest("limit", "expected an integer") from None
    if not 1 <= limit <= MAX_LIST:
        raise BadRequest("limit", f"expected 1 to {MAX_LIST}")
    try:
        after = base64.b64decode(q.get("after", ""), altchars=b"-_", validate=True)
    except (ValueError, TypeError):
        raise BadRequest("after", "not a cursor from a previous page") from None

    def page() -> list[supp.Entry]:
        out = []
        for e in supp.entries(lst.store, lst.db, tenant):
            if after and supp.key(e.address, e.tenant) <= after:
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return out

    entries = await asyncio.to_thread(page)
    docs = [{"address": e.address, "tenant": e.tenant or None, "reason": e.reason, "added": iso(e.time)}
            for e in entries]  # fmt: skip
    last = entries[-1] if len(entries) >= limit else None
    cursor = base64.urlsafe_b64encode(supp.key(last.address, last.tenant)).decode() if last else None
    return answer({"suppressions": docs, "next": cursor})


async def suppressions_add(request: web.Request) -> web.Response:
    lst = request.app[CTX].suppression
    doc = await _json(request)
    if not isinstance(doc, dict):
        raise BadRequest("body", "expected an object")
    addrs = _addresses(doc)
    tenant = _tenant_arg(doc.get("tenant"))
    reason = _reason(doc) or "added through the HTTP API"
    n = await lst.add_soon([supp.Entry(a, tenant, reason) for a in addrs])
    return answer({"added": n})


async def suppressions_remove(request: web.Request) -> web.Response:
    lst = request.app[CTX].suppression
    if request.can_read_body:
        doc = await _json(request)
        if not isinstance(doc, dict):
            raise BadRequest("body", "expected an object")
    else:
        doc = dict(request.query)
    addrs = _addresses(doc)
    tenant = _tenant_arg(doc.get("tenant"))
    n = await lst.remove_soon(addrs, tenant)
    return answer({"removed": n})


async def openapi_doc(request: web.Request) -> web.Response:
    return answer(openapi.DOCUMENT)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", healthz),
    ("POST", "/api/v1/inject", inject),
    ("GET", "/api/v1/queue", queue),
    ("GET", "/api/v1/messages/{id}", message),
    ("GET", "/api/v1/suspend", suspensions),
    ("POST", "/api/v1/suspend", suspend),
    ("DELETE", "/api/v1/suspend/{domain}", unsuspend),
    ("POST", "/api/v1/bounce", bounce),
    ("GET", "/api/v1/suppressions", suppressions_list),
    ("POST", "/api/v1/suppressions", suppressions_add),
    ("DELETE", "/api/v1/suppressions", suppressions_remove),
    ("GET", "/api/v1/openapi.json", openapi_doc),
]


def build(ctx: Context) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=ctx.cfg.http.max_body_size)
    app[CTX] = ctx
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def load_tokens(cfg: Config) -> tokens.Tokens:
    """The tokens file's entries (none without one: every request is then refused)."""
    return tokens.Tokens(tokens.load(cfg.http.tokens_file) if cfg.http.tokens_file else [])


async def start(ctx: Context, reuse_port: bool) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve the API on ``[http] address``; the runner (``cleanup()`` at shutdown) and the bound address."""
    address = ctx.cfg.http.address
    assert address is not None
    runner = web.AppRunner(build(ctx), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address[0], address[1], reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[:2] if sockets else address
    return runner, (bound[0], bound[1])
