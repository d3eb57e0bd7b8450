"""Network items of dockerd parity through the real API and services (fake
guest driver): IPv6 networks and addresses, link-local addresses, what the
guest is told and what inspect shows, and dockerd's errors (texts and
statuses as real dockerd answers them)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import docker
import pytest
import requests

from hbd.drivers.agent import FileSpec, NetworkUpdate
from hbd.drivers.fake import FakeGuest
from tests.api.conftest import ApiDaemon
from tests.conformance import validate_response


def post(raw: docker.APIClient, path: str, body: dict[str, Any], **params: str) -> Any:
    return raw._post_json(raw._url(path), data=body, params=params)


def create(raw: docker.APIClient, name: str, network: str = "", endpoint: dict[str, Any]
           | None = None, **config: Any) -> str:
    body: dict[str, Any] = {"Image": "busybox", "Cmd": ["sleep", "600"], **config}
    if network:
        body["HostConfig"] = {**body.get("HostConfig", {}), "NetworkMode": network}
        body["NetworkingConfig"] = {"EndpointsConfig": {network: endpoint or {}}}
    r = post(raw, "/containers/create", body, name=name)
    assert r.status_code == 201, r.text
    return str(r.json()["Id"])


def ipv6_network(raw: docker.APIClient, name: str, **v6: str) -> str:
    body = {"Name": name, "EnableIPv6": True, "IPAM": {"Config": [v6]}}
    r = post(raw, "/networks/create", body)
    assert r.status_code == 201, r.text
    return str(r.json()["Id"])


def guest(api_daemon: ApiDaemon, cid: str) -> FakeGuest:
    sb = api_daemon.daemon.containers.sandboxes.holding(cid)
    assert sb is not None and isinstance(sb.guest, FakeGuest)
    return sb.guest


def hosts_file(g: FakeGuest) -> str:
    files: list[FileSpec] = next(iter(g.files.values()))
    return next(f.data.decode() for f in files if f.path == "/etc/hosts")


def first_network_update(g: FakeGuest) -> NetworkUpdate:
    return g.networks[0]


def test_ipv6_network_shows_its_ipam_as_dockerd(raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6ranged", Subnet="2001:db8:91::/64", Gateway="2001:db8:91::fe",
                 IPRange="2001:db8:91::100/120")
    ipv6_network(raw, "v6plain", Subnet="2001:db8:92::/64")
    ranged = raw.inspect_network("v6ranged")
    validate_response(ranged, "/networks/{id}", "get")
    assert ranged["EnableIPv6"] is True
    v4, v6 = ranged["IPAM"]["Config"]
    assert set(v4) == {"Subnet", "Gateway"}
    assert v6 == {"Subnet": "2001:db8:91::/64", "IPRange": "2001:db8:91::100/120",
                  "Gateway": "2001:db8:91::fe"}
    # No IPv6 gateway given: none shown (the bridge still takes ::1).
    assert raw.inspect_network("v6plain")["IPAM"]["Config"][1] == {"Subnet": "2001:db8:92::/64"}
    out = subprocess.run(["ip", "-6", "-o", "addr", "show"], capture_output=True, text=True)
    bridge = next(line.split()[1] for line in out.stdout.splitlines()
                  if "2001:db8:92::1/64" in line)
    assert raw.inspect_network("v6plain")["Id"][:8] in bridge
    # The host takes no router advertisement from a guest (it does not forward IPv6).
    assert Path(f"/proc/sys/net/ipv6/conf/{bridge}/accept_ra").read_text().strip() == "0"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"EnableIPv6": True}, 404, "could not find an available, non-overlapping IPv6 address "
                                "pool among the defaults to assign to the network"),
    ({"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "2001:db8:93::/64"},
                                              {"Subnet": "2001:db8:94::/64"}]}},
     403, "bridge driver doesn't support multiple subnets"),
    ({"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "2001:db8:93::/64",
                                               "Gateway": "2001:db8:95::1"}]}},
     403, "no matching subnet for gateway 2001:db8:95::1"),
    ({"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "2001:db8:93::/64",
                                               "Gateway": "2001:db8:93::"}]}},
     500, "failed to allocate gateway (2001:db8:93::): Address already in use"),
    ({"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "2001:db8:93::1/64"}]}},
     400, "invalid subnet 2001:db8:93::1/64: it should be 2001:db8:93::/64"),
    ({"EnableIPv6": True, "IPAM": {"Config": [{"Subnet": "2001:db8:93::/64",
                                               "IPRange": "2001:db8:96::/80"}]}},
     400, "ip-range 2001:db8:96::/80 is not within subnet 2001:db8:93::/64"),
])
def test_ipv6_network_errors(raw: docker.APIClient, body: dict[str, Any], status: int,
                             message: str) -> None:
    r = post(raw, "/networks/create", {"Name": "badv6", **body})
    assert (r.status_code, r.json()) == (status, {"message": message})


def test_ipv6_subnets_do_not_overlap(raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6first", Subnet="2001:db8:97::/64")
    r = post(raw, "/networks/create", {"Name": "v6second", "EnableIPv6": True,
                                       "IPAM": {"Config": [{"Subnet": "2001:db8:97::/48"}]}})
    assert (r.status_code, r.json()["message"]) == \
        (403, "Pool overlaps with other one on this address space")


def test_containers_get_ipv6_addresses_gateway_and_route(api_daemon: ApiDaemon,
                                                         raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6net", Subnet="2001:db8:98::/64")
    first = create(raw, "v6one", "v6net")
    second = create(raw, "v6two", "v6net", {"IPAMConfig": {"IPv6Address": "2001:db8:98::77"}})
    raw.start(first)
    raw.start(second)
    info = raw.inspect_container(first)
    validate_response(info, "/containers/{id}/json", "get")
    settings = info["NetworkSettings"]["Networks"]["v6net"]
    assert (settings["GlobalIPv6Address"], settings["GlobalIPv6PrefixLen"],
            settings["IPv6Gateway"]) == ("2001:db8:98::2", 64, "2001:db8:98::1")
    # The top-level fields are the default bridge's, which has no IPv6.
    assert info["NetworkSettings"]["GlobalIPv6Address"] == ""
    assert raw.inspect_container(second)["NetworkSettings"]["Networks"]["v6net"][
        "IPAMConfig"] == {"IPv6Address": "2001:db8:98::77"}
    members = raw.inspect_network("v6net")["Containers"]
    assert members[second]["IPv6Address"] == "2001:db8:98::77/64"
    assert members[first]["IPv6Address"] == "2001:db8:98::2/64"
    update = first_network_update(guest(api_daemon, first))
    ip4 = settings["IPAddress"]
    assert update.attach[0].addresses == [f"{ip4}/16", "2001:db8:98::2/64"]
    assert [(r.destination, r.gateway) for r in update.routes or []] == \
        [("0.0.0.0/0", settings["Gateway"]), ("::/0", "2001:db8:98::1")]
    hosts = hosts_file(guest(api_daemon, first))
    assert f"{ip4}\t{info['Config']['Hostname']}\n2001:db8:98::2\t" in hosts


def query(server: str, name: str, rdtype: str) -> list[str]:
    """Ask hbd's DNS on a network's gateway (from the host, as any client)."""
    reply = dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=5)
    return sorted(item.to_text() for rrset in reply.answer for item in rrset)


def test_dns_answers_aaaa_for_container_names(raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6dns", Subnet="2001:db8:9e::/64")
    c = create(raw, "dnsv6", "v6dns", {"Aliases": ["web"]})
    raw.start(c)
    settings = raw.inspect_container(c)["NetworkSettings"]["Networks"]["v6dns"]
    gateway = settings["Gateway"]
    for name in ("dnsv6", "web", "dnsv6.v6dns"):
        assert query(gateway, name, "AAAA") == ["2001:db8:9e::2"]
        assert query(gateway, name, "A") == [settings["IPAddress"]]


def test_ipv6_range_gateway_and_reuse(raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6range", Subnet="2001:db8:99::/64", Gateway="2001:db8:99::fe",
                 IPRange="2001:db8:99::100/120")
    one = create(raw, "r1", "v6range")
    raw.start(one)
    settings = raw.inspect_container(one)["NetworkSettings"]["Networks"]["v6range"]
    # dockerd hands out the range's first address, and the gateway as given.
    assert (settings["GlobalIPv6Address"], settings["IPv6Gateway"]) == \
        ("2001:db8:99::100", "2001:db8:99::fe")
    raw.stop(one, timeout=0)
    assert raw.inspect_container(one)["NetworkSettings"]["Networks"]["v6range"][
        "GlobalIPv6Address"] == ""
    again = create(raw, "r2", "v6range")
    raw.start(again)
    assert raw.inspect_container(again)["NetworkSettings"]["Networks"]["v6range"][
        "GlobalIPv6Address"] == "2001:db8:99::100"


def test_ipv6_subnet_without_enable_ipv6_gives_no_address(api_daemon: ApiDaemon,
                                                          raw: docker.APIClient) -> None:
    r = post(raw, "/networks/create", {"Name": "v6off", "IPAM": {"Config": [
        {"Subnet": "2001:db8:9a::/64"}]}})
    assert r.status_code == 201
    info = raw.inspect_network("v6off")
    assert info["EnableIPv6"] is False
    assert info["IPAM"]["Config"][1] == {"Subnet": "2001:db8:9a::/64"}
    # dockerd ignores --ip6 there.
    c = create(raw, "nov6", "v6off", {"IPAMConfig": {"IPv6Address": "2001:db8:9a::5"}})
    raw.start(c)
    assert raw.inspect_container(c)["NetworkSettings"]["Networks"]["v6off"][
        "GlobalIPv6Address"] == ""
    update = first_network_update(guest(api_daemon, c))
    assert all(":" not in a for a in update.attach[0].addresses)
    assert all(r.destination != "::/0" for r in update.routes or [])


@pytest.mark.parametrize(("network", "ipam", "message"), [
    ("v6err", {"IPv6Address": "zz"}, "invalid IPv6 address: zz"),
    ("v6err", {"IPv6Address": "10.1.1.1"}, "invalid IPv6 address: 10.1.1.1"),
    ("v6err", {"IPv4Address": "2001:db8:9b::8"}, "invalid IPv4 address: 2001:db8:9b::8"),
    ("bridge", {"IPv6Address": "2001:db8:9b::8"},
     "user specified IP address is supported on user defined networks only"),
])
def test_static_address_errors_at_create(raw: docker.APIClient, network: str,
                                         ipam: dict[str, str], message: str) -> None:
    ipv6_network(raw, "v6err", Subnet="2001:db8:9b::/64")
    body = {"Image": "busybox", "HostConfig": {"NetworkMode": network},
            "NetworkingConfig": {"EndpointsConfig": {network: {"IPAMConfig": ipam}}}}
    r = post(raw, "/containers/create", body)
    assert (r.status_code, r.json()) == (400, {"message": message})


def test_static_ipv6_address_errors_at_start(raw: docker.APIClient) -> None:
    ipv6_network(raw, "v6start", Subnet="2001:db8:9c::/64")
    outside = create(raw, "outside", "v6start",
                     {"IPAMConfig": {"IPv6Address": "2001:db8:2::5"}})
    r = raw._post(raw._url(f"/containers/{outside}/start"))
    assert r.json() == {"message": "Invalid address 2001:db8:2::5: It does not belong to "
                                   "any of this network's subnets"}
    for address in ("2001:db8:9c::1", "2001:db8:9c::"):  # the gateway, the subnet's own
        taken = create(raw, f"taken{len(address)}", "v6start",
                       {"IPAMConfig": {"IPv6Address": address}})
        r = raw._post(raw._url(f"/containers/{taken}/start"))
        assert (r.status_code, r.json()) == (403, {"message": "Address already in use"})


def test_link_local_addresses(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    ipv6_network(raw, "llnet", Subnet="2001:db8:9d::/64")
    wanted = ["169.254.10.10", "169.254.20.20", "fe80::1:2"]
    c = create(raw, "ll", "llnet", {"IPAMConfig": {"LinkLocalIPs": wanted}})
    raw.start(c)
    settings = raw.inspect_container(c)["NetworkSettings"]["Networks"]["llnet"]
    assert settings["IPAMConfig"] == {"LinkLocalIPs": wanted}
    addresses = first_network_update(guest(api_daemon, c)).attach[0].addresses
    assert addresses == [f"{settings['IPAddress']}/16", "169.254.10.10/16",
                         "169.254.20.20/16", "2001:db8:9d::2/64", "fe80::1:2/64"]


@pytest.mark.parametrize(("addresses", "message"), [
    (["zz"], "Invalid link-local IP address: [zz]"),
    (["10.3.3.3"], "invalid link local IP address: 10.3.3.3"),
])
def test_link_local_errors_at_start(raw: docker.APIClient, addresses: list[str],
                                    message: str) -> None:
    c = create(raw, "badll", "bridge", {"IPAMConfig": {"LinkLocalIPs": addresses}})
    r = raw._post(raw._url(f"/containers/{c}/start"))
    assert (r.status_code, r.json()) == (500, {"message": message})
    assert raw.inspect_container(c)["State"]["Running"] is False


# -- legacy links ------------------------------------------------------------------------


def create_linking(raw: docker.APIClient, name: str, links: list[str],
                   cmd: list[str] | None = None, **host_config: Any) -> Any:
    body = {"Image": "busybox", "Cmd": cmd or ["sleep", "600"],
            "HostConfig": {"Links": links, **host_config}}
    return post(raw, "/containers/create", body, name=name)


def test_link_on_the_default_bridge(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    child = create(raw, "lchild", Env=["FOO=bar", "MULTI=a=b"], Hostname="chost",
                   ExposedPorts={"80/tcp": {}, "53/udp": {}})
    raw.start(child)
    r = create_linking(raw, "lparent", ["lchild:db", "lchild"], ["sh", "-c", "env; sleep 600"],
                       ExtraHosts=["extra:1.2.3.4"])
    parent = r.json()["Id"]
    raw.start(parent)
    assert sorted(raw.inspect_container(parent)["HostConfig"]["Links"]) == \
        ["/lchild:/lparent/db", "/lchild:/lparent/lchild"]
    ip = raw.inspect_container(child)["NetworkSettings"]["IPAddress"]
    own = raw.inspect_container(parent)["NetworkSettings"]["IPAddress"]
    hosts = hosts_file(guest(api_daemon, parent)).splitlines()
    # Extra hosts, then links (alias, hostname, name), then the container itself.
    assert hosts[6:] == ["1.2.3.4\textra", f"{ip}\tdb chost lchild", f"{ip}\tlchild chost",
                         f"{own}\t{parent[:12]}"]
    env = wait_for_log(raw, parent, "DB_NAME")
    for entry in ("DB_NAME=/lparent/db", f"DB_PORT=udp://{ip}:53",
                  f"DB_PORT_80_TCP=tcp://{ip}:80", f"DB_PORT_80_TCP_ADDR={ip}",
                  "DB_PORT_80_TCP_PORT=80", "DB_PORT_80_TCP_PROTO=tcp",
                  f"DB_PORT_53_UDP=udp://{ip}:53", "DB_ENV_FOO=bar", "DB_ENV_MULTI=a=b",
                  "LCHILD_NAME=/lparent/lchild", "LCHILD_ENV_FOO=bar"):
        assert entry in env.splitlines(), entry
    assert "DB_ENV_PATH" not in env
    # An exec sees them too, as in dockerd.
    exec_id = raw.exec_create(parent, ["env"])["Id"]
    assert "DB_NAME=/lparent/db" in raw.exec_start(exec_id).decode()


def wait_for_log(raw: docker.APIClient, cid: str, needle: str) -> str:
    for _ in range(100):
        out = raw.logs(cid).decode()
        if needle in out:
            return out
        time.sleep(0.05)
    raise AssertionError(f"{needle} never showed in the logs of {cid[:12]}")


def test_a_child_that_moves_is_followed(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    child = create(raw, "mover")
    raw.start(child)
    parent = create_linking(raw, "follower", ["mover:m"]).json()["Id"]
    raw.start(parent)
    raw.stop(child, timeout=0)
    squatter = create(raw, "squatter")  # takes the child's old address
    raw.start(squatter)
    raw.start(child)
    ip = raw.inspect_container(child)["NetworkSettings"]["IPAddress"]
    assert ip != raw.inspect_container(squatter)["NetworkSettings"]["IPAddress"]
    assert f"{ip}\tm {child[:12]} mover" in hosts_file(guest(api_daemon, parent))


def test_link_errors(raw: docker.APIClient) -> None:
    r = create_linking(raw, "nolink", ["nosuch:x"])
    assert (r.status_code, r.json()) == \
        (400, {"message": "could not get container for nosuch: No such container: nosuch"})
    r = create_linking(raw, "badlink", ["a:b:c"])
    assert (r.status_code, r.json()) == (500, {"message": "bad format for links: a:b:c"})
    r = create_linking(raw, "emptylink", [""])
    assert (r.status_code, r.json()) == (500, {"message": "empty string specified for links"})
    create(raw, "sleeper")
    parent = create_linking(raw, "waiter", ["sleeper:st"]).json()["Id"]
    r = raw._post(raw._url(f"/containers/{parent}/start"))
    assert (r.status_code, r.json()) == \
        (500, {"message": "Cannot link to a non running container: /sleeper AS /waiter/st"})
    raw.create_network("elsewhere")
    away = create(raw, "away", "elsewhere")
    raw.start(away)
    parent = create_linking(raw, "seeker", ["away:a"]).json()["Id"]
    r = raw._post(raw._url(f"/containers/{parent}/start"))
    assert (r.status_code, r.json()) == \
        (500, {"message": "Cannot link to /away, as it does not belong to the default network"})


def test_rm_link_forgets_only_the_link(raw: docker.APIClient) -> None:
    child = create(raw, "linked")
    parent = create_linking(raw, "linker", ["linked:al"]).json()["Id"]

    def rm_link(name: str) -> requests.Response:
        return raw._delete(raw._url("/containers/{0}", name), params={"link": 1})

    # As dockerd 20.10 answers each.
    r = rm_link("linker/nope")
    assert (r.status_code, r.json()) == (404, {"message": "No such container: linker/nope"})
    r = rm_link("linked")
    assert (r.status_code, r.json()) == \
        (500, {"message": "Conflict, cannot remove the default link name of the container"})
    r = rm_link("nope/al")
    assert (r.status_code, r.json()) == (404, {"message": "No such container: nope/al"})
    raw.remove_container("linker/al", link=True)
    assert not raw.inspect_container(parent)["HostConfig"]["Links"]
    assert raw.inspect_container(child)["State"]["Status"] == "created"
    r = rm_link("linker/al")
    assert r.status_code == 404


def test_a_removed_child_stays_linked_as_in_dockerd(raw: docker.APIClient) -> None:
    child = create(raw, "gone")
    raw.start(child)
    parent = create_linking(raw, "orphan", ["gone:g"]).json()["Id"]
    raw.remove_container(child, force=True)
    assert raw.inspect_container(parent)["HostConfig"]["Links"] == ["/gone:/orphan/g"]
    r = raw._post(raw._url(f"/containers/{parent}/start"))
    assert r.json() == {"message": "Cannot link to a non running container: /gone AS /orphan/g"}


def test_links_on_a_user_network_are_dns_aliases(api_daemon: ApiDaemon,
                                                 raw: docker.APIClient) -> None:
    raw.create_network("linknet")
    # dockerd does not look the target up on a user-defined network.
    c = create(raw, "aliaser", "linknet", {"Links": ["nosuch:foo", "other"]},
               HostConfig={"Links": ["nosuch:foo", "other"]})
    raw.start(c)
    info = raw.inspect_container(c)
    assert info["HostConfig"]["Links"] is None
    assert info["NetworkSettings"]["Networks"]["linknet"]["Links"] == ["nosuch:foo", "other"]
    run = api_daemon.daemon.networks.runs[c]
    assert run.endpoints["linknet"].links == {"foo": "nosuch", "other": "other"}


# -- MAC addresses ---------------------------------------------------------------------------


def test_cli_mac_address_reaches_the_guest(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    # CLI 28 sends EndpointSettings.MacAddress (API >= 1.44), not Config.MacAddress.
    cid = api_daemon.docker("create", "--mac-address", "02:42:AC:11:00:99", "busybox",
                            "sleep", "600").stdout.decode().strip()
    info = raw.inspect_container(cid)
    assert info["Config"]["MacAddress"] == "02:42:AC:11:00:99"
    assert info["NetworkSettings"]["Networks"]["bridge"]["MacAddress"] == "02:42:AC:11:00:99"
    raw.start(cid)
    assert first_network_update(guest(api_daemon, cid)).attach[0].mac == "02:42:ac:11:00:99"
    settings = raw.inspect_container(cid)["NetworkSettings"]
    assert settings["MacAddress"] == settings["Networks"]["bridge"]["MacAddress"] == \
        "02:42:ac:11:00:99"


def create_at(raw: docker.APIClient, version: str, body: dict[str, Any]) -> Any:
    url = raw._url("/containers/create").replace("/v1.47/", f"/v{version}/")
    return raw._post_json(url, data={"Image": "busybox", "Cmd": ["sleep", "600"], **body})


@pytest.mark.parametrize(("version", "mac", "message"), [
    ("1.41", "zz", "address zz: invalid MAC address"),
    ("1.41", "02:42:ac:11:00:99:11", "address 02:42:ac:11:00:99:11: invalid MAC address"),
    ("1.47", "01:42:ac:11:00:99", 'error setting interface "eth0" MAC to "01:42:ac:11:00:99": '
                                  "cannot assign requested address"),
])
def test_bad_macs_fail_the_start_as_in_dockerd(raw: docker.APIClient, version: str, mac: str,
                                                message: str) -> None:
    r = create_at(raw, version, {"MacAddress": mac})
    assert r.status_code == 201
    r = raw._post(raw._url(f"/containers/{r.json()['Id']}/start"))
    assert (r.status_code, r.json()) == (500, {"message": message})


def test_mac_address_forms_and_versions(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    # Before 1.44: Config.MacAddress is the container's; EndpointSettings' is ignored.
    old = create_at(raw, "1.43", {"MacAddress": "02-42-ac-11-00-98"}).json()
    ignored = create_at(raw, "1.43", {"NetworkingConfig": {"EndpointsConfig": {
        "bridge": {"MacAddress": "02:42:ac:11:00:97"}}}}).json()
    # From 1.44 on, Config.MacAddress moves to the endpoint, with a warning.
    new = create_at(raw, "1.47", {"MacAddress": "0242.ac11.0096"}).json()
    assert old["Warnings"] == ignored["Warnings"] == []
    assert new["Warnings"] == ["The container-wide MacAddress field is now deprecated. It "
                               "should be specified in EndpointsConfig instead."]
    assert raw.inspect_container(new["Id"])["Config"]["MacAddress"] == "0242.ac11.0096"
    macs = {}
    for cid in (old["Id"], ignored["Id"], new["Id"]):
        raw.start(cid)
        macs[cid] = first_network_update(guest(api_daemon, cid)).attach[0].mac
    assert macs[old["Id"]] == "02:42:ac:11:00:98"
    assert macs[new["Id"]] == "02:42:ac:11:00:96"
    ip = raw.inspect_container(ignored["Id"])["NetworkSettings"]["IPAddress"]
    assert macs[ignored["Id"]] == "02:42:" + ":".join(f"{int(o):02x}" for o in ip.split("."))


@pytest.mark.parametrize(("version", "body", "message"), [
    ("1.43", {"MacAddress": "02:42:ac:11:00:99", "HostConfig": {"NetworkMode": "none"}},
     "conflicting options: mac-address and the network mode"),
    ("1.47", {"MacAddress": "02:42:ac:11:00:99", "NetworkingConfig": {"EndpointsConfig": {
        "bridge": {"MacAddress": "02:42:ac:11:00:98"}}}},
     "the container-wide MAC address must match the endpoint-specific MAC address for the "
     "main network, or be left empty"),
    ("1.47", {"MacAddress": "02:42:ac:11:00:99", "HostConfig": {"NetworkMode": "bridge"},
              "NetworkingConfig": {"EndpointsConfig": {"other": {}}}},
     "if a container-wide MAC address is supplied, HostConfig.NetworkMode must match the "
     "identity of a network in NetworkSettings.Networks"),
])
def test_mac_address_conflicts(raw: docker.APIClient, version: str, body: dict[str, Any],
                               message: str) -> None:
    r = create_at(raw, version, body)
    assert (r.status_code, r.json()) == (400, {"message": message})


def test_auxiliary_addresses_are_kept_and_never_leased(raw: docker.APIClient) -> None:
    aux = {"a": "172.28.1.5", "b": "172.28.5.1"}
    config = {"Subnet": "172.28.0.0/16", "IPRange": "172.28.5.0/24",
              "Gateway": "172.28.5.254", "AuxiliaryAddresses": aux}
    r = post(raw, "/networks/create", {"Name": "auxnet", "IPAM": {"Config": [config]}})
    assert r.status_code == 201, r.text
    assert raw.inspect_network("auxnet")["IPAM"]["Config"] == [config]
    c = create(raw, "auxuser", "auxnet")
    raw.start(c)
    ip = raw.inspect_container(c)["NetworkSettings"]["Networks"]["auxnet"]["IPAddress"]
    assert ip == "172.28.5.2"
    r = post(raw, "/containers/create", {
        "Image": "busybox", "HostConfig": {"NetworkMode": "auxnet"},
        "NetworkingConfig": {"EndpointsConfig": {"auxnet": {
            "IPAMConfig": {"IPv4Address": "172.28.1.5"}}}}}, name="auxclash")
    assert r.status_code == 201
    r = raw._post(raw._url("/containers/auxclash/start"))
    assert r.status_code == 403 and "Address already in use" in r.json()["message"]


@pytest.mark.parametrize(("aux", "status", "message"), [
    ({"a": "10.0.0.1"}, 403,
     "auxiliary address: (a:10.0.0.1) must belong to the master pool: 10.98.0.0/16"),
    ({"a": "bogus"}, 500, "non parsable secondary ip address (a:bogus) passed for network auxbad"),
    ({"a": "10.98.0.1"}, 500,
     "failed to allocate secondary ip address (a:10.98.0.1): Address already in use"),
])
def test_auxiliary_address_errors(raw: docker.APIClient, aux: dict[str, str], status: int,
                                  message: str) -> None:
    body = {"Name": "auxbad", "IPAM": {"Config": [{"Subnet": "10.98.0.0/16",
                                                   "AuxiliaryAddresses": aux}]}}
    r = post(raw, "/networks/create", body)
    # As dockerd 20.10 answers.
    assert (r.status_code, r.json()) == (status, {"message": message})
    assert not raw.networks(names=["auxbad"])
