# SPDX-License-Identifier: MIT
"""Benchmark peers on loopback ports: each runs in its own process and is stopped by its own pid.

Peers: fastmta itself, a private Postfix 3.7 instance (own config, queue and data
directories under a temp dir), aiosmtpd 1.4 (``Sink`` and a durable fsync handler),
the bare-uvloop limit, and Postfix's ``smtp-sink`` (with its running counters).
Every peer reports the CPU time its processes used, read from ``/proc``.
Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
DEAD_DNS = "127.0.0.1:9"  # nothing answers here: no DNS query can leave the machine
_TICK = os.sysconf("SC_CLK_TCK")


def tool(name: str) -> str:
    """Path of a real binary (``/usr/sbin`` included); a missing tool is an error, not a skip."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        raise FileNotFoundError(f"benchmark needs {name!r} (apt-get install postfix swaks ...)")
    return path


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM if the bench process dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop every peer (Postfix daemonises)."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


_HANDED_OUT: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now, never one this process handed out before: two
    calls in a row may otherwise get the same port back from the kernel."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until a peer accepts on ``port``. The deadline is a safety net: a start takes about a
    second alone, but tens of seconds beside a test suite on several workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5) as s:
            s.settimeout(5)
            s.recv(512)  # the banner: the server is really up, not just the socket
            s.sendall(b"QUIT\r\n")
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def own_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of one process alone; 0.0 once it is gone."""
    st = _stat(pid)
    return sum(int(x) for x in st[11:13]) / _TICK if st is not None else 0.0


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of a process tree: live processes plus children they reaped."""
    total = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is not None:
            total += sum(int(x) for x in st[11:15])  # utime stime cutime cstime
    return total / _TICK


def rss_bytes(root: int) -> int:
    """Resident memory of a process tree, from /proc/<pid>/statm (shared pages count once per process)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total


def pss_bytes(root: int) -> int:
    """Proportional set size of a process tree (shared pages split among their users).

    The fair memory figure for many-process servers like Postfix, whose summed RSS
    counts every shared library once per process.
    """
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class Peer:
    """A server on a loopback port, started in its own process; ``stop`` ends exactly that pid."""

    name = "peer"
    durable = True

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"fastmta-bench-{self.name}-"))
        self._log = open(self.workdir / "peer.log", "wb")  # noqa: SIM115

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Self:
        """Start the peer and wait for its banner; a peer that fails to start is cleaned up."""
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=self.env(),
            preexec_fn=die_with_parent,
        )
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its log ends: {self.log_tail(6)}") from None

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, n: int = 20) -> str:
        self._log.flush()
        return "\n".join((self.workdir / "peer.log").read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Limit(Peer):
    """The bare-uvloop limit: canned replies, nothing stored (bench/servers/limit.py)."""

    name = "limit"
    durable = False

    def command(self) -> list[str]:
        return [PYTHON, str(ROOT / "bench" / "servers" / "limit.py"), str(self.port)]


class DurableLimit(Peer):
    """The limit plus LMDB durability and nothing else (bench/servers/durable_limit.py)."""

    name = "limit-durable"

    def command(self) -> list[str]:
        return [PYTHON, str(ROOT / "bench" / "servers" / "durable_limit.py"), str(self.port),
                str(self.workdir / "lmdb")]  # fmt: skip

    def _launch(self) -> None:
        (self.workdir / "lmdb").mkdir()
        super()._launch()


class Aiosmtpd(Peer):
    """aiosmtpd on uvloop with its ``Sink`` handler, or a handler that fsyncs a file per message."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable
        self.name = "aiosmtpd-durable" if durable else "aiosmtpd-sink"
        super().__init__()

    def command(self) -> list[str]:
        mode = ["--durable", str(self.workdir / "mail")] if self.durable else []
        return [PYTHON, str(ROOT / "bench" / "servers" / "aiosmtpd_peer.py"), str(self.port), *mode]


class SmtpSink(Peer):
    """Postfix's ``smtp-sink``; a reader thread follows its ``-c`` counters (sessions, messages)."""

    name = "smtp-sink"
    durable = False
    _COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")

    def __init__(self) -> None:
        super().__init__()
        self.sessions = 0
        self.messages = 0
        self.last_message_at = 0.0
        self._changed = threading.Condition()

    def command(self) -> list[str]:
        return [tool("smtp-sink"), "-u", "postfix", "-c", "-m", "2000", self.address, "4096"]

    def _launch(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=self.workdir,
            preexec_fn=die_with_parent,
        )
        threading.Thread(target=self._follow, name="smtp-sink-counters", daemon=True).start()
        wait_port(self.port, proc=self.proc)

    def _follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            now = time.perf_counter()
            data = tail + chunk
            cut = data.rfind(b"\r")
            if cut < 0:
                tail = data
                continue
            tail = data[cut + 1 :]
            start = data.rfind(b"\r", 0, cut) + 1
            m = self._COUNTERS.match(data, start)
            if m is None:
                continue
            with self._changed:
                msgs = int(m.group(3))
                if msgs != self.messages:
                    self.last_message_at = now
                self.sessions, self.messages = int(m.group(1)), msgs
                self._changed.notify_all()

    def wait_messages(self, n: int, timeout: float, stall: float | None = None) -> bool:
        """Block until the sink has counted ``n`` messages in total.

        False after ``timeout``, or once no message arrived for ``stall`` seconds
        (a broken MTA ends the wait early instead of using the whole bound).
        """
        start = time.perf_counter()
        deadline = start + timeout
        with self._changed:
            while self.messages < n:
                now = time.perf_counter()
                if now >= deadline or (stall and now - max(start, self.last_message_at) > stall):
                    return False
                self._changed.wait(min(0.5, deadline - now))
            return True

    def counts(self) -> tuple[int, int]:
        with self._changed:
            return self.sessions, self.messages


class Fastmta(Peer):
    """``fastmta serve`` with a bench config: spool in a temp dir, DNS at a dead port.

    ``hold`` keeps delivery off (accept tests); ``relay_to`` routes every domain to a
    sink (relay tests). ``metrics`` False sets FASTMTA_METRICS=off. ``sync`` False is
    ``[spool] sync = false``: not durable, a diagnostic of what the fsyncs cost.
    ``map_size`` and ``max_map_size`` are the ``[spool]`` keys (fault runs use small ones);
    ``limits`` adds ``[limits]`` lines (the slowloris fault run shortens ``command_timeout``).
    ``root`` runs another checkout with its own ``.venv`` (an A/B baseline in the same run).
    """

    def __init__(self, hold: bool = True, relay_to: str | None = None, metrics: bool = True,
                 spool: Path | None = None, name: str = "fastmta", sync: bool = True,
                 map_size: str = "1GiB", max_map_size: str = "", extra_config: str = "", limits: str = "",
                 delivery: str = "max_connections_per_destination = 20\n",
                 root: Path | None = None) -> None:  # fmt: skip
        self.name = name
        self.limits = limits
        self.root = root or ROOT
        self.python = str(root / ".venv" / "bin" / "python") if root else PYTHON
        self.extra_config = extra_config  # appended TOML (bench/dkim.py: [[dkim]] tables)
        self.delivery = delivery  # lines of the [delivery] table (bench/cluster.py: its limits)
        self.durable = sync
        super().__init__()
        self.hold = hold
        self.relay_to = relay_to
        self.metrics = metrics
        self.spool = spool or self.workdir / "spool"
        self.map_size, self.max_map_size = map_size, max_map_size
        self.config = self.workdir / "fastmta.toml"

    def write_config(self) -> None:
        route = f'\n[[route]]\ndomain = "*"\nnexthop = "{self.relay_to}"\n' if self.relay_to else ""
        self.config.write_text(
            f'hostname = "bench.fastmta.test"\n\n'
            f'[[listener]]\nname = "bench"\naddress = "{self.address}"\n\n'
            f"[limits]\nmax_connections_per_ip = 5000\n{self.limits}\n\n"
            f'[spool]\npath = "{self.spool}"\nmap_size = "{self.map_size}"\n'
            + (f'max_map_size = "{self.max_map_size}"\n' if self.max_map_size else "")
            + f"sync = {'true' if self.durable else 'false'}\n\n"
            f'[delivery]\nhold = {"true" if self.hold else "false"}\ntls = "none"\n'
            f"{self.delivery}\n"
            f'[dns]\nnameservers = ["{DEAD_DNS}"]\ntimeout = "1s"\n\n'
            f'[metrics]\naddress = "{HOST}:{free_port()}"\n\n'
            f'[log]\nfile = "{self.workdir / "delivery.log"}"\n'
            f"{route}\n{self.extra_config}"
        )

    def command(self) -> list[str]:
        return [self.python, "-m", "fastmta", "serve", "--config", str(self.config)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.root))
        if not self.metrics:
            env["FASTMTA_METRICS"] = "off"
        return env

    def _launch(self) -> None:
        self.write_config()
        super()._launch()

    def queued(self) -> int | None:
        """Messages in this instance's spool, from ``fastmta queue stats --json``."""
        cmd = [self.python, "-m", "fastmta", "queue", "stats", "--json", "--config", str(self.config)]
        r = subprocess.run(cmd, capture_output=True, timeout=300, cwd=self.root, env=self.env())
        with contextlib.suppress(ValueError, IndexError):
            stats = json.loads(r.stdout.decode().strip().splitlines()[-1])
            return int(stats["messages"])
        return None

    def stop(self, keep_spool: bool = False) -> None:
        if keep_spool:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(30)
            return
        super().stop()


class Redis(Peer):
    """Debian's ``redis-server`` on a loopback port, nothing saved ([cluster] benches)."""

    name = "redis"
    durable = False

    def command(self) -> list[str]:
        return [tool("redis-server"), "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _launch(self) -> None:
        """No banner to wait for: up once it answers PING."""
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, preexec_fn=die_with_parent)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on {self.port}: {self.log_tail(6)}")


class Postfix(Peer):
    """A private Postfix instance: its own config, queue and data directories; smtpd on a free port.

    ``hold`` puts every accepted message on the hold queue (fsync'd like any queue
    file, never delivered); ``relayhost`` relays everything to that host:port.
    Stopped with ``postfix -c DIR stop``, then its master pid is killed if still alive.
    """

    name = "postfix"

    def __init__(self, hold: bool = True, relayhost: str | None = None, milter: str | None = None) -> None:
        super().__init__()
        self.hold = hold
        self.relayhost = relayhost
        self.milter = milter  # "inet:127.0.0.1:PORT": every message through it (bench/dkim.py: OpenDKIM)
        self.conf = self.workdir / "etc"
        self.queue = self.workdir / "queue"
        self.data = self.workdir / "data"
        self.master_pid: int | None = None

    @property
    def pid(self) -> int:
        assert self.master_pid is not None
        return self.master_pid

    def _postconf(self, *settings: str) -> None:
        subprocess.run([tool("postconf"), "-c", str(self.conf), "-e", *settings], check=True,
                       capture_output=True)  # fmt: skip

    def configure(self) -> None:
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        (self.conf / "main.cf").write_text("compatibility_level = 3.6\n")
        (self.conf / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        shutil.chown(self.data, "postfix", "postfix")
        settings = [
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "myhostname = bench.postfix.test",
            "mydomain = postfix.test",
            "mydestination =",
            "mynetworks = 127.0.0.0/8",
            "alias_maps =",
            "alias_database =",
            "smtpd_peername_lookup = no",
            "smtp_dns_support_level = disabled",
            "smtp_host_lookup = native",
            "disable_dns_lookups = yes",
            f"maillog_file = {self.workdir / 'maillog'}",
            f"maillog_file_prefixes = {self.workdir}",
            "biff = no",
            "smtpd_client_connection_count_limit = 0",
            "smtpd_client_connection_rate_limit = 0",
            "default_process_limit = 200",
            "message_size_limit = 52428800",
        ]
        if self.hold:
            # The HOLD action makes cleanup write the queue file (fsync'd) to the hold
            # queue: accepted durably, never handed to qmgr or a delivery agent.
            settings.append("smtpd_data_restrictions = check_client_access static:HOLD")
        if self.relayhost:
            settings += [
                f"relayhost = [{self.relayhost.rsplit(':', 1)[0]}]:{self.relayhost.rsplit(':', 1)[1]}",
                "default_destination_concurrency_limit = 20",
                "queue_run_delay = 1s",  # released (postsuper -H) mail is picked up at once
                "smtp_tls_security_level = none",
            ]
        if self.milter:
            # tempfail: a message the milter did not see is not accepted (never relayed unsigned)
            settings += [f"smtpd_milters = {self.milter}", "milter_default_action = tempfail"]
        self._postconf(*settings)

    def _launch(self) -> None:
        self.configure()
        r = subprocess.run([tool("postfix"), "-c", str(self.conf), "start"], capture_output=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stderr.decode(errors='replace')}")
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while self.master_pid is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.master_pid = int(pid_file.read_text().strip())
            time.sleep(0.05)
        wait_port(self.port)

    def queued(self) -> int:
        """Queue files written so far (hold + incoming + active + deferred)."""
        return sum(
            len(files) for sub in ("hold", "incoming", "active", "deferred", "maildrop")
            for _, _, files in os.walk(self.queue / sub)
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([tool("postfix"), "-c", str(self.conf), "stop"], capture_output=True, timeout=30)
        if self.master_pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{self.master_pid}").exists():
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master_pid, signal.SIGKILL)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


# chroot off everywhere (no copies of /etc into the queue dir); only what a relay needs.
_MASTER_CF = """\
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def versions() -> dict[str, str]:
    """Versions of every peer, for the report header."""
    out: dict[str, str] = {}
    with contextlib.suppress(Exception):
        r = subprocess.run([tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, timeout=10)
        out["postfix"] = r.stdout.decode().strip()
    for mod in ("aiosmtpd", "uvloop", "lmdb", "prometheus_client"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out
