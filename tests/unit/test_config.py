# SPDX-License-Identifier: MIT
"""The configuration contract: defaults, units, and errors that name the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from fastmta import config
from tests.support import run_fastmta


def test_embedded_defaults_match_the_contract() -> None:
    cfg = config.load(None)
    assert [lst.address for lst in cfg.listeners] == [("127.0.0.1", 2525)]
    assert cfg.listeners[0].mode == "relay" and cfg.listeners[0].tls == "none"
    assert cfg.listeners[0].label == "127.0.0.1:2525"
    assert cfg.policy.relay_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert cfg.policy.relay_domains == ()
    assert cfg.policy.local_domains == tuple(dict.fromkeys(("localhost", cfg.hostname)))
    assert (cfg.local.mode, cfg.local.dir_mode) == (0o600, 0o700)
    assert cfg.limits.max_message_size == 50 * 1024 * 1024
    assert (cfg.limits.max_recipients, cfg.limits.max_line_length, cfg.limits.max_errors) == (1000, 512, 20)
    assert (cfg.limits.command_timeout, cfg.limits.data_timeout) == (300.0, 600.0)
    assert cfg.limits.bare_lf == "reject"
    assert cfg.spool.path == "./fastmta-spool" and cfg.spool.map_size == 16 * 1024**3
    assert cfg.spool.commit_window == pytest.approx(0.002)
    assert cfg.delivery.retry_schedule == (60, 300, 900, 1800, 3600, 7200, 14400)
    assert cfg.delivery.max_queue_lifetime == 5 * 86400 and cfg.delivery.port == 25
    assert cfg.delivery.bounce_from == f"MAILER-DAEMON@{cfg.hostname}"
    assert cfg.dns.nameservers == () and cfg.metrics.address == ("127.0.0.1", 9025)
    assert cfg.server.workers == 1
    assert (cfg.delivery.mta_sts, cfg.delivery.dane, cfg.delivery.tls_rpt) == (True, False, False)


@pytest.mark.parametrize(
    ("text", "value"),
    [("50MiB", 50 * 1024**2), ("1k", 1000), ("2KiB", 2048), (4096, 4096), ("1.5GB", 1_500_000_000)],
)
def test_sizes(text: object, value: int) -> None:
    assert config.parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"), [("30s", 30), ("5m", 300), ("2h", 7200), ("5d", 432000), (12, 12), ("2ms", 0.002)]
)
def test_durations(text: object, value: float) -> None:
    assert config.parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:2525", ("::1", 2525)), ("mx.test:26", ("mx.test", 26))],
)
def test_hostport(text: str, value: tuple[str, int]) -> None:
    assert config.parse_hostport(text) == value


def test_full_example_parses() -> None:
    cfg = config.from_dict(
        {
            "hostname": "mx.fastmta.test",
            "server": {"workers": "auto"},
            "listener": [
                {"name": "mx", "address": "127.0.0.1:2525"},
                {"name": "sub", "address": "[::1]:2587", "mode": "submission", "tls": "starttls"},
            ],
            "tls": {"cert_file": "c.pem", "key_file": "k.pem"},
            "limits": {"max_message_size": "10MiB", "command_timeout": "30s", "bare_lf": "normalise"},
            "delivery": {"shaping": [{"match": "TSS04|4\\.7\\.28", "action": "suspend", "duration": "2h"}]},
            "dns": {"nameservers": ["127.0.0.1:5353", "127.0.0.2"]},
            "route": [
                {"domain": "*", "nexthop": "127.0.0.1:2626"},
                {"domain": "a.test", "nexthop": "127.0.0.2:25"},
            ],
        }
    )
    assert cfg.server.workers >= 1
    assert cfg.listeners[1].address == ("::1", 2587) and cfg.listeners[1].label == "sub"
    assert cfg.delivery.shaping[0].match.search("421 4.7.0 [TSS04] try later")
    assert cfg.dns.nameservers == (("127.0.0.1", 5353), ("127.0.0.2", 53))
    routes = [cfg.route_for("a.test"), cfg.route_for("b.test")]
    assert [r.nexthop if r else None for r in routes] == [("127.0.0.2", 25), ("127.0.0.1", 2626)]


def test_every_error_names_its_key() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(
            {
                "limits": {"max_recipients": "many", "max_line_lenght": 600},
                "delivery": {"tls": "maybe", "retry_schedule": ["1m", "soon"]},
                "listener": [{"address": "nowhere"}],
                "bogus": 1,
            }
        )
    assert e.value.errors == [
        "limits.max_recipients: expected an integer",
        "limits.max_line_lenght: unknown key",
        'delivery.tls: expected one of "none", "opportunistic", "required"',
        'delivery.retry_schedule: item 1: expected a duration such as 30, "30s", "5m", "2h" or "5d"',
        'listener[0].address: expected "host:port"',
        "bogus: unknown key",
    ]


def test_localhost_and_the_hostname_are_local_unless_local_domains_is_set() -> None:
    assert config.from_dict({"hostname": "MX.Example.test"}).policy.local_domains == (
        "localhost",
        "mx.example.test",
    )
    assert config.from_dict({"hostname": "localhost"}).policy.local_domains == ("localhost",)
    explicit = config.from_dict({"hostname": "mx.test", "policy": {"local_domains": ["a.test"]}})
    assert explicit.policy.local_domains == ("a.test",)
    assert config.from_dict({"policy": {"local_domains": []}}).policy.local_domains == ()


@pytest.mark.parametrize("name", ["localhost", "a.localhost", "localhost.localdomain"])
def test_localhost_names(name: str) -> None:
    assert config.is_localhost(name)
    assert not config.is_localhost("localhost.example.test") and not config.is_localhost("notlocalhost")


def test_lmtp_error_shows_the_unix_form() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"local": {"lmtp": "/run/dovecot/lmtp"}})
    assert e.value.errors == ['local.lmtp: expected "host:port" or "unix:/path", got \'/run/dovecot/lmtp\'']
    assert (
        config.from_dict({"local": {"lmtp": "unix:/run/dovecot/lmtp"}}).local.lmtp == "unix:/run/dovecot/lmtp"
    )


@pytest.mark.parametrize(
    ("value", "mode", "dir_mode"),
    [("0600", 0o600, 0o700), ("0640", 0o640, 0o750), ("660", 0o660, 0o770), (0o644, 0o644, 0o755),
     ("0o666", 0o666, 0o777)],
)  # fmt: skip
def test_local_mode(value: object, mode: int, dir_mode: int) -> None:
    local = config.from_dict({"local": {"mode": value}}).local
    assert (local.mode, local.dir_mode) == (mode, dir_mode)


@pytest.mark.parametrize("value", ["0400", "0200", "0o1000", "rw", 600.0, True, -1, "08"])
def test_local_mode_refused(value: object) -> None:
    with pytest.raises(config.ConfigError, match=r"^local\.mode: "):
        config.from_dict({"local": {"mode": value}})


@pytest.mark.parametrize(
    ("value", "owner"),
    [("", None), ("nobody", (65534, 65534)), ("nobody:nogroup", (65534, 65534)), ("root:nogroup", (0, 65534)),
     ("65534:0", (65534, 0)), ("0", (0, 0))],
)  # fmt: skip
def test_local_owner(value: str, owner: tuple[int, int] | None) -> None:
    assert config.from_dict({"local": {"owner": value}}).local.owner == owner


@pytest.mark.parametrize(
    ("value", "error"),
    [("no-such-user-x", "no such user 'no-such-user-x'"), ("nobody:no-such-group-x", "no such group"),
     (":nogroup", "no such user ''"), (7, "expected a string")],
)  # fmt: skip
def test_local_owner_refused(value: object, error: str) -> None:
    with pytest.raises(config.ConfigError, match=rf"^local\.owner: {error}"):
        config.from_dict({"local": {"owner": value}})


def test_tls_listener_needs_a_certificate() -> None:
    with pytest.raises(config.ConfigError, match=r"tls.cert_file: required"):
        config.from_dict({"listener": [{"address": "127.0.0.1:2525", "tls": "implicit"}]})


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('hostname = "mx.fastmta.test"\n[limits]\nmax_recipients = 5\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nmax_recipients = "x"\n')
    assert run_fastmta("check-config", "--config", str(good)).returncode == 0
    r = run_fastmta("check-config", "--config", str(bad))
    assert r.returncode == 2
    assert b"limits.max_recipients: expected an integer" in r.stderr
    r = run_fastmta("check-config", env={"FASTMTA_CONFIG": str(bad)})
    assert r.returncode == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\n")
    r = run_fastmta("check-config", "--config", str(broken))
    assert r.returncode == 2 and b"not valid TOML" in r.stderr


def test_route_domains_are_normalised_like_local_domains() -> None:
    """A route written "Example.COM" or "example.net." matches the mail it names."""
    cfg = config.from_dict(
        {
            "policy": {"local_domains": ["Local.TEST."]},
            "route": [
                {"domain": "Example.COM", "nexthop": "127.0.0.2:2626"},
                {"domain": "example.net.", "nexthop": "127.0.0.3:2626"},
            ],
        }
    )
    assert cfg.policy.local_domains == ("local.test",)
    assert [r.domain for r in cfg.routes] == ["example.com", "example.net"]
    for domain, host in [("example.com", "127.0.0.2"), ("EXAMPLE.net.", "127.0.0.3")]:
        route = cfg.route_for(domain)
        assert route is not None and route.nexthop == (host, 2626), domain
    assert cfg.route_for("example.org") is None
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"route": [{"domain": "a b.test", "nexthop": "127.0.0.1:25"}, {"domain": "."}]})
    assert e.value.errors == ["route[0].domain: bad domain 'a b.test'", "route[1].domain: bad domain '.'"]


@pytest.mark.parametrize(
    ("nexthop", "delivery", "value"),
    [
        ("smarthost.test", {}, ("smarthost.test", 25)),
        ("smarthost.test", {"port": 2626}, ("smarthost.test", 2626)),
        ("[::1]", {"port": 2626}, ("::1", 2626)),
        ("127.0.0.1", {}, ("127.0.0.1", 25)),
        ("smarthost.test:587", {"port": 2626}, ("smarthost.test", 587)),
    ],
)
def test_route_nexthop_without_a_port_takes_the_delivery_port(
    nexthop: str, delivery: dict[str, int], value: tuple[str, int]
) -> None:
    cfg = config.from_dict({"route": [{"domain": "*", "nexthop": nexthop}], "delivery": delivery})
    assert cfg.routes[0].nexthop == value


@pytest.mark.parametrize(
    ("nexthop", "error"),
    [(":25", 'expected "host" or "host:port"'), ("h.test:0", "bad port '0'"), ("h.test:x", "bad port 'x'")],
)
def test_route_nexthop_errors(nexthop: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"route": [{"nexthop": nexthop}]})
    assert e.value.errors == [f"route[0].nexthop: {error}"]


def test_max_hops() -> None:
    assert config.load(None).limits.max_hops == 50
    assert config.from_dict({"limits": {"max_hops": 1}}).limits.max_hops == 1
    for bad in (0, "50", True):
        with pytest.raises(config.ConfigError, match=r"limits.max_hops: expected an integer"):
            config.from_dict({"limits": {"max_hops": bad}})


def test_pools_and_their_errors() -> None:
    src = [{"address": "127.0.0.3", "ehlo": "m3.test"}, {"address": "::1", "ehlo": "m6.test", "weight": 3}]
    cfg = config.from_dict({"pool": [{"name": "bulk", "sender_domains": ["News.Test"], "sources": src}],
                            "suppression": {"fbl_addresses": ["FBL@x.test"], "auto": False}})  # fmt: skip
    [pool] = cfg.pools
    assert pool.sender_domains == ("news.test",) and [s.weight for s in pool.sources] == [1, 3]
    assert cfg.suppression.fbl_addresses == ("fbl@x.test",) and not cfg.suppression.auto
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"pool": [
            {"name": "default", "sources": [{"address": "nowhere", "ehlo": "m.test", "weight": 0}]},
            {"name": "default", "sources": [{"address": "127.0.0.3"}], "colour": "red"},
            {"name": "two words", "sources": []},
        ]})  # fmt: skip
    assert sorted(e.value.errors) == sorted([
        "pool[0].sources[0].weight: expected an integer from 1 to 1000",
        "pool[1].colour: unknown key",
        "pool: two pools share a name",
        'pool[0].name: "default" names the pool of mail no pool claims',
        "pool[0].sources[0].address: expected an IP address",
        'pool[1].name: "default" names the pool of mail no pool claims',
        "pool[1].sources[0].ehlo: required",
        "pool[2].name: expected a name of 1 to 64 printable characters without spaces",
        "pool[2].sources: needs at least one source",
    ])  # fmt: skip


def test_tls_policy_keys() -> None:
    d = config.from_dict({"delivery": {"mta_sts": False, "dane": True, "tls_rpt": True}}).delivery
    assert (d.mta_sts, d.dane, d.tls_rpt) == (False, True, True)
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"delivery": {"mta_sts": "yes", "dane": 1}})
    assert e.value.errors == [
        "delivery.mta_sts: expected true or false",
        "delivery.dane: expected true or false",
    ]


def test_cluster_defaults_keep_limits_node_local() -> None:
    c = config.from_dict({"hostname": "mx1.example.test"}).cluster
    assert (c.redis, c.node_id, c.on_redis_failure) == ("", "mx1.example.test", "local")
    assert (c.lease_ttl, c.batch, c.interval, c.timeout, c.prefix) == (30.0, 1000, 1.0, 0.5, "fastmta:")


def test_cluster_errors_name_their_key() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict({"cluster": {"redis": "127.0.0.1:6379", "on_redis_failure": "ignore", "batch": 0,
                                      "nodeid": "x"}})  # fmt: skip
    text = str(e.value)
    keys = ("cluster.redis:", "cluster.on_redis_failure:", "cluster.batch:", "cluster.nodeid: unknown key")
    for key in keys:
        assert key in text, key
    with pytest.raises(config.ConfigError, match=r"cluster\.lease_ttl: must be at least 3"):
        config.from_dict({"cluster": {"redis": "redis://127.0.0.1:6379/0", "lease_ttl": "2s"}})
    ok = config.from_dict({"cluster": {"redis": "redis://127.0.0.1:6379/0", "lease_ttl": "3s"}})
    assert ok.cluster.redis == "redis://127.0.0.1:6379/0"
