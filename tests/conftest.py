# SPDX-License-Identifier: MIT
"""Shared fixtures. Area-specific fixtures live in tests/fixtures/<area>.py."""

from __future__ import annotations

import gc
import logging
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import free_port, safe_sections

# Timing is no property of the code under test: on a loaded CI machine an example may run
# past Hypothesis's 200 ms deadline, or generation may trip the too_slow health check.
settings.register_profile("fastmta", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fastmta")

pytest_plugins = [
    f"tests.fixtures.{p.stem}"
    for p in sorted((Path(__file__).parent / "fixtures").glob("*.py"))
    if p.stem != "__init__"
]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a TOML config into tmp_path; spool, maildir and DNS default to safe test values."""

    def make(body: str = "", name: str = "fastmta.toml", spool: bool = True) -> Path:
        text = safe_sections(textwrap.dedent(body), tmp_path, spool)
        if not text.lstrip().startswith("hostname") and "\nhostname" not in text:
            text = 'hostname = "mx.fastmta.test"\n' + text
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.fixture(autouse=True)
def _no_real_dns_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # A test must never fall back to a developer's FASTMTA_CONFIG.
    monkeypatch.delenv("FASTMTA_CONFIG", raising=False)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="session", autouse=True)
def _gc_frozen() -> None:
    # What exists once the tests are collected is moved out of the collector's way, so
    # the collection after every test (below) scans only what tests made: ~0 instead of 15 ms.
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _no_unhandled_loop_exceptions(_gc_frozen: None) -> Iterator[None]:
    """Fail a test whose event loops left an exception unhandled.

    Every loop in the test process, however made (asyncio.run, uvloop.run, a sink's
    thread), reports those through its default exception handler, which logs them to
    the "asyncio" logger at ERROR. "Task exception was never retrieved" is only said
    when the task is collected, hence the collection before the check.
    """
    seen = _Records()
    logger = logging.getLogger("asyncio")
    logger.addHandler(seen)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(seen)
    if seen.records:
        text = "\n".join(logging.Formatter("%(message)s").format(r) for r in seen.records)
        pytest.fail(f"an event loop left exceptions unhandled:\n{text}", pytrace=False)


def pytest_report_header(config: pytest.Config) -> str:
    return f"fastmta parser: {'pure' if os.environ.get('FASTMTA_PURE_PYTHON') == '1' else 'cython'}"
