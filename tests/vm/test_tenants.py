"""Tenant isolation end to end (issue 12): a real Keystone (sqlite, two
projects), a real hbd with a tenant listener, real guests, and the docker
CLI with one context per tenant whose config.json sends the tenant's token
(HttpHeaders). Each tenant runs its own `web`; every cross-tenant attempt
(ps, inspect by id, name and prefix, logs, exec, stop, rm, network ls and
inspect, volume ls and inspect, mounting the other's volume, events) finds
nothing, and no packet gets from one tenant's default bridge to the other's;
the operator's socket sees both. Three guests in all."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon_fixture import DOCKER_CLI, RunningDaemon, hbd_daemon
from tests.keystone_fixture import PASSWORD, Keystone, keystone_installed, keystone_server

pytestmark = [pytest.mark.vm,
              pytest.mark.skipif(not keystone_installed(),
                                 reason="Debian's keystone is not installed (./install.sh)")]


@dataclass
class TenantCli:
    """The docker CLI of one tenant: its own config directory and context."""

    config_dir: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_CONFIG": str(self.config_dir)}
        env.pop("DOCKER_HOST", None)
        result = subprocess.run([DOCKER_CLI, *args], capture_output=True, text=True,
                                env=env, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr}")
        return result

    def fails(self, *args: str) -> str:
        result = self.run(*args, check=False)
        assert result.returncode != 0, f"docker {' '.join(args)} succeeded: {result.stdout}"
        return result.stderr


def _tenant_cli(base: Path, name: str, socket: Path, token: str) -> TenantCli:
    config_dir = base / name
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"HttpHeaders": {"X-Auth-Token": token}}))
    cli = TenantCli(config_dir)
    cli.run("context", "create", name, "--docker", f"host=unix://{socket}")
    cli.run("context", "use", name)
    return cli


@dataclass
class Setup:
    keystone: Keystone
    daemon: RunningDaemon
    a: TenantCli
    b: TenantCli


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("hbd-tenants")
    with keystone_server() as keystone:
        tenant_socket = base / "tenant.sock"
        config = base / "hbd.toml"
        config.write_text(f"""[keystone]
url = "{keystone.url}"
service_user = "hbd"
service_password = "{PASSWORD}"
service_project = "service"
tenant_hosts = ["unix://{tenant_socket}"]
""")
        with hbd_daemon(("-H", f"unix://{tenant_socket}", "--config", str(config))) as daemon:
            a = _tenant_cli(base, "tenant-a", tenant_socket,
                            keystone.token("alice", "tenant-a"))
            b = _tenant_cli(base, "tenant-b", tenant_socket,
                            keystone.token("bob", "tenant-b"))
            try:
                yield Setup(keystone, daemon, a, b)
            finally:
                daemon.docker("rm", "-f", *daemon.docker("ps", "-aq").stdout.decode().split(),
                              check=False)


def test_isolation_matrix(setup: Setup) -> None:
    a, b = setup.a, setup.b
    since = str(int(time.time()) - 1)
    a_id = a.run("run", "-d", "--name", "web", "-v", "avol:/data", "busybox", "sh", "-c",
                 "echo secret-a > /data/secret; echo hello-a; exec sleep 600").stdout.strip()
    b_id = b.run("run", "-d", "--name", "web", "busybox", "sleep", "600").stdout.strip()
    assert a_id != b_id
    # Each sees its own `web` only, by name, id and prefix.
    assert a.run("ps", "-q", "--no-trunc").stdout.split() == [a_id]
    assert b.run("ps", "-aq", "--no-trunc").stdout.split() == [b_id]
    assert a.run("inspect", "-f", "{{.Id}} {{.Name}}", "web").stdout.split() == [a_id, "/web"]
    for ref in (b_id, b_id[:12]):
        assert f"No such object: {ref}" in a.fails("inspect", ref)
        assert "No such container" in a.fails("logs", ref)
        assert "No such container" in a.fails("exec", ref, "true")
        assert "No such container" in a.fails("stop", "-t", "1", ref)
        # Without -f: were it found, a running container would be a conflict.
        assert "No such container" in a.fails("rm", ref)
    assert b.run("inspect", "-f", "{{.State.Running}}", b_id).stdout.strip() == "true"
    # Its own container answers.
    assert "hello-a" in a.run("logs", "web").stdout
    assert a.run("exec", "web", "cat", "/data/secret").stdout.strip() == "secret-a"

    # Networks and volumes.
    net_id = a.run("network", "create", "anet").stdout.strip()
    assert "anet" not in b.run("network", "ls", "--format", "{{.Name}}").stdout.split()
    for ref in ("anet", net_id[:12]):
        assert "not found" in b.fails("network", "inspect", ref)
    assert "not found" in b.fails("network", "connect", "anet", "web")
    assert "avol" not in b.run("volume", "ls", "-q").stdout.split()
    assert "no such volume" in b.fails("volume", "inspect", "avol")
    # "avol" in B is B's own: empty, not A's.
    listing = b.run("run", "--rm", "-v", "avol:/data", "busybox", "ls", "-A", "/data")
    assert listing.stdout.strip() == ""

    # Events: each tenant's own objects only.
    until = str(int(time.time()) + 1)
    b_events = b.run("events", "--since", since, "--until", until,
                     "--format", "{{.Actor.ID}}").stdout.split()
    assert b_id in b_events and a_id not in b_events and net_id not in b_events

    # Each tenant's default bridge is its own: no path from A's web to B's.
    fmt = "{{range .NetworkSettings.Networks}}{{.NetworkID}} {{.IPAddress}} {{.Gateway}}{{end}}"
    a_net, _, a_gateway = a.run("inspect", "-f", fmt, "web").stdout.split()
    b_net, b_ip, _ = b.run("inspect", "-f", fmt, "web").stdout.split()
    assert a_net != b_net
    assert a.run("exec", "web", "ping", "-c", "1", "-W", "5", a_gateway).returncode == 0
    unreachable = a.run("exec", "web", "ping", "-c", "2", "-W", "2", b_ip, check=False)
    assert unreachable.returncode != 0 and " 0 packets received" in unreachable.stdout

    # The operator sees both, with names that say whose.
    names = setup.daemon.docker("ps", "--format", "{{.Names}}").stdout.decode().split()
    project_a, project_b = setup.keystone.ids["tenant-a"], setup.keystone.ids["tenant-b"]
    assert sorted(names) == sorted([f"web@{project_a}", f"web@{project_b}"])


def test_policy_refusals_are_docker_style(setup: Setup) -> None:
    for args in (["--privileged"], ["-v", "/etc:/host"], ["--network", "host"],
                 ["--cap-add", "SYS_ADMIN"], ["--device", "/dev/null"]):
        message = setup.a.fails("run", "--rm", *args, "busybox", "true")
        assert "authorization denied by plugin hbd-tenancy" in message, (args, message)
