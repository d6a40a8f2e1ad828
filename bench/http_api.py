# SPDX-License-Identifier: MIT
"""HTTP API benchmark: injection over HTTP against SMTP, and webhooks while relaying.

    .venv/bin/python bench/http_api.py [--quick] [--count N] [--json OUT] [--root TREE]

Injection (delivery held, so nothing competes with it), in one run against one
server: ``smtp-source`` with reused connections (50, 4 KiB messages), first and
last; the API with one recipient per request (``ab``, 50 keep-alive connections,
a 4 KiB raw message with a substitution); the API with 1,000 recipients per request (4 requests in flight,
a composed 4 KiB text part with per-recipient substitutions). Reports msg/s and
the server's CPU per message. Targets: 1,000 per request ≥ 2× SMTP, 1 per
request ≥ 50 % of SMTP.

Webhooks: the same relay (``smtp-source`` → fastmta → ``smtp-sink``) without and
with a ``[[webhook]]`` for ``delivered`` events to a local receiver; reports the
relay rate of both (the journal's cost), the events' rate over the same run and
how long after the last delivery the last event arrived (at most about
``max_delay``, 200 ms here, by design: a short batch waits that long for more).
A third run keeps the receiver down (503) during the relay, then lets it answer:
the rate at which the backlog drains is what the webhook can carry. It keeps up
when that is above the relay rate.

The injection rows use ``ab`` (C) for one recipient per request, as the SMTP rows
use ``smtp-source`` (C); the same load from a Python aiohttp client is reported
beside it (that client shares the two cores and costs as much CPU as the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's directory comes first on sys.path and its name would
# shadow the standard library's ``http`` package (aiohttp imports it): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession, TCPConnector, web  # noqa: E402

from bench import drivers, peers, report  # noqa: E402
from fastmta.api import tokens  # noqa: E402

SIZE = 4096
CONNECTIONS = 50
BATCH = 1000
TEXT = ("Hello {{ name }}, " + "x" * 70 + "\n") * (SIZE // 88)
RAW = "From: bench@src.test\r\nSubject: hi {{ name }}\r\n\r\n" + TEXT


def _server(tokens_file: Path, root: Path | None) -> tuple[peers.Fastmta, int]:
    """A held fastmta with the API on a free port."""
    port = peers.free_port()
    mta = peers.Fastmta(hold=True, root=root, extra_config=f'[http]\naddress = "{peers.HOST}:{port}"\n'
                                                f'tokens_file = "{tokens_file}"\n')  # fmt: skip
    mta.start()  # the API is bound before the SMTP banner is sent
    return mta, port


async def _inject(port: int, token: str, count: int, per_request: int, in_flight: int) -> tuple[int, float]:
    """``count`` messages in requests of ``per_request`` recipients, ``in_flight`` at once; (ok, seconds)."""
    url = f"http://{peers.HOST}:{port}/api/v1/inject"
    headers = {"Authorization": f"Bearer {token}"}
    if per_request == 1:
        docs = [{"envelope_sender": "bench@src.test", "content": RAW,
                 "recipients": [{"email": "sink@dst.test", "substitutions": {"name": f"n{i}"}}]}
                for i in range(count)]  # fmt: skip
    else:
        content = {"from": "bench@src.test", "subject": "hi {{ name }}", "text_body": TEXT}
        docs = [{"envelope_sender": "bench@src.test", "content": content,
                 "recipients": [{"email": f"r{j}@dst.test", "substitutions": {"name": f"n{j}"}}
                                for j in range(i, min(count, i + per_request))]}
                for i in range(0, count, per_request)]  # fmt: skip
    ok = 0
    queue = iter(docs)

    async def worker(session: ClientSession) -> None:
        nonlocal ok
        for doc in queue:
            async with session.post(url, json=doc, headers=headers) as resp:
                if resp.status == 200:
                    ok += (await resp.json())["success_count"]

    async with ClientSession(connector=TCPConnector(limit=in_flight)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
        return ok, time.perf_counter() - start


def injection(count: int, log: Any, root: Path | None = None) -> dict[str, Any]:
    token, line = tokens.new("bench")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens"
        path.write_text(line + "\n")
        path.chmod(0o600)
        body = Path(tmp) / "one.json"
        rcpt = {"email": "sink@dst.test", "substitutions": {"name": "n1"}}
        body.write_text(
            json.dumps({"envelope_sender": "bench@src.test", "content": RAW, "recipients": [rcpt]})
        )
        return _injection(count, log, *_server(path, root), token, str(body))


def _injection(count: int, log: Any, mta: peers.Fastmta, port: int, token: str, body: str) -> dict[str, Any]:
    """SMTP first and last (the machine's load drifts; the HTTP rows are compared with the
    mean of the two), HTTP in between."""
    out: dict[str, Any] = {}
    url = f"http://{peers.HOST}:{port}/api/v1/inject"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        for name, run in (
            ("smtp_reused", lambda: _smtp(mta, count)),
            ("http_1_per_request", lambda: _ab(url, body, count, auth)),
            ("http_1000_per_request", lambda: asyncio.run(_inject(port, token, count, BATCH, 4))),
            ("http_1_per_request_python_client", lambda: _python_client(port, token, count)),
            ("smtp_reused_again", lambda: _smtp(mta, count)),
        ):  # fmt: skip
            cpu0 = mta.cpu()
            ok, secs = run()
            cpu = mta.cpu() - cpu0
            per_msg = round(cpu / max(1, ok) * 1e6, 1)
            out[name] = {"ok": ok, "rate": round(ok / secs, 1), "server_cpu_us_per_msg": per_msg}
            log(f"inject {name}: {ok} in {secs:.2f} s = {ok / secs:.0f} msg/s, {per_msg} us server CPU/msg")
    finally:
        mta.stop()
    smtp = (out["smtp_reused"]["rate"] + out["smtp_reused_again"]["rate"]) / 2 or 1.0
    out["smtp_mean_rate"] = round(smtp, 1)
    out["ratio_1000_vs_smtp"] = round(out["http_1000_per_request"]["rate"] / smtp, 2)
    out["ratio_1_vs_smtp"] = round(out["http_1_per_request"]["rate"] / smtp, 2)
    out["ratio_1_python_client_vs_smtp"] = round(out["http_1_per_request_python_client"]["rate"] / smtp, 2)
    return out


def _python_client(port: int, token: str, count: int) -> tuple[int, float]:
    return asyncio.run(_inject(port, token, count, 1, CONNECTIONS))


def _ab(url: str, body: str, count: int, headers: dict[str, str]) -> tuple[int, float]:
    res = drivers.http_post(url, body, count, CONNECTIONS, headers, 600)
    return res.ok, res.elapsed


def _smtp(mta: peers.Fastmta, count: int) -> tuple[int, float]:
    res = drivers.smtp_source(mta.address, count, CONNECTIONS, True, SIZE, 600)
    return res.ok, res.elapsed


class Receiver:
    """A webhook receiver on its own thread: counts the events it acknowledges; while
    ``failing`` it answers 503 to every POST (a receiver that is down)."""

    def __init__(self) -> None:
        self.port = peers.free_port()
        self.events = 0
        self.first_at = self.last_at = 0.0
        self.first_events = 0  # events in the first acknowledged POST
        self.failing = False
        ready = threading.Event()

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            if self.failing:
                return web.Response(status=503, text="down")
            n = body.count(b'"event":')
            if not self.events:
                self.first_at, self.first_events = time.perf_counter(), n
            self.events += n
            self.last_at = time.perf_counter()
            return web.Response(text="ok")

        def run() -> None:
            loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/events", handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, peers.HOST, self.port).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def reset(self, failing: bool) -> None:
        self.events, self.first_at, self.last_at, self.failing = 0, 0.0, 0.0, failing

    def wait(self, n: int, timeout: float = 120) -> None:
        deadline = time.perf_counter() + timeout
        while self.events < n and time.perf_counter() < deadline:
            time.sleep(0.02)


def webhooks(count: int, log: Any, root: Path | None = None) -> dict[str, Any]:
    """The relay without a webhook, with one that keeps up live, and with one that is down
    during the relay and then drains the backlog (its rate is the webhook's capacity)."""
    sink = peers.SmtpSink().start()
    recv = Receiver()
    hook = (f'[[webhook]]\nname = "bench"\nurl = "http://{peers.HOST}:{recv.port}/events"\n'
            f'events = ["delivered"]\nbatch_size = 500\nmax_delay = "200ms"\n')  # fmt: skip
    out: dict[str, Any] = {}
    try:
        for name, extra in (
            ("relay_without_webhook", ""),
            ("relay_with_webhook", hook),
            ("webhook_drain", hook),
        ):
            mta = peers.Fastmta(hold=False, relay_to=sink.address, extra_config=extra, root=root).start()
            try:
                recv.reset(failing=name == "webhook_drain")
                _, before = sink.counts()
                cpu0 = mta.cpu()
                start = time.perf_counter()
                res = drivers.smtp_source(mta.address, count, CONNECTIONS, True, SIZE, 600)
                sink.wait_messages(before + res.ok, 600, stall=20)
                delivered_at = sink.last_message_at
                row: dict[str, Any] = {"relay_rate": round(res.ok / (delivered_at - start), 1)}
                if name == "relay_with_webhook":
                    recv.wait(res.ok)
                    row["events"] = recv.events
                    row["last_event_after_last_delivery_s"] = round(recv.last_at - delivered_at, 2)
                    row["event_rate"] = round(recv.events / (recv.last_at - start), 1)
                elif name == "webhook_drain":
                    recv.failing = False
                    recv.wait(res.ok)
                    row["events"] = recv.events
                    span = recv.last_at - recv.first_at
                    row["drain_rate"] = (
                        round((recv.events - recv.first_events) / span, 1) if span > 0 else None
                    )
                row["server_cpu_us_per_msg"] = round((mta.cpu() - cpu0) / max(1, res.ok) * 1e6, 1)
                out[name] = row
                log(f"{name}: {row}")
            finally:
                mta.stop()
    finally:
        sink.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5,000 messages per run [20,000]")
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    ap.add_argument("--root", type=Path, help="serve from another checkout (its .venv): an A/B baseline")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    count = args.count or (5000 if args.quick else 20000)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = {
        "count": count,
        "root": str(args.root or ROOT),
        "injection": injection(count, log, args.root),
        "webhooks": webhooks(count, log, args.root),
    }
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
