"""Tenant-private objects (issue 12) through the real API and services (fake
sandbox driver), two tenants on a tenant listener and the operator on its
own socket: each tenant sees and reaches its own containers, execs,
volumes, networks and events only; another's is absent (404, dockerd's
words); names are unique per tenant; the operator sees everything, tenant
objects by their qualified names."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from hbd.config import Config, QuotaSettings, TenantSettings
from hbd.services.identity.validator import Identity
from tests.api.conftest import ApiDaemon, serve_api_daemon
from tests.api.test_networks_api import guest, hosts_file
from tests.daemon_fixture import BUSYBOX_TAR
from tests.fakes import text_tar

PROJECT_A = "a" * 32
PROJECT_B = "b" * 32
TOKENS = {
    "token-a": Identity(PROJECT_A, "tenant-a", "u-a", "alice", frozenset({"member"})),
    "token-b": Identity(PROJECT_B, "tenant-b", "u-b", "bob", frozenset({"member"})),
}

pytestmark = pytest.mark.skipif(not BUSYBOX_TAR.exists(), reason="no busybox image")


@dataclass
class Tenants:
    api: ApiDaemon
    a: docker.APIClient
    b: docker.APIClient
    operator: docker.APIClient


def _tenant_client(api: ApiDaemon, token: str) -> docker.APIClient:
    client = docker.APIClient(base_url=f"unix://{api.tenant_socket}", version="1.47")
    client.headers["X-Auth-Token"] = token
    return client


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    with serve_api_daemon(tmp_path_factory.mktemp("hbd-tenants"), TOKENS) as api:
        operator = docker.APIClient(base_url=api.host, version="1.47")
        yield Tenants(api, _tenant_client(api, "token-a"), _tenant_client(api, "token-b"),
                      operator)


@pytest.fixture(autouse=True)
def clean(tenants: Tenants) -> Iterator[None]:
    yield
    op = tenants.operator
    for c in op.containers(all=True):
        op.remove_container(c["Id"], force=True)
    for n in op.networks():
        if n["Name"] not in ("bridge", "host", "none"):
            op.remove_network(n["Id"])
    for v in op.volumes()["Volumes"] or []:
        op.remove_volume(v["Name"], force=True)


def _error(call: object, *args: object, **kwargs: object) -> tuple[int, str]:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except docker.errors.APIError as e:
        assert e.response is not None
        return e.response.status_code, str(e.explanation)
    raise AssertionError(f"{call} succeeded")


def _web(client: docker.APIClient, name: str = "web", **host: object) -> str:
    cid: str = client.create_container(
        "busybox", ["sleep", "600"], name=name,
        host_config=client.create_host_config(**host) if host else None)["Id"]
    return cid


def test_each_tenant_has_its_own_web_and_sees_only_it(tenants: Tenants) -> None:
    a_id = _web(tenants.a)
    b_id = _web(tenants.b)
    assert a_id != b_id
    for client, own in ((tenants.a, a_id), (tenants.b, b_id)):
        listed = client.containers(all=True)
        assert [(c["Id"], c["Names"]) for c in listed] == [(own, ["/web"])]
        assert client.inspect_container("web")["Id"] == own
        assert client.inspect_container(own[:12])["Name"] == "/web"
        assert client.containers(all=True, filters={"name": "^web$"})[0]["Id"] == own
    # A second `web` in one tenant is a conflict named as the tenant knows it.
    status, message = _error(_web, tenants.a)
    assert status == 409 and '"/web" is already in use' in message and "@" not in message


def test_another_tenants_container_is_absent(tenants: Tenants) -> None:
    b_id = _web(tenants.b, name="only-b")
    tenants.b.start(b_id)
    a = tenants.a
    for ref in (b_id, b_id[:12], "only-b"):
        assert _error(a.inspect_container, ref) == (404, f"No such container: {ref}")
        for call in (a.start, a.stop, a.kill, a.pause, a.restart, a.remove_container,
                     a.top, a.wait):
            status, message = _error(call, ref)
            # dockerd's words, some with a prefix ("Cannot kill container: X: ...").
            assert status == 404 and message.endswith(f"No such container: {ref}"), call
        assert _error(a.logs, ref)[0] == 404
        assert _error(a.exec_create, ref, ["true"]) == (404, f"No such container: {ref}")
        assert _error(a.rename, ref, "mine")[0] == 404
        assert _error(a.get_archive, ref, "/etc")[0] == 404
        assert _error(a.put_archive, ref, "/tmp", b"")[0] == 404
        assert _error(a.diff, ref)[0] == 404
        assert _error(lambda r: list(a.export(r)), ref)[0] == 404
        assert _error(a.stats, ref, stream=False)[0] == 404
        assert _error(a.attach, ref, stream=False)[0] == 404
        assert _error(a.resize, ref, 10, 10)[0] == 404
        assert _error(a.update_container, ref, mem_limit="64m")[0] == 404
        assert _error(a.commit, ref, "stolen")[0] == 404
    assert a.containers(all=True) == []
    assert a.containers(all=True, filters={"id": b_id}) == []
    # Still there and running for its owner.
    assert tenants.b.inspect_container(b_id)["State"]["Running"]


def test_another_tenants_exec_is_absent(tenants: Tenants) -> None:
    b_id = _web(tenants.b)
    tenants.b.start(b_id)
    exec_id = tenants.b.exec_create(b_id, ["true"])["Id"]
    status, message = _error(tenants.a.exec_inspect, exec_id)
    assert status == 404 and exec_id in message
    assert _error(tenants.a.exec_start, exec_id)[0] == 404
    assert tenants.b.exec_inspect(exec_id)["ContainerID"] == b_id


def test_operator_sees_everything_with_unambiguous_names(tenants: Tenants) -> None:
    a_id = _web(tenants.a)
    b_id = _web(tenants.b)
    op_id = _web(tenants.operator)
    names = {c["Id"]: c["Names"] for c in tenants.operator.containers(all=True)}
    assert names == {a_id: [f"/web@{PROJECT_A}"], b_id: [f"/web@{PROJECT_B}"],
                     op_id: ["/web"]}
    assert tenants.operator.inspect_container(f"web@{PROJECT_B}")["Id"] == b_id
    assert tenants.operator.inspect_container("web")["Id"] == op_id
    # The operator's own `web` is not a tenant's either.
    assert tenants.a.inspect_container("web")["Id"] == a_id


def test_tenant_names_may_not_carry_the_owner_mark(tenants: Tenants) -> None:
    status, _ = _error(_web, tenants.a, name=f"web@{PROJECT_B}")
    assert status == 400
    assert _error(tenants.a.create_network, f"net@{PROJECT_B}")[0] == 400
    assert _error(tenants.a.create_volume, f"data@{PROJECT_B}")[0] == 400


def test_volumes_are_private_and_names_per_tenant(tenants: Tenants) -> None:
    tenants.a.create_volume("data", labels={"who": "a"})
    tenants.b.create_volume("data", labels={"who": "b"})
    tenants.b.create_volume("only-b")
    assert [v["Name"] for v in tenants.a.volumes()["Volumes"]] == ["data"]
    assert tenants.a.inspect_volume("data")["Labels"] == {"who": "a"}
    assert tenants.b.inspect_volume("data")["Labels"] == {"who": "b"}
    assert _error(tenants.a.inspect_volume, "only-b") == (404, "get only-b: no such volume")
    assert _error(tenants.a.remove_volume, "only-b")[0] == 404
    # Mounting "only-b" in A makes A's own volume of that name, not B's.
    cid = _web(tenants.a, name="user", binds=["only-b:/d"])
    mounts = tenants.a.inspect_container(cid)["Mounts"]
    assert [(m["Name"], m["Destination"]) for m in mounts] == [("only-b", "/d")]
    operator_names = sorted(v["Name"] for v in tenants.operator.volumes()["Volumes"])
    assert operator_names == sorted([f"data@{PROJECT_A}", f"data@{PROJECT_B}",
                                     f"only-b@{PROJECT_A}", f"only-b@{PROJECT_B}"])
    # Prune takes the tenant's own only.
    tenants.a.remove_container(cid)
    tenants.a.prune_volumes({"all": ["true"]})
    left = sorted(v["Name"] for v in tenants.operator.volumes()["Volumes"])
    assert left == sorted([f"data@{PROJECT_B}", f"only-b@{PROJECT_B}"])


def test_networks_are_private(tenants: Tenants) -> None:
    net_id = tenants.a.create_network("front")["Id"]
    b_names = [n["Name"] for n in tenants.b.networks()]
    assert "front" not in b_names and set(b_names) <= {"bridge", "host", "none"}
    assert "front" in [n["Name"] for n in tenants.a.networks()]
    assert tenants.a.inspect_network("front")["Id"] == net_id
    for ref in ("front", net_id, net_id[:12]):
        status, message = _error(tenants.b.inspect_network, ref)
        assert status == 404 and ref in message
        assert _error(tenants.b.remove_network, ref)[0] == 404
    b_id = _web(tenants.b)
    assert _error(tenants.b.connect_container_to_network, b_id, net_id)[0] == 404
    assert _error(_web, tenants.b, name="joiner", network_mode="front")[0] == 404
    # B's own `front` is another network.
    b_net = tenants.b.create_network("front")["Id"]
    assert b_net != net_id
    a_id = _web(tenants.a, name="member", network_mode="front")
    networks = tenants.a.inspect_container(a_id)["NetworkSettings"]["Networks"]
    assert list(networks) == ["front"] and networks["front"]["NetworkID"] == net_id


def test_each_tenant_has_a_default_bridge_of_its_own(tenants: Tenants) -> None:
    a_id = _web(tenants.a)
    b_id = _web(tenants.b)
    op_id = _web(tenants.operator)
    bridges = {}
    for client, cid in ((tenants.a, a_id), (tenants.b, b_id), (tenants.operator, op_id)):
        networks = client.inspect_container(cid)["NetworkSettings"]["Networks"]
        assert list(networks) == ["bridge"]
        bridges[cid] = networks["bridge"]["NetworkID"]
        assert client.inspect_network("bridge")["Id"] == bridges[cid]
    for client in (tenants.a, tenants.b):
        assert sorted(n["Name"] for n in client.networks()) == ["bridge", "host", "none"]
    assert len(set(bridges.values())) == 3
    operator_names = {n["Name"]: n["Id"] for n in tenants.operator.networks()}
    assert operator_names[f"bridge@{PROJECT_A}"] == bridges[a_id]
    # A tenant's default bridge is predefined: not its to remove or make.
    status, message = _error(tenants.a.remove_network, "bridge")
    assert (status, message) == (403, "bridge is a pre-defined network and cannot be removed")
    assert _error(tenants.a.create_network, "bridge")[0] == 403
    # `--network bridge` and `--network default` are the tenant's own too.
    for mode in ("bridge", "default"):
        cid = _web(tenants.a, name=f"on-{mode}", network_mode=mode)
        networks = tenants.a.inspect_container(cid)["NetworkSettings"]["Networks"]
        assert networks["bridge"]["NetworkID"] == bridges[a_id]


def test_container_modes_and_volumes_from_reach_own_containers_only(tenants: Tenants) -> None:
    b_id = _web(tenants.b, binds=["secret:/s"])
    tenants.b.start(b_id)
    for mode in ("pid_mode", "ipc_mode"):  # dockerd: 400 at create for a missing one
        status, message = _error(_web, tenants.a, name="peer", **{mode: f"container:{b_id}"})
        assert status == 400 and f"No such container: {b_id}" in message, (mode, message)
    # A missing network peer fails at start, as in dockerd.
    peer = _web(tenants.a, name="peer", network_mode=f"container:{b_id}")
    status, message = _error(tenants.a.start, peer)
    assert status == 404 and f"No such container: {b_id}" in message
    status, message = _error(_web, tenants.a, name="thief", volumes_from=[b_id])
    assert status == 404 and "No such container" in message


def test_links_name_the_tenants_own_containers(tenants: Tenants) -> None:
    a = tenants.a
    child = a.create_container("busybox", ["sleep", "600"], name="kid", hostname="chost",
                               environment=["FOO=bar"])["Id"]
    a.start(child)
    parent = a.create_container("busybox", ["sleep", "600"], name="dad",
                                host_config=a.create_host_config(links={"kid": "db"}))["Id"]
    a.start(parent)
    assert a.inspect_container(parent)["HostConfig"]["Links"] == ["/kid:/dad/db"]
    ip = a.inspect_container(child)["NetworkSettings"]["IPAddress"]
    assert ip  # the default bridge's address, at the top level as dockerd shows it
    assert f"{ip}\tdb chost kid" in hosts_file(guest(tenants.api, parent)).splitlines()
    exec_id = a.exec_create(parent, ["env"])["Id"]
    env = a.exec_start(exec_id).decode().splitlines()
    assert "DB_NAME=/dad/db" in env and "DB_ENV_FOO=bar" in env
    # Another tenant's `kid` is no child of A's, nor is A's parent B's to unlink.
    assert _error(_web, tenants.b, name="b-dad", links={"kid": "db"})[0] == 400
    assert _error(tenants.b.remove_container, "dad/db", link=True)[0] == 404
    a.remove_container("dad/db", link=True)
    assert not a.inspect_container(parent)["HostConfig"]["Links"]


def _events(client: docker.APIClient) -> list[dict[str, object]]:
    until = time.time() + 0.5
    raw = client._get(client._url("/events"), params={"since": str(until - 60),
                                                      "until": str(until)})
    return [json.loads(line) for line in raw.text.splitlines() if line.strip()]


def test_events_show_own_objects_only(tenants: Tenants) -> None:
    a_id = _web(tenants.a)
    b_id = _web(tenants.b, name="bweb")
    tenants.b.create_volume("bvol")
    a_events = _events(tenants.a)
    actors = {e["Actor"]["ID"] for e in a_events}  # type: ignore[index]
    assert a_id in actors and b_id not in actors and "bvol" not in actors
    names = {e["Actor"]["Attributes"].get("name") for e in a_events  # type: ignore[index]
             if e["Actor"]["ID"] == a_id}  # type: ignore[index]
    assert names == {"web"}
    operator_actors = {e["Actor"]["ID"] for e in _events(tenants.operator)}  # type: ignore[index]
    assert {a_id, b_id, f"bvol@{PROJECT_B}"} <= operator_actors


def test_system_df_and_info_count_own_objects(tenants: Tenants) -> None:
    a_id = _web(tenants.a, binds=["avol:/d"])
    b_id = _web(tenants.b, binds=["bvol:/d"])
    df = tenants.a.df()
    assert [c["Id"] for c in df["Containers"]] == [a_id]
    assert [(v["Name"], v["UsageData"]["RefCount"]) for v in df["Volumes"]] == [("avol", 1)]
    assert tenants.a.info()["Containers"] == 1
    operator_df = tenants.operator.df()
    assert {c["Id"] for c in operator_df["Containers"]} == {a_id, b_id}
    assert tenants.operator.info()["Containers"] == 2


def test_tenant_errors_never_show_the_qualifier(tenants: Tenants) -> None:
    assert _error(tenants.a.inspect_container, "ghost") == (404, "No such container: ghost")
    assert _error(tenants.a.inspect_network, "ghost") == (404, "network ghost not found")


# -- policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "what"), [
    ({"binds": ["/etc:/host-etc"]}, "host bind mount /etc"),
    ({"mounts": [docker.types.Mount("/m", "/tmp", type="bind")]}, "host bind mount /tmp"),
    ({"privileged": True}, "--privileged"),
    ({"network_mode": "host"}, "--network host"),
    ({"devices": ["/dev/null:/dev/xnull"]}, "access to devices"),
    ({"device_cgroup_rules": ["c 1:3 rwm"]}, "access to devices"),
    ({"cap_add": ["SYS_ADMIN"]}, "--cap-add CAP_SYS_ADMIN"),
    ({"cap_add": ["ALL"]}, "--cap-add ALL"),
])
def test_policy_refuses_what_reaches_the_host(tenants: Tenants, host: dict[str, object],
                                              what: str) -> None:
    status, message = _error(_web, tenants.a, name="refused", **host)
    assert status == 403, message
    assert message.startswith(f"authorization denied by plugin hbd-tenancy: {what}")
    assert tenants.a.containers(all=True) == []


def test_policy_holds_for_a_tenants_build_steps(tenants: Tenants) -> None:
    # A RUN step's container is the tenant's: `docker build --network host` is refused.
    messages = list(tenants.a.build(fileobj=text_tar({"Dockerfile": "FROM busybox\nRUN true\n"}),
                                    custom_context=True, decode=True, network_mode="host"))
    errors = [m.get("error", "") for m in messages if "error" in m]
    assert errors and "authorization denied by plugin hbd-tenancy: --network host" in errors[0]


def test_policy_allows_docker_defaults(tenants: Tenants) -> None:
    # Docker's default capabilities, dropping any, volumes and tmpfs are fine.
    cid = _web(tenants.a, name="fine", cap_add=["CHOWN", "NET_RAW"], cap_drop=["ALL"],
               binds=["data:/data"], tmpfs={"/t": ""})
    assert tenants.a.inspect_container(cid)["HostConfig"]["CapAdd"] == ["CHOWN", "NET_RAW"]
    # The operator is bound by none of it.
    op = _web(tenants.operator, name="op", cap_add=["SYS_ADMIN"], binds=["/etc:/e:ro"])
    assert tenants.operator.inspect_container(op)["HostConfig"]["CapAdd"] == ["SYS_ADMIN"]


def test_policy_refuses_a_privileged_exec(tenants: Tenants) -> None:
    cid = _web(tenants.a)
    tenants.a.start(cid)
    status, message = _error(tenants.a.exec_create, cid, ["true"], privileged=True)
    assert status == 403 and "a privileged exec" in message
    assert tenants.a.exec_create(cid, ["true"])["Id"]


# -- quotas ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    config = Config()
    config.quotas = QuotaSettings(containers=2, vcpus=2, memory_mib=512, volume_gib=10,
                                  projects={"tenant-b": {"containers": 0, "vcpus": 0,
                                                         "memory_mib": 0}})
    with serve_api_daemon(tmp_path_factory.mktemp("hbd-quotas"), TOKENS, config) as api:
        operator = docker.APIClient(base_url=api.host, version="1.47")
        yield Tenants(api, _tenant_client(api, "token-a"), _tenant_client(api, "token-b"),
                      operator)


def _quota_error(kind: str, limit: int, used: str, more: str) -> str:
    return (f"quota exceeded for project tenant-a: {kind} {limit}: {used} in use, "
            f"{more} more requested")


def test_container_quotas(limited: Tenants) -> None:
    a = limited.a
    first = _web(a, name="first")  # vm.memory_mib (256) and one vCPU without limits
    status, message = _error(_web, a, name="big", mem_limit="300m")
    assert (status, message) == (403, _quota_error("memory_mib", 512, "256 MiB of memory",
                                                   "300 MiB of memory"))
    _web(a, name="second", mem_limit="256m")
    status, message = _error(_web, a, name="third")
    assert (status, message) == (403, _quota_error("containers", 2, "2", "1"))
    a.remove_container(first)
    status, message = _error(_web, a, name="wide", nano_cpus=2_000_000_000)
    assert (status, message) == (403, _quota_error("vcpus", 2, "1 vCPUs", "2 vCPUs"))
    _web(a, name="narrow", nano_cpus=500_000_000)
    # `docker update` stays within them too.
    status, message = _error(a.update_container, "narrow", mem_limit="400m")
    assert (status, message) == (403, _quota_error("memory_mib", 512, "256 MiB of memory",
                                                   "400 MiB of memory"))
    a.update_container("narrow", mem_limit="200m")
    # Tenant B's own quotas (by project name) lift those limits; the operator has none.
    for n in range(3):
        _web(limited.b, name=f"b{n}", nano_cpus=2_000_000_000, mem_limit="400m")
        _web(limited.operator, name=f"op{n}")


def test_volume_quota(limited: Tenants) -> None:
    a = limited.a
    a.create_volume("disk1", driver_opts={"type": "block", "size": "6g"})
    status, message = _error(a.create_volume, "disk2",
                             driver_opts={"type": "block", "size": "6g"})
    assert (status, message) == (403, _quota_error("volume_gib", 10, "6 GiB of volumes",
                                                   "6 GiB of volumes"))
    a.create_volume("disk2", driver_opts={"type": "block", "size": "4g"})
    a.create_volume("shared")  # no size of its own
    assert sorted(v["Name"] for v in a.volumes()["Volumes"]) == ["disk1", "disk2", "shared"]
    for v in ("disk1", "disk2", "shared"):
        a.remove_volume(v)


# -- images and build cache ----------------------------------------------------------------


@pytest.fixture
def images(tenants: Tenants) -> Iterator[Tenants]:
    """Tenants whose images (and build cache) go after the test; busybox stays."""
    yield tenants
    op = tenants.operator
    for client in (tenants.a, tenants.b, op):
        client.prune_builds()
    for img in op.images(all=True):
        if "busybox:latest" not in (img["RepoTags"] or []):
            op.remove_image(img["Id"], force=True)
    for tag in op.images("busybox")[0]["RepoTags"]:
        if tag != "busybox:latest":
            op.remove_image(tag)


def _build_image(client: docker.APIClient, tag: str, dockerfile: str) -> tuple[str, list[str]]:
    """(the image's ID, the build's output)."""
    out = [m.get("stream", "") + m.get("error", "") for m in client.build(
        fileobj=text_tar({"Dockerfile": dockerfile}), custom_context=True, decode=True,
        tag=tag)]
    assert not any(m.startswith("error") for m in out)
    return str(client.inspect_image(tag)["Id"]), out


def _labelled(client: docker.APIClient, tag: str, who: str) -> str:
    return _build_image(client, tag, f"FROM busybox\nLABEL who={who}\n")[0]


def test_image_tags_are_private_per_tenant(images: Tenants) -> None:
    a, b, op = images.a, images.b, images.operator
    a_id = _labelled(a, "app", "a")
    b_id = _labelled(b, "app", "b")
    assert a_id != b_id
    busybox = op.inspect_image("busybox")["Id"]
    for client, own, who in ((a, a_id, "a"), (b, b_id, "b")):
        assert client.inspect_image("app")["Id"] == own
        assert client.inspect_image("app:latest")["Config"]["Labels"] == {"who": who}
        assert client.inspect_image("app")["RepoTags"] == ["app:latest"]
        listed = {i["Id"]: i["RepoTags"] for i in client.images()}
        assert listed == {own: ["app:latest"], busybox: ["busybox:latest"]}
        assert [i["Id"] for i in client.images("app")] == [own]
        assert [i["Id"] for i in client.images(filters={"reference": "app"})] == [own]
        assert client.info()["Images"] == 2
    operator_tags = {i["Id"]: i["RepoTags"] for i in op.images()}
    assert operator_tags[a_id] == [f"app:latest@{PROJECT_A}"]
    assert operator_tags[b_id] == [f"app:latest@{PROJECT_B}"]
    assert _error(op.inspect_image, "app") == (404, "No such image: app:latest")


def test_another_tenants_image_is_absent(images: Tenants) -> None:
    a = images.a
    b_id = _labelled(images.b, "only-b", "b")
    for ref in (b_id, b_id[7:19], "only-b"):
        # dockerd's words: what parses as a name is named with its tag.
        shown = ref if ref == b_id else f"{ref}:latest"
        assert _error(a.inspect_image, ref) == (404, f"No such image: {shown}")
        assert _error(a.history, ref) == (404, f"No such image: {shown}")
        assert _error(a.remove_image, ref) == (404, f"No such image: {shown}")
        assert _error(a.tag, ref, "stolen") == (404, f"No such image: {shown}")
        assert _error(lambda r: b"".join(a.get_image(r)), ref)[0] == 404
        assert _error(a.create_container, ref, ["true"])[0] == 404
    assert a.images(all=True, filters={"label": "who=b"}) == []
    assert _error(a.images, filters={"since": b_id}) == (404, f"No such image: {b_id}")
    assert a.containers(all=True, filters={"ancestor": b_id}) == []
    # Untouched for its owner.
    assert images.b.inspect_image("only-b")["Id"] == b_id


def test_operator_images_are_a_read_only_catalogue(images: Tenants) -> None:
    a, op = images.a, images.operator
    busybox = op.inspect_image("busybox")["Id"]
    assert a.inspect_image("busybox")["Id"] == busybox
    assert a.history("busybox")[0]["Tags"] == ["busybox:latest"]
    cid = _web(a, name="from-catalogue")
    assert a.inspect_container(cid)["Image"] == busybox
    for ref in ("busybox", busybox):
        status, message = _error(a.remove_image, ref, force=True)
        assert status == 403 and message.startswith(
            "authorization denied by plugin hbd-tenancy: "), message
    assert a.prune_images({"dangling": ["false"]})["ImagesDeleted"] is None
    a.tag("busybox", "mybox", "v1")
    a.tag(busybox, "mybox", "v2")
    assert a.inspect_image("mybox:v1")["RepoTags"] == ["busybox:latest", "mybox:v1",
                                                      "mybox:v2"]
    assert "mybox" not in str(images.b.images())
    assert _error(a.remove_image, "busybox")[0] == 403
    # A tenant's own tags of it go (by name, or all by ID); the operator's image stays.
    assert a.remove_image("mybox:v1") == [{"Untagged": "mybox:v1"}]
    assert a.remove_image(busybox, force=True) == [{"Untagged": "mybox:v2"}]
    assert a.inspect_image(busybox)["RepoTags"] == ["busybox:latest"]
    assert op.inspect_image("busybox")["RepoTags"] == ["busybox:latest"]


def test_content_is_shared_and_goes_with_its_last_holder(images: Tenants) -> None:
    a, b, op = images.a, images.b, images.operator
    a_id = _labelled(a, "shared", "a")
    archive = b"".join(a.get_image("shared"))
    assert "Loaded image: shared:latest" in str(list(b.load_image(archive)))
    assert b.inspect_image("shared")["Id"] == a_id
    assert sorted(op.inspect_image(a_id)["RepoTags"]) == [f"shared:latest@{PROJECT_A}",
                                                          f"shared:latest@{PROJECT_B}"]
    # A's rmi says the same whether or not B holds the image too.
    assert a.remove_image("shared") == [{"Untagged": "shared:latest"}, {"Deleted": a_id}]
    assert _error(a.inspect_image, a_id) == (404, f"No such image: {a_id}")
    assert b.inspect_image("shared")["Id"] == a_id
    assert b.remove_image(a_id) == [{"Untagged": "shared:latest"}, {"Deleted": a_id}]
    assert _error(op.inspect_image, a_id) == (404, f"No such image: {a_id}")


def test_image_prune_takes_the_tenants_own(images: Tenants) -> None:
    a, b = images.a, images.b
    old_a = _labelled(a, "churn", "a1")
    _labelled(a, "churn", "a2")  # the first is dangling now, for A
    old_b = _labelled(b, "churn", "b1")
    _labelled(b, "churn", "b2")
    assert [i["Id"] for i in a.images(filters={"dangling": True})] == [old_a]
    pruned = a.prune_images()
    assert [r["Deleted"] for r in pruned["ImagesDeleted"] if "Deleted" in r] == [old_a]
    assert [i["Id"] for i in b.images(filters={"dangling": True})] == [old_b]
    assert images.operator.inspect_image(old_b)["Id"] == old_b


def test_image_events_show_own_images_only(images: Tenants) -> None:
    a_id = _labelled(images.a, "evented", "a")
    images.a.tag("evented", "evented", "two")
    a_events = [e for e in _events(images.a) if e["Type"] == "image"]
    names = {e["Actor"]["Attributes"]["name"] for e in a_events}  # type: ignore[index]
    assert "evented:two" in names and not any("@" in str(n) for n in names)
    b_ids = {e["Actor"]["ID"] for e in _events(images.b)}  # type: ignore[index]
    assert a_id not in b_ids
    operator_names = {e["Actor"]["Attributes"].get("name")  # type: ignore[index]
                      for e in _events(images.operator) if e["Type"] == "image"}
    assert f"evented:two@{PROJECT_A}" in operator_names


def test_build_cache_is_private(images: Tenants) -> None:
    a, b = images.a, images.b
    dockerfile = "FROM busybox\nENV STEP=one\nLABEL stage=cached\n"
    a_id, _ = _build_image(a, "cached", dockerfile)
    _, again = _build_image(a, "cached", dockerfile)
    assert " ---> Using cache\n" in again
    b_id, b_out = _build_image(b, "cached", dockerfile)
    assert " ---> Using cache\n" not in b_out and b_id != a_id
    a_cache = {r["ID"] for r in a.df()["BuildCache"]}
    b_cache = {r["ID"] for r in b.df()["BuildCache"]}
    assert len(a_cache) == 2 and len(b_cache) == 2 and not a_cache & b_cache
    assert {i["Id"] for i in a.df()["Images"]} == {a_id, a.inspect_image("busybox")["Id"]}
    assert set(b.prune_builds()["CachesDeleted"]) == b_cache
    assert {r["ID"] for r in a.df()["BuildCache"]} == a_cache
    assert " ---> Using cache\n" in _build_image(a, "cached", dockerfile)[1]
    assert {r["ID"] for r in images.operator.df()["BuildCache"]} == a_cache


# -- published ports -----------------------------------------------------------------------


def test_tenants_publish_unprivileged_ports_by_default(tenants: Tenants) -> None:
    cid = _web(tenants.a, name="pub", port_bindings={80: 8080, 81: None})
    bindings = tenants.a.inspect_container(cid)["HostConfig"]["PortBindings"]
    assert bindings["80/tcp"] == [{"HostIp": "", "HostPort": "8080"}]
    status, message = _error(_web, tenants.a, name="low", port_bindings={80: 80})
    assert (status, message) == (403, "authorization denied by plugin hbd-tenancy: host port "
                                      "80 is not allowed for tenant containers (the operator "
                                      "allows 1024-65535)")
    _web(tenants.operator, name="op-low", port_bindings={80: 80})


@pytest.fixture(scope="module")
def publishing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    config = Config()
    config.tenants = TenantSettings(publish_ports="8000-8999", publish_addresses=["127.0.0.1"])
    with serve_api_daemon(tmp_path_factory.mktemp("hbd-publish"), TOKENS, config) as api:
        operator = docker.APIClient(base_url=api.host, version="1.47")
        yield Tenants(api, _tenant_client(api, "token-a"), _tenant_client(api, "token-b"),
                      operator)


@pytest.mark.parametrize(("bindings", "what"), [
    ({80: ("127.0.0.1", 9000)}, "host port 9000 is not allowed for tenant containers (the "
                                "operator allows 8000-8999)"),
    ({80: 8080}, "host address 0.0.0.0 is not allowed for tenant containers (the operator "
                 "allows 127.0.0.1)"),
    ({80: ("10.1.2.3", 8080)}, "host address 10.1.2.3 is not allowed"),
    ({80: ("127.0.0.1",)}, "an ephemeral host port for 80/tcp is not allowed"),
])
def test_published_ports_stay_within_what_the_operator_allows(
        publishing: Tenants, bindings: dict[int, object], what: str) -> None:
    status, message = _error(_web, publishing.a, name="refused", port_bindings=bindings)
    assert status == 403 and message.startswith(
        f"authorization denied by plugin hbd-tenancy: {what}"), message
    assert publishing.a.containers(all=True) == []


def test_allowed_ports_are_bound_as_the_tenant_asks(publishing: Tenants) -> None:
    cid = _web(publishing.a, name="allowed", port_bindings={80: ("127.0.0.1", 8080)})
    try:
        publishing.a.start(cid)
        ports = publishing.a.inspect_container(cid)["NetworkSettings"]["Ports"]
        assert ports["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8080"}]
        # -P publishes on ephemeral ports, outside 8000-8999 here.
        status, message = _error(publishing.a.create_container, "busybox", ["true"],
                                 ports=[90], host_config=publishing.a.create_host_config(
                                     publish_all_ports=True))
        assert status == 403 and "an ephemeral host port for 90/tcp" in message
    finally:
        publishing.operator.remove_container(cid, force=True)


def test_an_import_is_the_tenants_own(images: Tenants) -> None:
    a, b, op = images.a, images.b, images.operator
    a.import_image_from_data(text_tar({"hello": "a"}).getvalue(), repository="imported")
    a_id = a.inspect_image("imported")["Id"]
    assert [i["RepoTags"] for i in a.images("imported")] == [["imported:latest"]]
    assert _error(b.inspect_image, "imported") == (404, "No such image: imported:latest")
    assert b.images("imported") == []
    assert op.inspect_image(a_id)["RepoTags"] == [f"imported:latest@{PROJECT_A}"]
    # B's import of the same name is B's own image.
    b.import_image_from_data(text_tar({"hello": "b"}).getvalue(), repository="imported")
    assert b.inspect_image("imported")["Id"] != a_id
    assert a.inspect_image("imported")["Id"] == a_id
