# SPDX-License-Identifier: MIT
"""Start-up checks of the files a configuration names: every error names its key, and
``check-config`` and ``serve`` refuse the same configurations with the same lines."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fastmta import config, preflight
from tests.fixtures.server import make_certs
from tests.support import ROOT, fastmta_cmd, free_port, require_tool, run_fastmta


def cfg_with(**sections: Any) -> config.Config:
    return config.from_dict({"hostname": "mx.fastmta.test", **sections})


def tls(cert: Path | str, key: Path | str) -> dict[str, Any]:
    return {"tls": {"cert_file": str(cert), "key_file": str(key)}}


def test_usable_files_pass(tmp_path: Path) -> None:
    _, cert, key, ca = make_certs(tmp_path)
    users = tmp_path / "users"
    users.write_text("bob:$6$salt$hash\n")
    auth = tmp_path / "auth"
    auth.write_text("# relay\nuser:secret\n")
    cfg = cfg_with(**tls(cert, key), delivery={"tls_ca_file": str(ca)},
                   policy={"users_file": str(users)}, local={"users_file": str(users)},
                   route=[{"domain": "*", "nexthop": "127.0.0.1:2626", "auth_file": str(auth)}],
                   log={"file": str(tmp_path / "delivery.log")})  # fmt: skip
    assert preflight.problems(cfg) == [] and preflight.warnings(cfg) == []


def test_missing_files_name_their_key(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")
    cfg = cfg_with(**tls(f"{gone}/cert.pem", f"{gone}/key.pem"), delivery={"tls_ca_file": f"{gone}/ca.pem"},
                   policy={"users_file": f"{gone}/users"}, local={"users_file": f"{gone}/local-users"},
                   route=[{"domain": "*", "nexthop": "127.0.0.1:2626", "auth_file": f"{gone}/auth"}],
                   log={"file": f"{gone}/delivery.log"})  # fmt: skip
    assert preflight.problems(cfg) == [
        f"tls.cert_file: no such file: {gone}/cert.pem",
        f"tls.key_file: no such file: {gone}/key.pem",
        f"delivery.tls_ca_file: no such file: {gone}/ca.pem",
        f"policy.users_file: no such file: {gone}/users",
        f"local.users_file: no such file: {gone}/local-users",
        f"route[0].auth_file: no such file: {gone}/auth",
        f"log.file: no such directory: {gone}",
    ]


def test_unparseable_files_name_their_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    users = tmp_path / "users"
    users.write_text("no hash here\n")
    empty = tmp_path / "auth"
    empty.write_text("# nothing\n")
    cfg = cfg_with(**tls(junk, junk), delivery={"tls_ca_file": str(junk)}, policy={"users_file": str(users)},
                   route=[{"domain": "*", "nexthop": "127.0.0.1:2626", "auth_file": str(empty)}])  # fmt: skip
    errors = preflight.problems(cfg)
    assert errors[:2] == [
        f"tls.cert_file: no PEM certificate in {junk}",
        f"tls.key_file: no PEM private key in {junk}",
    ]
    assert errors[2].startswith(f"delivery.tls_ca_file: no usable CA certificate in {junk}")
    assert errors[3] == f"policy.users_file: {users}:1: expected user:hash"
    assert errors[4] == f'route[0].auth_file: no "user:password" line in {empty}'
    assert len(errors) == 5


def test_key_of_another_certificate(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, cert, _, _ = make_certs(tmp_path / "a")
    _, _, other_key, _ = make_certs(tmp_path / "b")
    [error] = preflight.problems(cfg_with(**tls(cert, other_key)))
    assert error.startswith(f"tls.key_file: cannot be loaded with tls.cert_file {cert}")


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    _, _, key, _ = make_certs(tmp_path)
    errors = preflight.problems(cfg_with(**tls(tmp_path, key)))
    assert errors == [f"tls.cert_file: is a directory, not a file: {tmp_path}"]


def test_warnings(tmp_path: Path) -> None:
    cfg = config.from_dict({"hostname": "localhost", "local": {"lmtp": f"unix:{tmp_path}/no/lmtp"}})
    hostname, lmtp = preflight.warnings(cfg)
    assert hostname.startswith("hostname: is 'localhost'") and "MAILER-DAEMON@localhost" in hostname
    assert lmtp == f"local.lmtp: no such directory (is the LMTP server installed?): {tmp_path}/no"


def test_check_config_and_serve_refuse_a_missing_certificate(tmp_path: Path) -> None:
    path = tmp_path / "fastmta.toml"
    path.write_text(f'hostname = "mx.fastmta.test"\n[[listener]]\naddress = "127.0.0.1:{free_port()}"\n'
                    f'tls = "starttls"\n[tls]\ncert_file = "/x/cert.pem"\nkey_file = "/x/key.pem"\n'
                    f'[spool]\npath = "{tmp_path / "spool"}"\n[metrics]\naddress = ""\n')  # fmt: skip
    for command in ("check-config", "serve"):
        r = run_fastmta(command, "--config", str(path), timeout=30)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.decode().splitlines() == [
            "tls.cert_file: no such file: /x/cert.pem",
            "tls.key_file: no such file: /x/key.pem",
        ]
    assert not (tmp_path / "spool").exists()  # serve stopped before touching anything


def test_local_owner_needs_root() -> None:
    """check-config (and so serve) run as another user than root refuse ``[local] owner``,
    naming the key; as root it passes."""
    with tempfile.TemporaryDirectory() as folder:  # outside pytest's 0700 tree: nobody reads it
        os.chmod(folder, 0o755)
        path = Path(folder) / "fastmta.toml"
        path.write_text('hostname = "mx.fastmta.test"\n[local]\nowner = "root"\n[metrics]\naddress = ""\n')
        path.chmod(0o644)
        assert run_fastmta("check-config", "--config", str(path)).returncode == 0
        r = subprocess.run([require_tool("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            *fastmta_cmd("check-config", "--config", str(path))],
                           capture_output=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.decode().splitlines() == [
        "local.owner: giving mail to uid 0 gid 0 needs root; fastmta runs as uid 65534"
    ]


def test_check_config_warns_about_a_localhost_hostname(tmp_path: Path) -> None:
    path = tmp_path / "fastmta.toml"
    path.write_text('hostname = "localhost"\n')
    r = run_fastmta("check-config", "--config", str(path))
    assert r.returncode == 0
    assert r.stderr.decode().startswith("warning: hostname: is 'localhost'")
