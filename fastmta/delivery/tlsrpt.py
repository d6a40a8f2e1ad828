# SPDX-License-Identifier: MIT
"""TLS-RPT (RFC 8460): per policy domain and day, what our TLS sessions met; one report a day.

``record()`` counts one session (success, or a failure with its RFC 8460 §4.3
result type) under the policy it was made with. Counters are saved through
``tlsstate`` (a restart keeps the day). Once a period (a UTC day unless the
caller says otherwise) has ended, ``send_due()`` looks up ``_smtp._tls.<domain>``
and sends the JSON report, gzipped, to every ``rua``: ``mailto:`` as a
``multipart/report; report-type=tlsrpt`` message put into our own queue (like a
DSN), ``https:`` as a POST of ``application/tlsrpt+gzip``. The clock and the
period are parameters, so a test can end a day at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, Protocol

from fastmta import metrics
from fastmta.delivery.dns import DnsFailure, Resolver
from fastmta.delivery.https import HttpError
from fastmta.delivery.mtasts import txt_text
from fastmta.delivery.tlsstate import StateFile
from fastmta.spool.records import Envelope, Recipient

log = logging.getLogger("fastmta.delivery")

DAY = 86400.0
MAX_DOMAINS = 50_000  # per period: counters for more policy domains are not kept
MAX_FAILURE_KEYS = 100  # distinct failure details per domain and period
KEEP_PERIODS = 3  # a period whose report could not be sent is dropped after this many


class Poster(Protocol):
    async def post(self, url: str, body: bytes, content_type: str) -> None: ...


Inject = Callable[[str, bytes], Awaitable[object]]  # (recipient, message) → queued


def queue_into(put: Callable[[Envelope, bytes], Awaitable[object]], new_id: Callable[[], str],
               clock: Callable[[], float] = time.time) -> Inject:  # fmt: skip
    """Report mails go into the spool as DSNs do: null sender (no bounce loops), due now."""

    async def inject(rcpt: str, message: bytes) -> object:
        now = clock()
        env = Envelope(new_id(), "", [Recipient(rcpt)], arrived=now, size=len(message),
                       next_attempt=now, listener="tls-rpt")  # fmt: skip
        return await put(env, message)

    return inject


def parse_rua(records: tuple[str, ...]) -> list[str]:
    """The ``rua`` URIs of the ``_smtp._tls`` TXT record (RFC 8460 §3); [] if none is valid."""
    found = []
    for rec in records:
        fields = [f.strip() for f in txt_text(rec).split(";")]
        if fields and fields[0] == "v=TLSRPTv1":
            found.append(fields)
    if len(found) != 1:
        return []
    for f in found[0][1:]:
        key, _, value = f.partition("=")
        if key.strip() == "rua":
            uris = [u.strip() for u in value.split(",")]
            return [u for u in uris if u.startswith(("mailto:", "https:"))]
    return []


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def build_report(domain: str, entries: dict[str, Any], start: float, end: float, submitter: str,
                 contact: str, report_id: str) -> dict[str, Any]:  # fmt: skip
    """The RFC 8460 §4.4 JSON object for one policy domain and period."""
    policies = []
    for ptype, e in sorted(entries.items()):
        policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
        if e["strings"]:
            policy["policy-string"] = list(e["strings"])
        if e["mx"]:
            policy["mx-host"] = list(e["mx"])
        failures = []
        for key, n in sorted(e["fail"].items()):
            result, mx, ip = key.split("|")
            detail: dict[str, Any] = {"result-type": result, "failed-session-count": n}
            if mx:
                detail["receiving-mx-hostname"] = mx
            if ip:
                detail["receiving-ip"] = ip
            failures.append(detail)
        item: dict[str, Any] = {
            "policy": policy,
            "summary": {
                "total-successful-session-count": e["ok"],
                "total-failure-session-count": sum(e["fail"].values()),
            },
        }
        if failures:
            item["failure-details"] = failures
        policies.append(item)
    return {
        "organization-name": submitter,
        "date-range": {"start-datetime": _iso(start), "end-datetime": _iso(end - 1)},
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    }


def filename(submitter: str, domain: str, start: float, end: float, unique: str) -> str:
    """RFC 8460 §5.1: ``sender!policy-domain!begin!end!unique.json.gz`` (UNIX seconds)."""
    return f"{submitter}!{domain}!{int(start)}!{int(end)}!{unique}.json.gz"


def build_message(report: dict[str, Any], gz: bytes, name: str, domain: str, submitter: str,
                  sender: str, rcpt: str, now: float) -> bytes:  # fmt: skip
    """The RFC 8460 §5.3 report mail: a text part and the gzipped JSON, base64."""
    boundary = f"tlsrpt-{uuid.uuid4().hex}"
    b64 = base64.encodebytes(gz).decode("ascii").replace("\n", "\r\n")
    rid = report["report-id"]
    lines = [
        f"From: {sender}",
        f"To: <{rcpt}>",
        f"Date: {formatdate(now)}",
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{rid}>",
        f"Message-ID: <{rid}>",
        f"TLS-Report-Domain: {domain}",
        f"TLS-Report-Submitter: {submitter}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"',
        "",
        "This is a multipart message in MIME format.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="us-ascii"',
        "",
        f"This is an aggregate TLS report from {submitter} for {domain}.",
        "",
        f"--{boundary}",
        "Content-Type: application/tlsrpt+gzip",
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="{name}"',
        "",
        b64.rstrip("\r\n"),
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


class TlsReports:
    """The counters, their state file, and the daily sending."""

    def __init__(self, resolver: Resolver, submitter: str, sender: str, inject: Inject | None,
                 poster: Poster | None, state: StateFile | None = None,
                 clock: Callable[[], float] = time.time, period: float = DAY) -> None:  # fmt: skip
        self.resolver = resolver
        self.submitter = submitter
        self.sender = sender  # From: of report mails
        self.inject = inject
        self.poster = poster
        self.clock = clock
        self.period = period
        self._state = state
        self._task: asyncio.Task[None] | None = None
        # period index (str) → domain → policy type → {"strings", "mx", "ok", "fail"}
        self.periods: dict[str, dict[str, dict[str, Any]]] = {}
        if state is not None:
            data = state.load().get("periods", {})
            if isinstance(data, dict):
                self.periods = data

    def record(self, domain: str, ptype: str, strings: tuple[str, ...], mx: tuple[str, ...],
               result: str | None, mx_host: str, ip: str) -> None:  # fmt: skip
        """One session (``result`` None = success) under ``domain``'s policy of type ``ptype``."""
        key = str(int(self.clock() // self.period))
        domains = self.periods.setdefault(key, {})
        if domain not in domains and len(domains) >= MAX_DOMAINS:
            return
        e = domains.setdefault(domain, {}).setdefault(ptype, {"strings": [], "mx": [], "ok": 0, "fail": {}})
        if strings:
            e["strings"], e["mx"] = list(strings), list(mx)
        if result is None:
            e["ok"] += 1
        else:
            fk = f"{result}|{mx_host}|{ip}"
            if fk in e["fail"] or len(e["fail"]) < MAX_FAILURE_KEYS:
                e["fail"][fk] = e["fail"].get(fk, 0) + 1
        self._changed()

    def _changed(self) -> None:
        if self._state is not None:
            self._state.save_soon(lambda: {"periods": self.periods})

    # --- sending ------------------------------------------------------------------------------
    def start(self, interval: float = 300.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(min(interval, self.period / 4))
            try:
                await self.send_due()
            except Exception:
                log.exception("TLS-RPT reports failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._state is not None:
            await self._state.flush()

    async def send_due(self) -> int:
        """Send the reports of every period that has ended; the number of reports sent."""
        now_key = int(self.clock() // self.period)
        sent = 0
        for key in sorted(k for k in self.periods if int(k) < now_key):
            domains = self.periods[key]
            for domain in list(domains):
                done = await self._send(domain, domains[domain], int(key))
                if done is None and now_key - int(key) < KEEP_PERIODS:
                    continue  # DNS said "try later": keep it for the next round
                sent += done or 0
                del domains[domain]
            if not domains:
                del self.periods[key]
        self._changed()
        return sent

    async def _send(self, domain: str, entries: dict[str, Any], index: int) -> int | None:
        """Report one domain's period to each of its rua URIs; None when DNS failed for now."""
        try:
            rua = parse_rua(await self.resolver.lookup(f"_smtp._tls.{domain}", "TXT"))
        except DnsFailure as e:
            return None if e.temporary else 0
        if not rua:
            return 0
        start = index * self.period
        end = start + self.period
        unique = uuid.uuid4().hex[:16]
        rid = f"{int(start)}.{unique}@{self.submitter}"
        report = build_report(domain, entries, start, end, self.submitter,
                              f"postmaster@{self.submitter}", rid)  # fmt: skip
        gz = gzip.compress(json.dumps(report).encode(), mtime=int(end))
        name = filename(self.submitter, domain, start, end, unique)
        sent = 0
        for uri in rua:
            method = "mailto" if uri.startswith("mailto:") else "https"
            try:
                if method == "mailto" and self.inject is not None:
                    rcpt = uri[len("mailto:") :].split("?", 1)[0]
                    msg = build_message(report, gz, name, domain, self.submitter, self.sender, rcpt,
                                        self.clock())  # fmt: skip
                    await self.inject(rcpt, msg)
                elif method == "https" and self.poster is not None:
                    await self.poster.post(uri, gz, "application/tlsrpt+gzip")
                else:
                    continue
            except (HttpError, OSError, RuntimeError) as e:
                metrics.bound(metrics.tls_rpt_reports_total, method, "failed").inc()
                log.warning("TLS-RPT report for %s to %s failed: %s", domain, uri, e)
                continue
            metrics.bound(metrics.tls_rpt_reports_total, method, "sent").inc()
            sent += 1
        return sent
