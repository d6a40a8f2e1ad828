# SPDX-License-Identifier: MIT
"""One frozen, typed configuration object built from TOML plus embedded defaults.

Every configuration key (docs/configuration.md) lives here, once. Unknown keys
are errors so a misspelt key never silently does nothing; every error names the
key it is about (``limits.max_recipients: expected an integer``). This module
imports only the standard library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import ipaddress
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_VAR = "FASTMTA_CONFIG"

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


class ConfigError(Exception):
    """Raised with every problem found, each a ``key: message`` line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@contextlib.contextmanager
def address_in_use(what: str, address: tuple[str, int] | None) -> Iterator[None]:
    """Around a bind: EADDRINUSE becomes the start-up error naming what and where,
    ``listener mx: 127.0.0.1:2525 is already in use`` (serve exits 2 on it)."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.EADDRINUSE or address is None:
            raise
        host, port = address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError([f"{what}: {where} is already in use"]) from None


class _Invalid(ValueError):
    """A converter's complaint; the loader prefixes it with the key."""


# --- converters: raw TOML value -> typed value, or _Invalid -------------------


def parse_size(value: object) -> int:
    """``"50MiB"``, ``"1.5GB"``, ``4096`` → bytes."""
    if isinstance(value, bool):
        raise _Invalid('expected a size such as 4096 or "50MiB"')
    if isinstance(value, int):
        if value < 0:
            raise _Invalid("expected a non-negative size")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise _Invalid('expected a size such as 4096 or "50MiB"')


def parse_duration(value: object) -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"5d"``, ``"2ms"`` or plain seconds → seconds."""
    if isinstance(value, bool):
        raise _Invalid('expected a duration such as 30, "30s", "5m", "2h" or "5d"')
    if isinstance(value, (int, float)):
        if value < 0:
            raise _Invalid("expected a non-negative duration")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise _Invalid('expected a duration such as 30, "30s", "5m", "2h" or "5d"')


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:25"``, ``"host"`` (with a default port) → (host, port)."""
    if not isinstance(value, str) or not value:
        raise _Invalid('expected "host:port"')
    host, port_s = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise _Invalid('expected "[ipv6]:port"')
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _Invalid('expected "[ipv6]:port"')
            port_s = rest[1:]
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    elif value.count(":") > 1:
        raise _Invalid('write IPv6 addresses as "[addr]:port"')
    if not port_s:
        if default_port is None:
            raise _Invalid('expected "host:port"')
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise _Invalid(f"bad port {port_s!r}")
    return host, int(port_s)


def _int(lo: int = 0, hi: int | None = None) -> Callable[[object], int]:
    def conv(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid("expected an integer")
        if value < lo or (hi is not None and value > hi):
            raise _Invalid(f"expected an integer from {lo}" + (f" to {hi}" if hi is not None else " up"))
        return value

    return conv


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def conv(value: object) -> str:
        if value not in choices:
            raise _Invalid("expected one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)

    return conv


def _list(item: Callable[[object], Any]) -> Callable[[object], tuple[Any, ...]]:
    def conv(value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid("expected a list")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except _Invalid as e:
                raise _Invalid(f"item {i}: {e}") from None
        return tuple(out)

    return conv


def _domain(value: object) -> str:
    s = _str(value).strip().lower().rstrip(".")
    if not s or " " in s:
        raise _Invalid(f"bad domain {value!r}")
    return s


def _route_domain(value: object) -> str:
    """A ``[[route]]`` domain: ``*`` (every domain), or a domain normalised as ``local_domains``
    are (lower case, no trailing dot), so that it matches the recipient domains it names."""
    return "*" if value == "*" else _domain(value)


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str(value), strict=False)
    except ValueError:
        raise _Invalid(f"bad network {value!r}") from None


def _address(value: object) -> tuple[str, int]:
    return parse_hostport(_str(value))


def _optional_address(value: object) -> tuple[str, int] | None:
    return None if value == "" else parse_hostport(_str(value))


# A route next hop written without a port takes ``[delivery] port`` (filled in by
# ``_fill_derived``): the next hop stands where an MX host would, and MX hosts are
# reached on that port.
_DELIVERY_PORT = -1


def _nexthop(value: object) -> tuple[str, int]:
    host, port = parse_hostport(_str(value), default_port=_DELIVERY_PORT)
    if not host:
        raise _Invalid('expected "host" or "host:port"')
    if port == 0:
        raise _Invalid("bad port '0'")
    return host, port


def _nameserver(value: object) -> tuple[str, int]:
    return parse_hostport(_str(value), default_port=53)


def _regex(value: object) -> re.Pattern[str]:
    try:
        return re.compile(_str(value))
    except re.error as e:
        raise _Invalid(f"bad regular expression: {e}") from None


def _file_mode(value: object) -> int:
    """``"0640"`` or ``0o640`` (a TOML octal integer) → the permission bits; owner rw required."""
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value.strip()):
        value = int(value.strip().replace("o", ""), 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise _Invalid('expected a file mode such as "0600" or "0640"')
    if value & 0o600 != 0o600:
        raise _Invalid("the owner must keep read and write permission (0600 bits)")
    return value


def _owner(value: object) -> tuple[int, int] | None:
    """``"user"`` or ``"user:group"`` (names or numbers) → (uid, gid); ``""`` → None. A user
    alone brings its primary group. Names are looked up now, so a typo is a config error."""
    spec = _str(value).strip()
    if not spec:
        return None
    user, _, group = spec.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise _Invalid(f"no such user {user!r}") from None
    if not group:
        return pw.pw_uid, pw.pw_gid
    try:
        return pw.pw_uid, grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise _Invalid(f"no such group {group!r}") from None


def is_localhost(domain: str) -> bool:
    """``localhost`` names (RFC 6761 §6.3, plus the common ``localhost.localdomain``): always
    this machine, so mail for them is delivered here or nowhere, never after a DNS lookup."""
    return domain == "localhost" or domain.endswith(".localhost") or domain == "localhost.localdomain"


def _workers(value: object) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    return _int(1, 1024)(value)


def _opt(conv: Callable[[object], Any], default: Any) -> Any:
    """A dataclass field with its TOML converter attached."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default")
    return field(default=default, metadata={"conv": conv})


# --- the sections ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    workers: int = _opt(_workers, 1)
    shutdown_grace: float = _opt(parse_duration, 30.0)


@dataclass(frozen=True)
class ListenerConfig:
    address: tuple[str, int] = _opt(_address, ("127.0.0.1", 2525))
    name: str = _opt(_str, "")
    mode: str = _opt(_choice("relay", "submission"), "relay")
    tls: str = _opt(_choice("none", "starttls", "implicit"), "none")
    proxy_protocol: bool = _opt(_bool, False)

    @property
    def label(self) -> str:
        """The ``listener`` label in metrics and logs."""
        host, port = self.address
        return self.name or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str = _opt(_str, "")
    key_file: str = _opt(_str, "")


@dataclass(frozen=True)
class PolicyConfig:
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = _opt(
        _list(_network),
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
    )
    relay_domains: tuple[str, ...] = _opt(_list(_domain), ())
    local_domains: tuple[str, ...] = _opt(_list(_domain), ())
    users_file: str = _opt(_str, "")
    auth_failure_delay: float = _opt(parse_duration, 1.0)
    max_auth_failures_per_ip: int = _opt(_int(1), 10)


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int = _opt(parse_size, 50 * 1024**2)
    max_recipients: int = _opt(_int(1), 1000)
    max_connections: int = _opt(_int(1), 10000)
    max_connections_per_ip: int = _opt(_int(1), 200)
    max_line_length: int = _opt(_int(64, 1_000_000), 512)
    max_errors: int = _opt(_int(1), 20)
    command_timeout: float = _opt(parse_duration, 300.0)
    data_timeout: float = _opt(parse_duration, 600.0)
    max_session_time: float = _opt(parse_duration, 1800.0)  # whole session, however busy
    bare_lf: str = _opt(_choice("reject", "normalise"), "reject")
    # Received: and Delivered-To: fields a message may arrive with (as Postfix's
    # hopcount_limit): more is a mail loop, refused 554 5.4.6 or bounced 5.4.6.
    max_hops: int = _opt(_int(1), 50)


@dataclass(frozen=True)
class SpoolConfig:
    path: str = _opt(_str, "./fastmta-spool")
    map_size: int = _opt(parse_size, 16 * 1024**3)
    max_map_size: int = _opt(parse_size, 1024**4)
    commit_window: float = _opt(parse_duration, 0.002)
    max_batch_bytes: int = _opt(parse_size, 64 * 1024**2)
    sync: bool = _opt(_bool, True)
    node_path: str = ""  # not a key: the environment of node-wide data (suppression list); "" = path


@dataclass(frozen=True)
class ShapingRule:
    match: re.Pattern[str] = _opt(_regex, re.compile(r"(?!)"))
    action: str = _opt(_choice("suspend", "limit"), "suspend")
    duration: float = _opt(parse_duration, 7200.0)
    max_connections: int = _opt(_int(1), 1)
    message_rate: float = _opt(lambda v: float(_int(0)(v)), 0.0)


@dataclass(frozen=True)
class DeliveryConfig:
    hold: bool = _opt(_bool, False)
    shards: int = _opt(_int(1, 1024), 8)
    max_connections_per_destination: int = _opt(_int(1), 20)
    max_messages_per_connection: int = _opt(_int(1), 100)
    message_rate_per_destination: float = _opt(lambda v: float(_int(0)(v)), 0.0)
    retry_schedule: tuple[float, ...] = _opt(
        _list(parse_duration), (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
    )
    max_queue_lifetime: float = _opt(parse_duration, 5 * 86400.0)
    connect_timeout: float = _opt(parse_duration, 30.0)
    command_timeout: float = _opt(parse_duration, 300.0)
    idle_timeout: float = _opt(parse_duration, 30.0)
    port: int = _opt(_int(1, 65535), 25)
    tls: str = _opt(_choice("none", "opportunistic", "required"), "opportunistic")
    # CA bundle for verified TLS: tls = "required", MTA-STS (the policy fetch and the MX
    # certificates) and TLS-RPT https: reports; "" = the system's CAs
    tls_ca_file: str = _opt(_str, "")
    mta_sts: bool = _opt(_bool, True)  # honour MTA-STS policies (RFC 8461)
    dane: bool = _opt(_bool, False)  # DANE-TLSA (RFC 7672); needs a validating resolver in [dns]
    tls_rpt: bool = _opt(_bool, False)  # send daily TLS-RPT reports (RFC 8460)
    bounce_from: str = _opt(_str, "")
    shaping: tuple[ShapingRule, ...] = ()


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[tuple[str, int], ...] = _opt(_list(_nameserver), ())
    timeout: float = _opt(parse_duration, 5.0)


@dataclass(frozen=True)
class RouteConfig:
    domain: str = _opt(_route_domain, "*")
    nexthop: tuple[str, int] = _opt(_nexthop, ("127.0.0.1", 25))  # "host" alone: [delivery] port
    auth_file: str = _opt(_str, "")
    tls: str = _opt(_choice("", "none", "opportunistic", "required"), "")


DKIM_CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")


@dataclass(frozen=True)
class DkimConfig:
    """One ``[[dkim]]`` entry: a (domain, selector) signature; the key is checked by fastmta.dkim."""

    domain: str = _opt(_domain, "")
    selector: str = _opt(_str, "")
    key_file: str = _opt(_str, "")
    headers: tuple[str, ...] = _opt(_list(_str), ())  # () = the built-in list
    canonicalization: str = _opt(_choice(*DKIM_CANONICALIZATIONS), "relaxed/relaxed")


@dataclass(frozen=True)
class LocalConfig:
    maildir: str = _opt(_str, "./fastmta-mail")
    lmtp: str = _opt(_str, "")
    users_file: str = _opt(_str, "")
    require_mailbox: bool = _opt(_bool, False)  # Maildir: only to <maildir>/<domain>/<user>/ that exist
    # Maildir files get ``mode``; the directories fastmta creates get it plus x where r is
    # set (0640 → 0750), whatever the umask: a reader such as Dovecot in our group can then open them.
    mode: int = _opt(_file_mode, 0o600)
    # Files and the directories fastmta creates get this owner (uid, gid); needs root.
    owner: tuple[int, int] | None = _opt(_owner, None)

    @property
    def dir_mode(self) -> int:
        return self.mode | (self.mode & 0o444) >> 2


@dataclass(frozen=True)
class MetricsConfig:
    address: tuple[str, int] | None = _opt(_optional_address, ("127.0.0.1", 9025))


@dataclass(frozen=True)
class LogConfig:
    file: str = _opt(_str, "")


def _redis_url(value: object) -> str:
    s = _str(value).strip()
    if s and not s.startswith(("redis://", "rediss://", "unix://")):
        raise _Invalid('expected "redis://host:port/db", "rediss://…" or "unix:///path", or ""')
    return s


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes sharing per-destination limits through one Redis."""

    node_id: str = _opt(_str, "")  # "" = the hostname (filled in by _fill_derived)
    redis: str = _opt(_redis_url, "")  # "" = every limit is node-local
    on_redis_failure: str = _opt(_choice("local", "pause"), "local")
    lease_ttl: float = _opt(parse_duration, 30.0)  # a dead node's connection leases lapse after this
    batch: int = _opt(_int(1, 10_000), 1000)  # most rate tokens taken at once (0.1 s at the node's pace)
    interval: float = _opt(parse_duration, 1.0)  # heartbeat, lease renewal and suspension poll
    timeout: float = _opt(parse_duration, 0.5)  # a Redis call slower than this counts as a failure
    prefix: str = _opt(_str, "fastmta:")  # key prefix: clusters sharing one Redis keep apart


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP API (injection and administration); ``address`` None = off."""

    address: tuple[str, int] | None = _opt(_optional_address, None)
    tokens_file: str = _opt(_str, "")  # "name:sha256-hex" lines
    max_body_size: int = _opt(parse_size, 64 * 1024**2)  # a request body past it: 413
    max_recipients: int = _opt(_int(1), 10_000)  # recipients of one injection request
    request_timeout: float = _opt(parse_duration, 60.0)  # reading and answering one request


WEBHOOK_EVENTS = ("delivered", "bounced", "deferred", "expired", "suppressed", "complaint")


def _url(value: object) -> str:
    s = _str(value)
    if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", s):
        raise _Invalid('expected an "http://" or "https://" URL')
    return s


def _name(value: object) -> str:
    s = _str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", s):
        raise _Invalid("expected 1 to 64 letters, digits, '_', '.' or '-'")
    return s


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhook]]``: delivery-log events POSTed in batches, at least once."""

    url: str = _opt(_url, "")
    name: str = _opt(_name, "")  # [webhook<index>] the ``webhook`` metric label and the cursor's key
    events: tuple[str, ...] = _opt(_list(_choice(*WEBHOOK_EVENTS)), WEBHOOK_EVENTS)
    batch_size: int = _opt(_int(1, 10_000), 100)
    max_delay: float = _opt(parse_duration, 1.0)
    secret: str = _opt(_str, "")
    timeout: float = _opt(parse_duration, 30.0)  # one POST, answer included
    max_backlog: int = _opt(_int(1), 1_000_000)  # events kept on disk for it; older ones are dropped


@dataclass(frozen=True)
class SourceConfig:
    """One egress source of a sending pool: the address bound and the EHLO name said."""

    address: str = _opt(_str, "")
    ehlo: str = _opt(_domain, "")
    weight: int = _opt(_int(1, 1000), 1)


@dataclass(frozen=True)
class PoolConfig:
    name: str = _opt(_str, "")
    sender_domains: tuple[str, ...] = _opt(_list(_domain), ())
    sources: tuple[SourceConfig, ...] = ()


@dataclass(frozen=True)
class SuppressionConfig:
    auto: bool = _opt(_bool, True)  # invalid_recipient bounces suppress the address for the tenant
    fbl_addresses: tuple[str, ...] = _opt(
        _list(lambda v: _str(v).strip().lower()), ()
    )  # ARF reports to these are consumed
    fbl_key_file: str = _opt(_str, "")  # "" = <spool path>/fbl.key, generated once


@dataclass(frozen=True)
class Config:
    hostname: str = _opt(_str, "")
    server: ServerConfig = ServerConfig()
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    tls: TlsConfig = TlsConfig()
    policy: PolicyConfig = PolicyConfig()
    limits: LimitsConfig = LimitsConfig()
    spool: SpoolConfig = SpoolConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    dns: DnsConfig = DnsConfig()
    routes: tuple[RouteConfig, ...] = ()
    dkim: tuple[DkimConfig, ...] = ()
    local: LocalConfig = LocalConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    suppression: SuppressionConfig = SuppressionConfig()
    cluster: ClusterConfig = ClusterConfig()
    source: str = ""  # the file this came from, "" for the embedded defaults

    def route_for(self, domain: str) -> RouteConfig | None:
        """The transport-map entry for a domain: exact match wins over ``*``."""
        domain = domain.lower().rstrip(".")
        star = None
        for r in self.routes:
            if r.domain == domain:
                return r
            if r.domain == "*":
                star = r
        return star


# --- loading ------------------------------------------------------------------------


def _build(cls: type[Any], raw: object, key: str, errors: list[str], **nested: Any) -> Any:
    """Convert one TOML table into ``cls``; unknown keys and bad values go to ``errors``."""
    if not isinstance(raw, Mapping):
        errors.append(f"{key}: expected a table")
        return cls(**nested)
    kwargs: dict[str, Any] = dict(nested)
    known = {f.name: f for f in dataclasses.fields(cls) if "conv" in f.metadata}
    for name, value in raw.items():
        full = f"{key}.{name}" if key else name
        if name in nested:
            continue
        f = known.get(name)
        if f is None:
            errors.append(f"{full}: unknown key")
            continue
        try:
            kwargs[name] = f.metadata["conv"](value)
        except _Invalid as e:
            errors.append(f"{full}: {e}")
    return cls(**kwargs)


def _build_list(cls: type[Any], raw: object, key: str, errors: list[str]) -> tuple[Any, ...]:
    if not isinstance(raw, list):
        errors.append(f"{key}: expected an array of tables ([[{key}]])")
        return ()
    return tuple(_build(cls, item, f"{key}[{i}]", errors) for i, item in enumerate(raw))


def _build_pools(raw: object, errors: list[str]) -> tuple[PoolConfig, ...]:
    """``[[pool]]`` tables, each with its ``sources`` array of inline tables."""
    if not isinstance(raw, list):
        errors.append("pool: expected an array of tables ([[pool]])")
        return ()
    pools = []
    for i, item in enumerate(raw):
        key = f"pool[{i}]"
        sources: tuple[SourceConfig, ...] = ()
        if isinstance(item, Mapping) and "sources" in item:
            sources = _build_list(SourceConfig, item["sources"], f"{key}.sources", errors)
        pools.append(_build(PoolConfig, item, key, errors, sources=sources))
    return tuple(pools)


def from_dict(raw: Mapping[str, Any], source: str = "") -> Config:
    """Build and validate a Config from parsed TOML; raise ConfigError listing every problem."""
    errors: list[str] = []
    sections: dict[str, type[Any]] = {
        "server": ServerConfig, "tls": TlsConfig, "policy": PolicyConfig,
        "limits": LimitsConfig, "spool": SpoolConfig, "dns": DnsConfig,
        "local": LocalConfig, "metrics": MetricsConfig, "log": LogConfig, "http": HttpConfig,
        "suppression": SuppressionConfig,
        "cluster": ClusterConfig,
    }  # fmt: skip
    kwargs: dict[str, Any] = {"source": source}
    for name, value in raw.items():
        if name in sections:
            kwargs[name] = _build(sections[name], value, name, errors)
        elif name == "listener":
            kwargs["listeners"] = _build_list(ListenerConfig, value, "listener", errors)
        elif name == "route":
            kwargs["routes"] = _build_list(RouteConfig, value, "route", errors)
        elif name == "dkim":
            kwargs["dkim"] = _build_list(DkimConfig, value, "dkim", errors)
        elif name == "webhook":
            kwargs["webhooks"] = _build_list(WebhookConfig, value, "webhook", errors)
        elif name == "delivery":
            shaping: tuple[ShapingRule, ...] = ()
            if isinstance(value, Mapping) and "shaping" in value:
                shaping = _build_list(ShapingRule, value["shaping"], "delivery.shaping", errors)
            kwargs["delivery"] = _build(DeliveryConfig, value, "delivery", errors, shaping=shaping)
        elif name == "pool":
            kwargs["pools"] = _build_pools(value, errors)
        elif name == "hostname":
            try:
                kwargs["hostname"] = _domain(value)
            except _Invalid as e:
                errors.append(f"hostname: {e}")
        else:
            errors.append(f"{name}: unknown key")
    cfg = Config(**kwargs)
    errors.extend(_cross_checks(cfg))
    if errors:
        raise ConfigError(errors)
    policy = raw.get("policy")
    return _fill_derived(cfg, isinstance(policy, Mapping) and "local_domains" in policy)


def _cross_checks(cfg: Config) -> list[str]:
    errors = []
    if not cfg.listeners:
        errors.append("listener: at least one [[listener]] is needed")
    if any(lst.tls != "none" for lst in cfg.listeners) and not (cfg.tls.cert_file and cfg.tls.key_file):
        errors.append("tls.cert_file: required when a listener offers TLS")
    names = [lst.label for lst in cfg.listeners]
    if len(set(names)) != len(names):
        errors.append("listener: two listeners share a name")
    if not cfg.delivery.retry_schedule:
        errors.append("delivery.retry_schedule: needs at least one interval")
    if cfg.spool.max_map_size < cfg.spool.map_size:
        errors.append("spool.max_map_size: smaller than spool.map_size")
    if cfg.local.lmtp and not cfg.local.lmtp.startswith("unix:"):
        try:
            parse_hostport(cfg.local.lmtp)
        except _Invalid:
            errors.append(f'local.lmtp: expected "host:port" or "unix:/path", got {cfg.local.lmtp!r}')
    errors.extend(_dkim_checks(cfg.dkim))
    if cfg.cluster.redis and cfg.cluster.lease_ttl < 3 * cfg.cluster.interval:
        errors.append("cluster.lease_ttl: must be at least 3 × cluster.interval (the renewal period)")
    if cfg.cluster.timeout <= 0:
        errors.append("cluster.timeout: must be above 0")
    if cfg.cluster.interval <= 0:
        errors.append("cluster.interval: must be above 0")
    errors += _pool_checks(cfg.pools)
    errors.extend(_webhook_checks(cfg.webhooks))
    return errors


def _webhook_checks(entries: tuple[WebhookConfig, ...]) -> list[str]:
    errors = []
    names = set()
    for i, w in enumerate(entries):
        if not w.url:
            errors.append(f"webhook[{i}].url: required")
        if not w.events:
            errors.append(f"webhook[{i}].events: needs at least one event")
        name = w.name or f"webhook{i}"
        if name in names:
            errors.append(f"webhook[{i}].name: {name!r} is used twice")
        names.add(name)
    return errors


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ":"


def _dkim_checks(entries: tuple[DkimConfig, ...]) -> list[str]:
    """Shape of each ``[[dkim]]`` entry; whether its key loads is fastmta.dkim.keys' check."""
    errors = []
    seen = set()
    for i, d in enumerate(entries):
        key = f"dkim[{i}]"
        if not d.domain:
            errors.append(f"{key}.domain: required")
        if not _SELECTOR.fullmatch(d.selector):
            errors.append(f"{key}.selector: expected a DNS label (letters, digits, '-', '.')")
        if not d.key_file:
            errors.append(f"{key}.key_file: required")
        bad = [h for h in d.headers if not _HEADER_NAME.fullmatch(h)]
        if bad:
            errors.append(f"{key}.headers: not a header field name: {bad[0]!r}")
        if (d.domain, d.selector) in seen:
            errors.append(f"{key}: a second entry for domain {d.domain!r} and selector {d.selector!r}")
        seen.add((d.domain, d.selector))
    return errors


def _pool_checks(pools: tuple[PoolConfig, ...]) -> list[str]:
    errors = []
    names = [p.name for p in pools]
    if len(set(names)) != len(names):
        errors.append("pool: two pools share a name")
    for i, p in enumerate(pools):
        if not p.name or not p.name.isprintable() or " " in p.name or len(p.name) > 64:
            errors.append(f"pool[{i}].name: expected a name of 1 to 64 printable characters without spaces")
        if p.name == "default":
            errors.append(f'pool[{i}].name: "default" names the pool of mail no pool claims')
        if not p.sources:
            errors.append(f"pool[{i}].sources: needs at least one source")
        for j, src in enumerate(p.sources):
            try:
                ipaddress.ip_address(src.address)
            except ValueError:
                errors.append(f"pool[{i}].sources[{j}].address: expected an IP address")
            if not src.ehlo:
                errors.append(f"pool[{i}].sources[{j}].ehlo: required")
    return errors


def _fill_derived(cfg: Config, local_domains_set: bool) -> Config:
    """Defaults that depend on other keys. With no ``local_domains`` key, ``localhost`` and
    the hostname are local (Postfix's ``mydestination``): cron's ``root`` and mail to
    ``bob@localhost`` stay on this machine. A ``local_domains`` the user wrote is taken
    exactly as written; ``localhost`` left out of it is then refused, never relayed."""
    hostname = cfg.hostname or socket.getfqdn()
    delivery = cfg.delivery
    if not delivery.bounce_from:
        delivery = dataclasses.replace(delivery, bounce_from=f"MAILER-DAEMON@{hostname}")
    routes = tuple(
        dataclasses.replace(r, nexthop=(r.nexthop[0], delivery.port)) if r.nexthop[1] == _DELIVERY_PORT else r
        for r in cfg.routes
    )
    policy = cfg.policy
    if not local_domains_set:
        policy = dataclasses.replace(
            policy, local_domains=tuple(dict.fromkeys(("localhost", hostname.lower())))
        )
    cluster = cfg.cluster
    if not cluster.node_id:
        cluster = dataclasses.replace(cluster, node_id=hostname)
    webhooks = tuple(dataclasses.replace(w, name=w.name or f"webhook{i}") for i, w in enumerate(cfg.webhooks))
    return dataclasses.replace(
        cfg,
        hostname=hostname,
        delivery=delivery,
        routes=routes,
        policy=policy,
        webhooks=webhooks,
        cluster=cluster,
    )


def load(path: str | None = None) -> Config:
    """Load ``path``, else ``$FASTMTA_CONFIG``, else the embedded defaults."""
    path = path or os.environ.get(ENV_VAR) or None
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    return from_dict(raw, source=path)
