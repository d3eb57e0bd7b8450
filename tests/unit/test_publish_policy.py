"""The tenant policy on published ports ([tenants] in hbd.toml): host ports
within the operator's ranges, on its host addresses, ephemeral ports only
where the host's ephemeral range is all allowed; the operator is free."""

from __future__ import annotations

from pathlib import Path

import pytest

from hbd.config import TenantSettings, load_config
from hbd.errors import Forbidden, InvalidParameter
from hbd.services.container.tenancy import PublishPolicy
from hbd.services.network.model import PublishedPort
from hbd.services.scope import OPERATOR, Scope

TENANT = Scope("a" * 32, "tenant-a")
PREFIX = "authorization denied by plugin hbd-tenancy: "


def _policy(ports: str = "8000-8999,9443", addresses: list[str] | None = None,
            ephemeral: tuple[int, int] = (32768, 60999)) -> PublishPolicy:
    settings = TenantSettings(ports, addresses or [])
    policy = PublishPolicy.from_settings(settings)
    return PublishPolicy(policy.ranges, policy.addresses, ephemeral)


def _publish(host_port: int, host_ip: str = "") -> list[PublishedPort]:
    return [PublishedPort(80, "tcp", host_ip, host_port)]


def test_ports_within_the_ranges_pass() -> None:
    policy = _policy()
    for port in (8000, 8999, 9443):
        policy.check(_publish(port), TENANT)


@pytest.mark.parametrize("port", [80, 7999, 9000, 9442, 9444])
def test_ports_outside_the_ranges_are_refused(port: int) -> None:
    with pytest.raises(Forbidden) as e:
        _policy().check(_publish(port), TENANT)
    assert e.value.message == (f"{PREFIX}host port {port} is not allowed for tenant "
                               "containers (the operator allows 8000-8999,9443)")


def test_the_default_allows_any_unprivileged_port_on_any_address() -> None:
    policy = PublishPolicy.from_settings(TenantSettings())
    for port in (1024, 8080, 65535, 0):
        policy.check(_publish(port, "192.0.2.7"), TENANT)
    with pytest.raises(Forbidden, match="host port 1023 is not allowed"):
        policy.check(_publish(1023), TENANT)


def test_an_ephemeral_port_needs_the_whole_ephemeral_range() -> None:
    with pytest.raises(Forbidden, match="an ephemeral host port for 80/tcp is not allowed"):
        _policy().check(_publish(0), TENANT)
    _policy("30000-61000").check(_publish(0), TENANT)
    _policy("8000-8999", ephemeral=(8100, 8200)).check(_publish(0), TENANT)


def test_host_addresses() -> None:
    policy = _policy(addresses=["127.0.0.1", "::1"])
    policy.check(_publish(8080, "127.0.0.1"), TENANT)
    policy.check(_publish(8080, "::1"), TENANT)
    with pytest.raises(Forbidden) as e:
        policy.check(_publish(8080, "192.0.2.7"), TENANT)
    assert e.value.message == (f"{PREFIX}host address 192.0.2.7 is not allowed for tenant "
                               "containers (the operator allows 127.0.0.1, ::1)")
    # No address: every address, which only "0.0.0.0" or "::" allows.
    with pytest.raises(Forbidden, match=r"host address 0\.0\.0\.0 is not allowed"):
        policy.check(_publish(8080), TENANT)
    _policy(addresses=["0.0.0.0"]).check(_publish(8080), TENANT)


def test_the_operator_is_free() -> None:
    _policy(addresses=["127.0.0.1"]).check(_publish(80, "192.0.2.7") + _publish(0), OPERATOR)


@pytest.mark.parametrize(("line", "error"), [
    ('publish_ports = "80-"', "bad port range '80-'"),
    ('publish_ports = "9000-8000"', "bad port range '9000-8000'"),
    ('publish_ports = "0-10"', "bad port range '0-10'"),
    ('publish_ports = "http"', "bad port range 'http'"),
    ('publish_addresses = ["localhost"]', "'localhost' is not an IP address"),
])
def test_bad_settings_are_refused_at_load(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "hbd.toml"
    path.write_text(f"[tenants]\n{line}\n")
    with pytest.raises(InvalidParameter, match=error):
        load_config(path)
