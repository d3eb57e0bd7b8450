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
from tests.registry_fixture import PASSWORD as REGISTRY_PASSWORD
from tests.registry_fixture import USER as REGISTRY_USER
from tests.registry_fixture import registry

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


# -- images, build cache, registry (issue 12: private tags, no cache leak) ------------------


def _legacy_build(cli: TenantCli, context: Path, tag: str) -> str:
    """`DOCKER_BUILDKIT=0 docker build -t TAG CONTEXT` as the tenant; its output."""
    env = {**os.environ, "DOCKER_CONFIG": str(cli.config_dir), "DOCKER_BUILDKIT": "0"}
    env.pop("DOCKER_HOST", None)
    result = subprocess.run([DOCKER_CLI, "build", "-t", tag, str(context)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_image_and_build_cache_isolation(setup: Setup, tmp_path: Path) -> None:
    a, b = setup.a, setup.b
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo built > /built\n"
                                         "LABEL app=yes\n")
    _legacy_build(a, tmp_path, "app")
    a_id = a.run("image", "inspect", "-f", "{{.Id}}", "app").stdout.strip()
    assert " ---> Using cache" in _legacy_build(a, tmp_path, "app")
    # B's build of the same Dockerfile is no hit of A's cache: its own RUN, its own image.
    b_out = _legacy_build(b, tmp_path, "app")
    b_id = b.run("image", "inspect", "-f", "{{.Id}}", "app").stdout.strip()
    assert " ---> Using cache" not in b_out and b_id != a_id
    # Each sees its own `app` (and the operator's busybox), none of the other's.
    for cli, own, other in ((a, a_id, b_id), (b, b_id, a_id)):
        listed = cli.run("images", "--no-trunc", "--format", "{{.Repository}} {{.ID}}")
        assert sorted(listed.stdout.splitlines())[0] == f"app {own}"
        assert other not in listed.stdout
        for ref in (other, other[7:19]):
            assert "No such image" in cli.fails("image", "inspect", ref)
            assert "No such image" in cli.fails("rmi", ref)
            assert "No such image" in cli.fails("history", ref)
        assert cli.run("run", "--rm", "app", "cat", "/built").stdout.strip() == "built"
        df = cli.run("system", "df", "-v").stdout  # short IDs, build cache records
        assert own[7:19] in df and other[7:19] not in df
    # The operator's catalogue is read-only for a tenant.
    assert "authorization denied by plugin hbd-tenancy" in a.fails("rmi", "busybox")
    # B's builder prune leaves A's cache; A's rmi leaves B's image.
    b.run("builder", "prune", "-f")
    assert " ---> Using cache" in _legacy_build(a, tmp_path, "app")
    a.run("rmi", "app")
    assert b.run("image", "inspect", "-f", "{{.Id}}", "app").stdout.strip() == b_id
    # The operator sees B's tag qualified with its project (in the API's answers: the
    # CLI's `docker images` shows a tag it cannot parse as <none>).
    operator_tags = setup.daemon.docker("image", "inspect", "-f", "{{json .RepoTags}}", b_id)
    project_b = setup.keystone.ids["tenant-b"]
    assert json.loads(operator_tags.stdout) == [f"app:latest@{project_b}"]
    b.run("rmi", "app")


def test_no_cross_tenant_registry_cache_leak(setup: Setup, tmp_path: Path) -> None:
    a, b = setup.a, setup.b
    (tmp_path / "Dockerfile").write_text("FROM busybox\nLABEL secret=tenant-a\n")
    with registry("basic") as reg:
        ref = f"{reg.host}/private/app:1"
        _legacy_build(a, tmp_path, ref)
        a.run("login", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, reg.host)
        pushed = a.run("push", ref).stdout
        digest = next(w for w in pushed.split() if w.startswith("sha256:"))
        by_digest = f"{reg.host}/private/app@{digest}"
        # The content is here, but B may not read it from the registry: B gets the
        # registry's refusal, and nothing of it by tag or digest.
        assert "pull access denied" in b.fails("pull", ref)
        assert "pull access denied" in b.fails("pull", by_digest)
        for name in (ref, by_digest):
            assert "No such image" in b.fails("image", "inspect", name)
        assert "pull access denied" in b.fails("run", "--rm", by_digest, "true")
        # With its own credentials the registry lets it: then the local content serves.
        b.run("login", "-u", REGISTRY_USER, "-p", REGISTRY_PASSWORD, reg.host)
        b.run("pull", by_digest)
        labels = b.run("image", "inspect", "-f", "{{.Config.Labels.secret}}", by_digest)
        assert labels.stdout.strip() == "tenant-a"
        a.run("logout", reg.host)
        b.run("logout", reg.host)
        a.run("rmi", ref)
        b.run("rmi", by_digest)


def test_a_commit_is_the_tenants_own(setup: Setup) -> None:
    a, b = setup.a, setup.b
    a.run("run", "--name", "committed", "busybox", "sh", "-c", "echo mine > /mark")
    try:
        a.run("commit", "committed", "snap:1")
        snap = a.run("image", "inspect", "-f", "{{.Id}}", "snap:1").stdout.strip()
        assert a.run("run", "--rm", "snap:1", "cat", "/mark").stdout.strip() == "mine"
        assert "No such image" in b.fails("image", "inspect", "snap:1")
        assert "No such image" in b.fails("image", "inspect", snap)
        assert "snap" not in b.run("images", "--format", "{{.Repository}}").stdout
    finally:
        a.run("rm", "-f", "committed", check=False)
        a.run("rmi", "snap:1", check=False)
