"""Tenant isolation end to end (issue 12): a real Keystone (sqlite, two
projects), a real hbd with a tenant listener, real guests, and the docker
CLI with one context per tenant whose config.json sends the tenant's token
(HttpHeaders). Each tenant runs its own `web`; every cross-tenant attempt
(ps, inspect by id, name and prefix, logs, exec, stop, rm, network ls and
inspect, volume ls and inspect, mounting the other's volume, events) finds
nothing, and no packet gets from one tenant's default bridge to the other's;
the operator's socket sees both. Three guests in all.

Then both tenants make a network of the same subnet (each tenant's networks
are in a network namespace of its own): an address of the other's is one of
its own space, the other's uplink is out of reach, names, published ports
and egress work in each, through a kill -9 and restart of hbd, and nothing
of either namespace is left once their networks are gone. Three more guests.

A port another tenant publishes is reached as any outsider reaches it: on
the host's addresses from outside the host, never on the host's 127.0.0.1,
and not from a tenant's container (nothing is forwarded from one tenant's
uplink to another's, as nothing is from one network's bridge to another's)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hbd.services.network.service import instance_tag
from hbd.services.network.spaces import space_names
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

    # Each tenant's default bridge is its own, in its own address space: both
    # take the first free pool, so B's web has A's web's address, which in
    # A's space is A's own; and B's space is out of A's reach.
    fmt = "{{range .NetworkSettings.Networks}}{{.NetworkID}} {{.IPAddress}} {{.Gateway}}{{end}}"
    a_net, a_ip, a_gateway = a.run("inspect", "-f", fmt, "web").stdout.split()
    b_net, b_ip, _ = b.run("inspect", "-f", fmt, "web").stdout.split()
    assert a_net != b_net and a_ip == b_ip
    assert a.run("exec", "web", "ping", "-c", "1", "-W", "5", a_gateway).returncode == 0
    tag = instance_tag(setup.daemon.data_root)
    b_space = _space(tag, setup.keystone.ids["tenant-b"])
    for address in (b_space.host_address, b_space.inner_address):
        unreachable = a.run("exec", "web", "ping", "-c", "2", "-W", "2", address, check=False)
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
# -- the same subnet in both tenants -----------------------------------------------------------

SAME = "10.231.7.0/24"
EGRESS_SERVER = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 8080))
server.listen(8)
print("ready", flush=True)
while True:
    conn, peer = server.accept()
    with conn:
        conn.recv(4096)
        body = f"egress-ok {peer[0]}".encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
"""


def _serve(text: str) -> list[str]:
    return ["sh", "-c", f"mkdir -p /www && echo {text} > /www/index.html && "
            "exec httpd -f -p 80 -h /www"]


@dataclass
class Space:
    """A tenant's namespace and uplink, as the host shows them."""

    namespace: str
    uplink: str
    host_address: str
    inner_address: str


def _space(tag: str, project: str) -> Space:
    namespace, uplink = space_names(tag, project)
    shown = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", uplink],
                           capture_output=True, text=True, check=True)
    info = json.loads(shown.stdout)[0]["addr_info"][0]
    host = ipaddress.IPv4Address(info["local"])
    return Space(namespace, uplink, str(host), str(host + 1))


@dataclass
class EgressListener:
    namespace: str
    address: str  # the listener's
    host_end: str  # the host's address on the link to it


@contextlib.contextmanager
def egress_listener() -> Iterator[EgressListener]:
    """An HTTP listener in a network namespace of the test's own, linked to
    the host by a veth pair of a free /30 of 198.18.0.0/15 (benchmarking)."""
    suffix = secrets.token_hex(3)
    namespace, host_end, peer = f"hbdtest-eg{suffix}", f"hte{suffix}", f"htp{suffix}"
    routes = subprocess.run(["ip", "-j", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    routed = [ipaddress.IPv4Network(r["dst"]) for r in json.loads(routes)
              if r.get("dst", "default") != "default"]
    subnet = next(s for s in ipaddress.IPv4Network("198.18.0.0/15").subnets(new_prefix=30)
                  if not any(s.overlaps(r) for r in routed) and
                  s.network_address.packed[2] == int(suffix[:2], 16))
    host_ip, listener_ip = (str(a) for a in list(subnet.hosts())[:2])
    for command in (f"netns add {namespace}",
                    f"link add {host_end} type veth peer name {peer} netns {namespace}",
                    f"addr add {host_ip}/30 dev {host_end}", f"link set {host_end} up",
                    f"-n {namespace} addr add {listener_ip}/30 dev {peer}",
                    f"-n {namespace} link set {peer} up",
                    f"-n {namespace} route add default via {host_ip}"):
        subprocess.run(["ip", *command.split()], check=True)
    server = subprocess.Popen(["ip", "netns", "exec", namespace, "python3", "-c",
                               EGRESS_SERVER, listener_ip], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield EgressListener(namespace, listener_ip, host_ip)
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "link", "del", host_end], check=False)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def _fetch(cli: TenantCli, container: str, url: str) -> subprocess.CompletedProcess[str]:
    # (busybox's `wget -T` crashes in these guests: `timeout` bounds it instead.)
    return cli.run("exec", container, "timeout", "8", "wget", "-qO-", url, check=False)


def _pings(cli: TenantCli, container: str, address: str) -> bool:
    result = cli.run("exec", container, "ping", "-c", "2", "-W", "2", address, check=False)
    assert result.returncode == 0 or " 0 packets received" in result.stdout, result.stdout
    return result.returncode == 0


def _host_get(port: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        return str(answer.read().decode().strip())


def _ns_pings(namespace: str, address: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", namespace, "busybox", "ping", "-c", "1",
                           "-W", "2", address], capture_output=True).returncode == 0


def _check_apart(a: TenantCli, b: TenantCli, space_a: Space, space_b: Space,
                 ports: dict[str, str], egress: EgressListener) -> None:
    """A and B on the same subnet, each in its own space (see the module's words)."""
    # 10.231.7.3 is B's web; in A's space it is nobody.
    assert _fetch(a, "sa-web", "http://10.231.7.3/").returncode != 0
    # 10.231.7.2 is A's web and B's pad: B reaches its own.
    assert _fetch(b, "sb-web", "http://10.231.7.2/").stdout.strip() == "pad-b"
    assert _fetch(a, "sa-web", "http://10.231.7.2/").stdout.strip() == "web-a"
    # Names, in each tenant's own DNS.
    assert _fetch(b, "sb-pad", "http://sb-web/").stdout.strip() == "web-b"
    assert _fetch(a, "sa-web", "http://sa-web/").stdout.strip() == "web-a"
    assert _fetch(a, "sa-web", "http://sb-web/").returncode != 0
    # Each reaches the host by its own uplink, never the other's uplink.
    for cli, container, own, other in ((a, "sa-web", space_a, space_b),
                                       (b, "sb-web", space_b, space_a)):
        assert _pings(cli, container, own.host_address)
        assert not _pings(cli, container, other.host_address)
        assert not _pings(cli, container, other.inner_address)
    # Published ports answer on the host; B's (on every host address) is
    # reached from its own space by the host's address, not from A's.
    assert _host_get(ports["a"]) == "web-a"
    assert _host_get(ports["b"]) == "web-b"
    assert _fetch(b, "sb-pad", f"http://{space_b.host_address}:{ports['b']}/").stdout.strip() \
        == "web-b"
    assert _fetch(a, "sa-web", f"http://{space_a.host_address}:{ports['b']}/").returncode != 0
    assert _fetch(a, "sa-web", f"http://{space_a.host_address}:{ports['a']}/").returncode != 0
    # Egress, masqueraded by the host on the way out.
    for cli, container in ((a, "sa-web"), (b, "sb-web")):
        reply = _fetch(cli, container, f"http://{egress.address}:8080/").stdout.split()
        assert reply == ["egress-ok", egress.host_end]


def _connect_twice(cli: TenantCli, container: str, space: Space) -> None:
    """A running container joins a network of its space, leaves it and joins
    it again: its spare tap moves into the namespace to be plugged, and back
    to the host's when unplugged, ready for the next."""
    cli.run("network", "create", "--subnet", "10.232.0.0/24", "side")
    for _ in range(2):
        cli.run("network", "connect", "side", container)
        assert _pings(cli, container, "10.232.0.1")
        in_space = subprocess.run(["ip", "-n", space.namespace, "-o", "link", "show"],
                                  capture_output=True, text=True, check=True).stdout
        cli.run("network", "disconnect", "side", container)
        after = subprocess.run(["ip", "-n", space.namespace, "-o", "link", "show"],
                               capture_output=True, text=True, check=True).stdout
        taps = {line.split(":")[1].strip() for line in in_space.splitlines()} - \
            {line.split(":")[1].strip() for line in after.splitlines()}
        assert len(taps) == 1  # the tap left the namespace, for the host's
        host = subprocess.run(["ip", "-o", "link", "show", taps.pop()], capture_output=True,
                              text=True)
        assert host.returncode == 0 and "master" not in host.stdout
    cli.run("network", "rm", "side")


def _left_behind(tag: str) -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    rules = subprocess.run(["nft", "list", "table", "ip", f"hbd_{tag}"], capture_output=True,
                           text=True).stdout
    return [line for line in namespaces.splitlines() if line.startswith(f"hbd{tag}-")] + \
        [line for line in links.splitlines() if f"hu{tag}" in line] + \
        [line for line in rules.splitlines() if f"hu{tag}" in line]


def test_the_same_subnet_in_two_tenants_stays_apart(setup: Setup) -> None:
    a, b, daemon = setup.a, setup.b, setup.daemon
    tag = instance_tag(daemon.data_root)
    project_a, project_b = setup.keystone.ids["tenant-a"], setup.keystone.ids["tenant-b"]
    for cli in (a, b):
        cli.run("network", "create", "--subnet", SAME, "same")
    a.run("run", "-d", "--name", "sa-web", "--network", "same", "-p", "127.0.0.1::80",
          "busybox", *_serve("web-a"))
    b.run("run", "-d", "--name", "sb-pad", "--network", "same", "busybox", *_serve("pad-b"))
    b.run("run", "-d", "--name", "sb-web", "--network", "same", "-p", "80", "busybox",
          *_serve("web-b"))
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    assert [cli.run("inspect", "-f", fmt, name).stdout.strip()
            for cli, name in ((a, "sa-web"), (b, "sb-pad"), (b, "sb-web"))] == \
        ["10.231.7.2", "10.231.7.2", "10.231.7.3"]
    # Both default bridges may share a subnet now.
    subnet_fmt = "{{(index .IPAM.Config 0).Subnet}}"
    assert a.run("network", "inspect", "-f", subnet_fmt, "bridge").stdout == \
        b.run("network", "inspect", "-f", subnet_fmt, "bridge").stdout
    ports = {key: cli.run("port", name, "80/tcp").stdout.splitlines()[0].rsplit(":", 1)[-1]
             for key, cli, name in (("a", a, "sa-web"), ("b", b, "sb-web"))}
    space_a, space_b = _space(tag, project_a), _space(tag, project_b)
    assert space_a.namespace != space_b.namespace
    with egress_listener() as egress:
        _check_apart(a, b, space_a, space_b, ports, egress)
        _connect_twice(a, "sa-web", space_a)
        # hbd killed: the rules stay in the kernel, and keep the spaces apart.
        daemon.process.kill()
        daemon.process.wait()
        assert _ns_pings(space_a.namespace, space_a.host_address)
        assert not _ns_pings(space_a.namespace, space_b.inner_address)
        assert not _ns_pings(space_b.namespace, space_a.host_address)
        daemon.crash_and_restart()
        assert _space(tag, project_a) == space_a
        _check_apart(a, b, space_a, space_b, ports, egress)

    daemon.docker("rm", "-f", *daemon.docker("ps", "-aq").stdout.decode().split())
    for cli in (a, b):
        cli.run("network", "rm", "same")
    assert _left_behind(tag) != []  # the default bridges still hold both spaces
    # Every tenant network (this module's others too), the default bridges last.
    names = daemon.docker("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
    tenant_networks = sorted((n for n in names if "@" in n), key=lambda n: n.startswith("bridge@"))
    assert f"bridge@{project_a}" in tenant_networks and f"bridge@{project_b}" in tenant_networks
    daemon.docker("network", "rm", *tenant_networks)
    assert _left_behind(tag) == []
