"""Network items of dockerd parity with real guests: IPv6 between containers
and to the bridge, AAAA answers, link-local addresses, legacy links (the
default bridge's /etc/hosts and environment, user networks' aliases) and
MAC addresses inside the guest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon_fixture import RunningDaemon
from tests.registry_fixture import free_port


@pytest.fixture
def net6(hbd: RunningDaemon) -> Iterator[str]:
    """An IPv6 network (2001:db8:a1::/64); every container goes afterwards."""
    name = f"v6net{free_port()}"
    hbd.docker("network", "create", "--ipv6", "--subnet", "2001:db8:a1::/64", name)
    yield name
    for container in hbd.docker("ps", "-aq").stdout.split():
        hbd.docker("rm", "-f", container.decode(), check=False)
    hbd.docker("network", "rm", name, check=False)


def run(hbd: RunningDaemon, *args: str) -> str:
    return hbd.docker("run", "--rm", *args).stdout.decode()


def test_ipv6_dns_and_link_local_addresses(hbd: RunningDaemon, net6: str) -> None:
    hbd.docker("run", "-d", "--name", "server6", "--network", net6, "--ip6", "2001:db8:a1::50",
               "--link-local-ip", "169.254.7.7", "--link-local-ip", "fe80::7", "busybox",
               "sleep", "600")
    out = run(hbd, "--network", net6, "busybox", "sh", "-c",
              "nslookup -type=AAAA server6; ping6 -c1 -W5 server6 >/dev/null && echo peer-ok; "
              "ping6 -c1 -W5 2001:db8:a1::1 >/dev/null && echo gateway-ok; ip -6 route; "
              "grep server6 /etc/hosts; tail -2 /etc/hosts")
    assert "Address: 2001:db8:a1::50" in out
    assert "peer-ok" in out and "gateway-ok" in out  # at once: no DAD to wait for
    assert "default via 2001:db8:a1::1 dev eth0" in out
    assert out.splitlines()[-1].startswith("2001:db8:a1::2\t")  # its own, after its IPv4 line
    addresses = hbd.docker("exec", "server6", "ip", "addr", "show", "eth0").stdout.decode()
    assert "inet 169.254.7.7/16" in addresses and "eth0:1" in addresses
    assert "inet6 fe80::7/64" in addresses
    assert "inet6 2001:db8:a1::50/64 scope global" in addresses
    assert "tentative" not in addresses and "dadfailed" not in addresses


def test_links_on_the_default_bridge_and_on_a_user_network(hbd: RunningDaemon,
                                                           net6: str) -> None:
    hbd.docker("run", "-d", "--name", "linkchild", "-e", "FOO=bar", "--expose", "80",
               "busybox", "sleep", "600")
    out = run(hbd, "--name", "linkparent", "--link", "linkchild:db", "busybox", "sh", "-c",
              "cat /etc/hosts; env; ping -c1 -W5 db >/dev/null && echo alias-ok; "
              "ip -6 addr show dev eth0 | grep -c inet6; true")
    child_ip = hbd.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                          "linkchild").stdout.decode().strip()
    assert f"{child_ip}\tdb " in out and out.count("linkchild") >= 1
    for entry in ("DB_NAME=/linkparent/db", f"DB_PORT=tcp://{child_ip}:80", "DB_ENV_FOO=bar"):
        assert entry in out.splitlines()
    assert "alias-ok" in out
    # No IPv6 at all on an interface of a network without it, as in dockerd.
    assert out.splitlines()[-1] == "0"
    hbd.docker("run", "-d", "--name", "target6", "--network", net6, "busybox", "sleep", "600")
    out = run(hbd, "--network", net6, "--link", "target6:foo", "busybox", "sh", "-c",
              "nslookup foo; nslookup -type=AAAA foo")
    target = hbd.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} "
                        "{{.GlobalIPv6Address}}{{end}}", "target6").stdout.decode().split()
    assert all(f"Address: {address}" in out for address in target)
    # The alias is the linking container's alone.
    out = run(hbd, "--network", net6, "busybox", "sh", "-c",
              "nslookup foo >/dev/null 2>&1 && echo resolved; echo done")
    assert out.strip() == "done"


def test_mac_address_inside(hbd: RunningDaemon, net6: str) -> None:
    out = run(hbd, "--mac-address", "02:42:AC:11:00:99", "busybox", "cat",
              "/sys/class/net/eth0/address")
    assert out.strip() == "02:42:ac:11:00:99"
    out = run(hbd, "--network", net6, "--mac-address", "02:42:ac:12:34:56", "busybox", "sh",
              "-c", "cat /sys/class/net/eth0/address; ip -6 addr show eth0 | grep -c global")
    assert out.split() == ["02:42:ac:12:34:56", "1"]
