"""The pure parts of HostConfig handling: cpu lists, sizes, weights, vCPUs,
the QEMU argv they lead to, and filter times."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hbd.drivers.vm import GuestFiles, HostFds, VMSpec, build_argv
from hbd.errors import InvalidParameter
from hbd.services.container import hostconfig
from hbd.services.timefmt import parse_go_duration, parse_go_timestamp

HOST = hostconfig.HostFacts(cpus=frozenset({0, 1, 2, 3}), nodes=frozenset({0, 1}))


@pytest.mark.parametrize(("text", "values"), [
    ("0", {0}), ("0-2,4", {0, 1, 2, 4}), ("3,1", {1, 3}), ("0-0", {0})])
def test_uint_lists(text: str, values: set[int]) -> None:
    assert hostconfig.parse_uint_list(text) == values


@pytest.mark.parametrize("text", ["", "a", "1-0", "0,,1", "-1", "1-", "0 1"])
def test_uint_list_format_errors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid format"):
        hostconfig.parse_uint_list(text)


def test_cpu_lists_print_as_the_kernel_prints_them() -> None:
    assert hostconfig.format_uint_list({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7"
    assert hostconfig.format_uint_list(frozenset({5})) == "5"


@pytest.mark.parametrize(("text", "size"), [
    ("20G", 20 * 1024**3), ("512m", 512 * 1024**2), ("1.5GiB", 3 * 1024**3 // 2),
    ("64 MB", 64 * 1024**2), ("1024", 1024)])
def test_sizes_as_go_units(text: str, size: int) -> None:
    assert hostconfig.ram_in_bytes(text) == size


@pytest.mark.parametrize(("shares", "weight"), [(0, 0), (1, 1), (2, 1), (512, 20),
                                                (1024, 39), (262144, 10000)])
def test_cpu_shares_become_runcs_weight(shares: int, weight: int) -> None:
    assert hostconfig.cpu_weight(shares) == weight


@pytest.mark.parametrize(("hc", "vcpus"), [
    ({}, 1), ({"NanoCpus": 1_500_000_000}, 2), ({"CpusetCpus": "0-2"}, 3),
    ({"CpusetCpus": "0-1", "NanoCpus": 500_000_000}, 1),
    ({"CpusetCpus": "1", "NanoCpus": 2_000_000_000}, 1)])
def test_vcpus_follow_nano_cpus_and_the_cpuset(hc: dict[str, object], vcpus: int) -> None:
    assert hostconfig.vcpus_for(hc, 1) == vcpus


def test_memory_nodes_bind_only_when_not_all_of_the_hosts() -> None:
    assert hostconfig.host_nodes({"CpusetMems": "0-1"}, HOST) == []
    assert hostconfig.host_nodes({"CpusetMems": "1"}, HOST) == [1]
    assert hostconfig.host_nodes({}, HOST) == []


def test_checks_against_the_host() -> None:
    hostconfig.check({"CpusetCpus": "3", "CpusetMems": "1", "NanoCpus": 4 * 10**9}, HOST)
    with pytest.raises(InvalidParameter, match="requested 4, available: 0-3"):
        hostconfig.check({"CpusetCpus": "4"}, HOST)
    with pytest.raises(InvalidParameter, match=r"from 0\.01 to 4\.00, as there are only 4 CPUs"):
        hostconfig.check({"NanoCpus": 5 * 10**9}, HOST)


def spec(**kwargs: object) -> VMSpec:
    return VMSpec(run_dir=Path("/run/x"), kernel=Path("/k"), initrd=Path("/i"),
                  **kwargs)  # type: ignore[arg-type]


def argv_of(vm: VMSpec) -> list[str]:
    fds = HostFds(qmp=3, agent=4, console=5, fdsets=[(5, 1, "console")])
    return build_argv("qemu", vm, fds, GuestFiles("/k", "/i"), sandbox=True)


def test_guest_ram_is_bound_to_host_nodes() -> None:
    argv = argv_of(spec(memory_mib=128, host_nodes=[1]))
    backend = json.loads(argv[argv.index("-object") + 1])
    assert backend == {"qom-type": "memory-backend-ram", "id": "ram", "size": 128 * 1024**2,
                       "host-nodes": [1], "policy": "bind"}
    assert "memory-backend=ram" in argv[argv.index("-M") + 1]
    shared = argv_of(spec(shared_fs_socket=Path("/run/x/fs.sock")))
    backend = json.loads(shared[shared.index("-object") + 1])
    assert backend["qom-type"] == "memory-backend-memfd" and backend["share"] is True
    assert "host-nodes" not in backend
    assert "-object" not in argv_of(spec())


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600.0), ("1h30m", 5400.0), ("-5s", -5.0), ("300ms", 0.3), ("1.5h", 5400.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "1h 2m"])
def test_not_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 1_000_000.0 - 600), ("0", 0.0), ("1700000000", 1_700_000_000.0),
    ("1700000000.5", 1_700_000_000.5), ("2023-11-14T22:13:20Z", 1_700_000_000.0),
    ("2023-11-14T23:13:20+01:00", 1_700_000_000.0)])
def test_filter_times_as_dockerds_get_timestamp(text: str, seconds: float) -> None:
    assert parse_go_timestamp(text, now=1_000_000.0) == seconds


@pytest.mark.parametrize("text", ["nonsense", "2023-13-45", "1.2.3"])
def test_filter_time_errors(text: str) -> None:
    message = f'failed to parse value as time or duration: "{text}"'
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_go_timestamp(text)
