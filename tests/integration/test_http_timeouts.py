# SPDX-License-Identifier: MIT
"""``[http] request_timeout`` against a real ``fastmta serve``: a client that sends the
headers and then stalls the body gets ``408``, nothing of its request is queued, and the
API keeps serving everyone else meanwhile and afterwards.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.http import ApiServer, start_api_server

INJECT = "/api/v1/inject"
TIMEOUT = 1.0
DOC = {"envelope_sender": "a@src.test", "recipients": [{"email": "b@a.test"}],
       "content": "From: a@src.test\r\nSubject: t\r\n\r\nhi\r\n"}  # fmt: skip


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    s = start_api_server(tmp_path_factory.mktemp("api"), http=f'request_timeout = "{TIMEOUT:g}s"\n')
    yield s
    s.srv.proc.stop()


def _stalled(srv: ApiServer, body: bytes, declared: int) -> tuple[socket.socket, float]:
    """A request whose headers promise ``declared`` body bytes, of which only ``body`` is sent."""
    sock = socket.create_connection(("127.0.0.1", srv.srv.ports["http"]), timeout=30)
    head = (f"POST {INJECT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + body)
    return sock, time.monotonic()


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body[: _length(raw)])


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize("sent", [0, 20], ids=["no-body", "part-of-the-body"])
def test_a_stalled_body_gets_408_and_queues_nothing(srv: ApiServer, sent: int) -> None:
    body = json.dumps(DOC).encode()
    before = len(srv.srv.bodies())
    sock, t0 = _stalled(srv, body[:sent], len(body))
    with sock:
        status, doc = _answer(sock)
        took = time.monotonic() - t0
    assert status == 408, doc
    assert "request not completed within 1 s" in str(doc["error"])
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 10
    assert len(srv.srv.bodies()) == before


def test_the_api_serves_others_while_one_client_stalls_and_after(srv: ApiServer) -> None:
    body = json.dumps(DOC).encode()
    sock, _ = _stalled(srv, body[:5], len(body))
    with sock:
        status, doc, _ = srv.api.call("POST", INJECT, DOC)  # while the other one stalls
        assert status == 200 and doc["success_count"] == 1, doc
        assert _answer(sock)[0] == 408
    status, doc, _ = srv.api.call("POST", INJECT, DOC)
    assert status == 200 and doc["success_count"] == 1, doc


def test_a_body_sent_just_inside_the_limit_is_served(srv: ApiServer) -> None:
    body = json.dumps(DOC).encode()
    sock, _ = _stalled(srv, body[:10], len(body))
    with sock:
        time.sleep(TIMEOUT * 0.5)
        sock.sendall(body[10:])
        status, doc = _answer(sock)
    assert status == 200 and doc["success_count"] == 1, doc
