# SPDX-License-Identifier: MIT
"""The HTTP API against a real ``fastmta serve``: urllib and curl, tokens, injection, limits.

Delivery is held (the test config's default), so what the API queued stays in the
spool and is read back from it.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.api import tokens
from fastmta.api.app import ROUTES
from tests.fixtures.http import ApiServer, start_api_server
from tests.support import require_tool, run_fastmta

INJECT = "/api/v1/inject"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    s = start_api_server(
        tmp_path_factory.mktemp("api"), http="max_body_size = 200000\nmax_recipients = 10000\n"
    )
    yield s
    s.srv.proc.stop()


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "envelope_sender": "news@src.test",
        "recipients": [{"email": "bob@a.test", "substitutions": {"name": "Bob"}}],
        "content": "From: news@src.test\r\nSubject: hi {{ name }}\r\n\r\nHello {{ name }}\r\n",
    }
    doc.update(over)
    return doc


def test_every_endpoint_but_healthz_needs_a_valid_token(srv: ApiServer) -> None:
    api = srv.api
    assert api.call("GET", "/healthz", token="")[0] == 200
    for method, path, _ in ROUTES:
        if path == "/healthz":
            continue
        path = path.replace("{id}", "X").replace("{domain}", "a.test")
        for token in ("", "wrong", srv.token + "x", srv.token[:-1]):
            status, doc, headers = api.call(method, path, {} if method == "POST" else None, token=token)
            assert status == 401, (method, path, token, doc)
            assert headers.get("WWW-Authenticate") == "Bearer"
    assert srv.token not in srv.srv.proc.stderr()


def test_token_command_prints_a_token_and_its_line(tmp_path: Path) -> None:
    out = run_fastmta("http", "token", "shop")
    assert out.returncode == 0, out.stderr
    token, line = out.stdout.decode().split()
    assert tokens.check(tokens.parse(line), token) == "shop"
    path = tmp_path / "t"
    out = run_fastmta("http", "token", "crm", "--append", str(path))
    assert out.returncode == 0 and path.stat().st_mode & 0o777 == 0o600
    assert tokens.check(tokens.load(str(path)), out.stdout.decode().strip()) == "crm"
    assert run_fastmta("http", "token", "bad name").returncode == 64


def test_inject_raw_content_answers_after_the_commit_with_ids(srv: ApiServer) -> None:
    rcpts = [{"email": f"u{i}@a.test", "substitutions": {"name": f"User {i}"}} for i in range(3)]
    status, doc, _ = srv.api.call("POST", INJECT, _doc(recipients=rcpts))
    assert status == 200, doc
    assert doc["success_count"] == 3 and doc["fail_count"] == 0 and doc["failed_recipients"] == []
    bodies = srv.srv.bodies()
    for i, msg_id in enumerate(doc["ids"]):
        data = bodies[msg_id]  # committed before the answer
        assert data.startswith(
            b"Received: from 127.0.0.1 by mx.fastmta.test (fastmta HTTP API) with HTTP id "
        )
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert msg["Subject"] == f"hi User {i}" and msg["Message-ID"] == f"<{msg_id}@mx.fastmta.test>"
        assert msg["Date"] and msg.get_content().replace("\r\n", "\n") == f"Hello User {i}\n"
        env = srv.srv.envelope(msg_id)
        assert env.sender == "news@src.test" and [r.addr for r in env.rcpts] == [f"u{i}@a.test"]
        assert env.listener == "http"


def test_inject_parts_composes_mime_with_escaped_html_and_attachments(srv: ApiServer) -> None:
    blob = bytes(range(256)) * 10
    content = {
        "from": {"email": "news@src.test", "name": "Nëws"},
        "subject": "Ünïcode {{ name }}",
        "text_body": "Hi {{ name }}, {{ n * 2 }}\n",
        "html_body": "<p>Hi {{ name }}</p>",
        "headers": {"X-Campaign": "c-{{ name }}", "List-Unsubscribe": "<mailto:u@src.test>"},
        "attachments": [{"file_name": "a.bin", "content_type": "application/octet-stream",
                         "base64": base64.b64encode(blob).decode()}],
    }  # fmt: skip
    bob = {"email": "bob@a.test", "name": "Bob B", "substitutions": {"name": "<b>&"}}
    doc = _doc(content=content, substitutions={"n": 21}, recipients=[bob])
    status, out, _ = srv.api.call("POST", INJECT, doc)
    assert status == 200, out
    msg = email.message_from_bytes(srv.srv.body(out["ids"][0]), policy=email.policy.default)
    assert msg["Subject"] == "Ünïcode <b>&" and msg["To"] == "Bob B <bob@a.test>"
    assert msg["X-Campaign"] == "c-<b>&" and str(msg["From"]) == "Nëws <news@src.test>"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().replace("\r\n", "\n") == "Hi <b>&, 42\n"
    assert html.get_content().strip() == "<p>Hi &lt;b&gt;&amp;</p>"
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "a.bin" and att.get_content() == blob


def test_substituted_line_ends_never_add_a_header_field(srv: ApiServer) -> None:
    content = {"from": "news@src.test", "subject": "{{ s }}", "text_body": "x"}
    doc = _doc(content=content, substitutions={"s": "hi\r\nBcc: victim@x.test"})
    status, out, _ = srv.api.call("POST", INJECT, doc)
    assert status == 200
    msg = email.message_from_bytes(srv.srv.body(out["ids"][0]), policy=email.policy.default)
    assert msg["Bcc"] is None and msg["Subject"] == "hi  Bcc: victim@x.test"


def test_curl_injects(srv: ApiServer, tmp_path: Path) -> None:
    curl = require_tool("curl")
    body = tmp_path / "req.json"
    body.write_text(json.dumps(_doc()))
    out = subprocess.run([curl, "-sS", "-H", f"Authorization: Bearer {srv.token}", "-H",
                          "Content-Type: application/json", "--data-binary", f"@{body}",
                          "-w", "\n%{http_code}", srv.url + INJECT],
                         capture_output=True, timeout=60)  # fmt: skip
    text, code = out.stdout.decode().rsplit("\n", 1)
    assert code == "200" and json.loads(text)["success_count"] == 1, out


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"recipients": [{"email": "a@b.test"}], "content": "x"}, "envelope_sender"),
        (_doc(envelope_sender="not an address"), "envelope_sender"),
        (_doc(recipients=[]), "recipients"),
        (_doc(recipients="a@b.test"), "recipients"),
        (_doc(recipients=[{"email": "a@b@c"}]), "recipients[0].email"),
        (_doc(recipients=[{"email": "a@b.test"}, {}]), "recipients[1].email"),
        (_doc(recipients=[{"email": "a@b.test", "substitutions": []}]), "recipients[0].substitutions"),
        (_doc(recipients=[{"email": "a@b.test", "cc": 1}]), "recipients[0].cc"),
        (_doc(content=7), "content"),
        (_doc(content="{{ unclosed"), "content"),
        (_doc(content={"subject": "x", "text_body": "y"}), "content.from"),
        (_doc(content={"from": "a@b.test"}), "content.text_body"),
        (_doc(content={"from": "a@b.test", "text_body": "x", "html_body": "{% if %}"}), "content.html_body"),
        (_doc(content={"from": "a@b.test", "text_body": "x", "headers": {"To": "x"}}), "content.headers.To"),
        (_doc(content={"from": "a@b.test", "text_body": "x", "headers": {"Bad Name": "x"}}),
         "content.headers.Bad Name"),
        (_doc(content={"from": "a@b.test", "text_body": "x",
                       "attachments": [{"file_name": "f", "base64": "!"}]}), "content.attachments[0].base64"),
        (_doc(substitutions="x"), "substitutions"),
        (_doc(extra=1), "extra"),
        ({"": None}, '""'),
        ([1, 2], "body"),
    ],
)  # fmt: skip
def test_bad_input_is_400_naming_the_field(srv: ApiServer, doc: Any, field: str) -> None:
    status, out, _ = srv.api.call("POST", INJECT, doc)
    assert status == 400, out
    assert out["field"] == field and out["error"].startswith(field)


def test_bad_json_is_400(srv: ApiServer) -> None:
    for body in (b"", b"{", b"\xff\xfe", b"[" * 100000 + b"]" * 100000, b'{"a": NaN'):
        status, out, _ = srv.api.call("POST", INJECT, body=body)
        assert status == 400 and out["field"] == "body", (body[:20], out)


def test_body_size_at_and_past_the_limit(srv: ApiServer) -> None:
    limit = 200000
    doc = json.dumps(_doc()).encode()
    at = doc + b" " * (limit - len(doc))
    assert len(at) == limit
    assert srv.api.call("POST", INJECT, body=at)[0] == 200
    status, out, _ = srv.api.call("POST", INJECT, body=at + b" ")
    assert status == 413, out


def test_ten_thousand_recipients_in_one_request_and_not_one_more(srv: ApiServer) -> None:
    rcpts = [{"email": f"r{i}@b.test", "substitutions": {"name": str(i)}} for i in range(10000)]
    doc = _doc(recipients=rcpts, content={"from": "n@src.test", "subject": "{{ name }}", "text_body": "hi"})
    body = json.dumps(doc).encode()
    srv_big = body  # over max_body_size of the module server: use its own server
    assert len(srv_big) > 200000
    status, out, _ = srv.api.call("POST", INJECT, body=body)
    assert status == 413
    # the limit itself is checked on a server with room for the body
    status, out, _ = _big(srv).api.call("POST", INJECT, body=body, timeout=300)
    assert status == 200 and out["success_count"] == 10000 and len(set(out["ids"])) == 10000, out
    doc["recipients"].append({"email": "one@b.test"})
    status, out, _ = _big(srv).api.call("POST", INJECT, doc)
    assert status == 400 and out["field"] == "recipients"


_BIG: dict[str, ApiServer] = {}


def _big(srv: ApiServer) -> ApiServer:
    if "s" not in _BIG:
        _BIG["s"] = start_api_server(srv.tokens_file.parent / "big")
    return _BIG["s"]


@pytest.fixture(scope="module", autouse=True)
def _stop_big() -> Iterator[None]:
    yield
    if "s" in _BIG:
        _BIG.pop("s").srv.proc.stop()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from(["envelope_sender", "recipients", "content", "substitutions", "x"])


@st.composite
def _mutated(draw: Callable[..., Any]) -> Any:
    """A valid request with fields replaced by random JSON, or random JSON, or random bytes."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        doc = _doc(content={"from": "a@src.test", "subject": "s", "text_body": "t", "html_body": "h",
                            "attachments": [{"file_name": "f", "base64": "aGk="}],
                            "headers": {"X-A": "b"}})  # fmt: skip
        for f in draw(st.lists(_fields, max_size=3)):
            doc[f] = draw(_json)
        if draw(st.booleans()) and isinstance(doc.get("content"), dict):
            doc["content"][draw(st.sampled_from(list(doc["content"]) + ["from", "zz"]))] = draw(_json)
        if draw(st.booleans()) and isinstance(doc.get("recipients"), list) and doc["recipients"]:
            doc["recipients"][0] = draw(
                st.dictionaries(st.sampled_from(["email", "name", "substitutions"]), _json)
            )
        return json.dumps(doc).encode()
    if kind == 1:
        return json.dumps(draw(_json)).encode()
    return draw(st.binary(max_size=200))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_mutated())
def test_random_bad_json_never_gives_500(srv: ApiServer, body: bytes) -> None:
    status, out, _ = srv.api.call("POST", INJECT, body=body)
    assert status in (200, 400), (status, out, body[:300])
    if status == 400:
        assert out["field"] and out["error"]


def test_preflight_checks_the_tokens_file(tmp_path: Path, make_config: Callable[..., Path]) -> None:
    bad = tmp_path / "bad"
    bad.write_text("alice:1234\n")
    loose = tmp_path / "loose"
    loose.write_text(tokens.new("a")[1] + "\n")
    loose.chmod(0o666)
    for path, why in (
        (bad, "line 1"),
        (loose, "writable by group or others"),
        (tmp_path / "none", "no such file"),
    ):
        cfg = make_config(f'[http]\naddress = "127.0.0.1:0"\ntokens_file = "{path}"\n')
        out = run_fastmta("check-config", "--config", str(cfg))
        assert (
            out.returncode == 2 and "http.tokens_file" in out.stderr.decode() and why in out.stderr.decode()
        )
