# SPDX-License-Identifier: MIT
"""A second ``serve`` on an address in use refuses to start, naming it; the first keeps working.

With SO_REUSEPORT on every listening socket, a second instance used to start
silently and the kernel split the traffic between two spools and two
configurations. Only the workers of one supervisor may share an address now.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.workers import Supervised, workers_toml
from tests.support import free_port, run_fastmta

pytestmark = pytest.mark.timeout(120)


def second_config(make_config: Callable[..., Path], tmp_path: Path, port: int, metrics_port: int,
                  workers: int) -> Path:  # fmt: skip
    spool = f'[spool]\npath = "{tmp_path / "second-spool"}"\nmap_size = "64MiB"\n'
    return make_config(workers_toml(port, metrics_port, workers, hold=True, extra=spool), name="second.toml")


def still_works(first: Supervised) -> None:
    with smtplib.SMTP("127.0.0.1", first.port, timeout=30) as s:
        assert s.sendmail("a@x.test", ["b@y.test"], b"Subject: first\r\n\r\nstill here\r\n") == {}


@pytest.mark.parametrize("second_workers", [1, 2])
@pytest.mark.parametrize("first_workers", [1, 2])
def test_second_serve_on_a_listener_address_in_use(
    workers_server: Callable[..., Supervised], make_config: Callable[..., Path], tmp_path: Path,
    first_workers: int, second_workers: int,
) -> None:  # fmt: skip
    first = workers_server(workers=first_workers, hold=True)
    cfg = second_config(make_config, tmp_path, first.port, free_port(), second_workers)
    r = run_fastmta("serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"listener mx: 127.0.0.1:{first.port} is already in use".encode() in r.stderr, r.stderr
    assert b"listening on" not in r.stderr
    still_works(first)


@pytest.mark.parametrize("second_workers", [1, 2])
def test_second_serve_on_a_metrics_address_in_use(
    workers_server: Callable[..., Supervised], make_config: Callable[..., Path], tmp_path: Path,
    second_workers: int,
) -> None:  # fmt: skip
    first = workers_server(workers=1, hold=True)
    cfg = second_config(make_config, tmp_path, free_port(), first.metrics_port, second_workers)
    r = run_fastmta("serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 2, r.stderr
    assert f"metrics: 127.0.0.1:{first.metrics_port} is already in use".encode() in r.stderr, r.stderr
    still_works(first)
    assert first.get("/healthz")[0] == 200
