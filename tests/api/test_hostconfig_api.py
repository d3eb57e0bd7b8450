"""HostConfig field by field, kill signals, prune filters, volume subpaths and
runtimes, through the real API and services (fake guest driver): dockerd's
checks and words, and what the guest is asked to do."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from hbd.drivers.agent import AgentError, Rlimit
from hbd.drivers.fake import FakeGuest, FakeGuestDriver
from tests.api.conftest import ApiDaemon
from tests.conformance import validate_definition

LABEL = {"hbd.test": "hostconfig"}


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    for container in c.containers(all=True, filters={"label": "hbd.test=hostconfig"}):
        c.remove_container(container["Id"], force=True, v=True)
    c.close()


def driver(api_daemon: ApiDaemon) -> FakeGuestDriver:
    guests = api_daemon.daemon.containers.sandboxes.driver
    assert isinstance(guests, FakeGuestDriver)
    return guests


def post_create(raw: docker.APIClient, host_config: dict[str, Any], name: str | None = None,
                **config: Any) -> requests.Response:
    body = {"Image": "busybox", "Cmd": ["sleep", "600"], "Labels": LABEL,
            "HostConfig": host_config, **config}
    return raw._post_json(raw._url("/containers/create"), data=body,
                          params={"name": name} if name else None)


def create(raw: docker.APIClient, host_config: dict[str, Any], name: str | None = None,
           **config: Any) -> str:
    r = post_create(raw, host_config, name, **config)
    assert r.status_code == 201, r.text
    return str(r.json()["Id"])


def guest_of(api_daemon: ApiDaemon, cid: str) -> FakeGuest:
    """The fake guest the container's sandbox runs in."""
    sandbox = api_daemon.daemon.containers.sandboxes.holding(cid)
    assert sandbox is not None
    guest = sandbox.guest
    assert isinstance(guest, FakeGuest)
    return guest


# -- every field: refused, or checked as dockerd checks it -----------------------------------

@pytest.mark.parametrize(("host_config", "status", "message"), [
    ({"CgroupParent": "x"}, 400, "a cgroup parent on the host (--cgroup-parent)"),
    ({"BlkioWeight": 500}, 400, "block I/O weights (--blkio-weight)"),
    ({"BlkioWeightDevice": [{"Path": "/dev/sda", "Weight": 100}]}, 400,
     "(--blkio-weight-device)"),
    ({"BlkioDeviceReadBps": [{"Path": "/dev/sda", "Rate": 1}]}, 400, "(--device-read-bps)"),
    ({"BlkioDeviceWriteBps": [{"Path": "/dev/sda", "Rate": 1}]}, 400, "(--device-write-bps)"),
    ({"BlkioDeviceReadIOps": [{"Path": "/dev/sda", "Rate": 1}]}, 400,
     "(--device-read-iops)"),
    ({"BlkioDeviceWriteIOps": [{"Path": "/dev/sda", "Rate": 1}]}, 400,
     "(--device-write-iops)"),
    ({"CpuRealtimePeriod": 1000}, 400, "no real-time group scheduling (--cpu-rt-period)"),
    ({"CpuRealtimeRuntime": 1000}, 400, "no real-time group scheduling (--cpu-rt-runtime)"),
    ({"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n",
                   "CgroupPermissions": "rwm"}]}, 400, "host devices (--device)"),
    ({"DeviceCgroupRules": ["c 1:3 rwm"]}, 400, "(--device-cgroup-rule)"),
    ({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, 400, "(--gpus"),
    ({"KernelMemory": 10_000_000}, 400, "cgroup v1 feature"),
    ({"KernelMemoryTCP": 10_000_000}, 400, "cgroup v1 feature"),
    ({"OomKillDisable": True}, 400, "cannot disable the OOM killer"),
    ({"Cgroup": "container:x"}, 400, "another container's cgroup"),
    ({"CgroupnsMode": "host"}, 400, "(--cgroupns host) is not available"),
    ({"UTSMode": "host"}, 400, "(--uts host) is not available"),
    ({"CpuCount": 1}, 400, "CpuCount is a Windows option"),
    ({"CpuPercent": 50}, 400, "CpuPercent is a Windows option"),
])
def test_what_a_guest_cannot_have_is_refused(raw: docker.APIClient, host_config: dict[str, Any],
                                             status: int, message: str) -> None:
    r = post_create(raw, host_config)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"message"}
    assert message in r.json()["message"]
    if "Windows" not in message:
        assert r.json()["message"].startswith("hbd runs each container in its own virtual "
                                              "machine: ")


@pytest.mark.parametrize(("host_config", "status", "message"), [
    # dockerd 20.10's own texts and statuses, request for request.
    ({"CpuPeriod": 500}, 400, "CPU cfs period can not be less than 1ms (i.e. 1000) or larger "
                              "than 1s (i.e. 1000000)"),
    ({"CpuPeriod": 2_000_000}, 400, "CPU cfs period can not be less than 1ms (i.e. 1000) or "
                                    "larger than 1s (i.e. 1000000)"),
    ({"CpuQuota": 500}, 400, "CPU cfs quota can not be less than 1ms (i.e. 1000)"),
    ({"NanoCpus": 10**9, "CpuPeriod": 100000}, 400,
     "Conflicting options: Nano CPUs and CPU Period cannot both be set"),
    ({"NanoCpus": 10**9, "CpuQuota": 100000}, 400,
     "Conflicting options: Nano CPUs and CPU Quota cannot both be set"),
    ({"CpusetCpus": "abc"}, 400, "Invalid value abc for cpuset cpus: invalid format: abc"),
    ({"CpusetCpus": "1-0"}, 400, "Invalid value 1-0 for cpuset cpus: invalid format: 1-0"),
    ({"CpusetCpus": "0-4096"}, 400, "Requested CPUs are not available - requested 0-4096, "
                                    "available: "),
    ({"CpusetMems": "x"}, 400, "Invalid value x for cpuset mems: invalid format: x"),
    ({"CpusetMems": "63"}, 400, "Requested memory nodes are not available - requested 63, "
                                "available: "),
    ({"MemoryReservation": 1000}, 400, "Minimum memory reservation allowed is 6MB"),
    ({"Memory": 10_000_000, "MemoryReservation": 20_000_000}, 400,
     "Minimum memory limit can not be less than memory reservation limit, see usage"),
    ({"MemorySwap": 10_000_000}, 400,
     "You should always set the Memory limit when using Memoryswap limit, see usage"),
    ({"Memory": 20_000_000, "MemorySwap": 10_000_000}, 400,
     "Minimum memoryswap limit should be larger than memory limit, see usage"),
    ({"MemorySwappiness": 101}, 400, "Invalid value: 101, valid memory swappiness range is "
                                     "0-100"),
    ({"MemorySwappiness": -2}, 400, "Invalid value: -2, valid memory swappiness range is "
                                    "0-100"),
    ({"OomScoreAdj": 1001}, 400, "Invalid value 1001, range for oom score adj is "
                                 "[-1000, 1000]"),
    ({"ShmSize": -1}, 400, "SHM size can not be less than 0"),
    ({"CgroupnsMode": "nope"}, 400, "invalid cgroup namespace mode: nope"),
    ({"Isolation": "hyperv"}, 500, "Invalid isolation: \"hyperv\" - linux only supports "
                                   "'default'"),
    ({"Isolation": "process"}, 500, "Invalid isolation: \"process\" - linux only supports "
                                    "'default'"),
    ({"IOMaximumIOps": 100}, 500, "Invalid QoS settings: linux does not support configuration "
                                  "of maximum IOPs"),
    ({"IOMaximumBandwidth": 100}, 500, "Invalid QoS settings: linux does not support "
                                       "configuration of maximum bandwidth"),
    ({"StorageOpt": {"nope": "1"}}, 500, "Unknown option nope"),
    ({"StorageOpt": {"size": "lots"}}, 400, "invalid storage size: lots"),
    ({"StorageOpt": {"size": "1m"}}, 400, "invalid storage size: 1m"),
    ({"Runtime": "nope"}, 400, "Unknown runtime specified nope"),
    ({"UsernsMode": "private"}, 400, "invalid USER mode: private"),
])
def test_checks_and_words_as_dockerd(raw: docker.APIClient, host_config: dict[str, Any],
                                     status: int, message: str) -> None:
    r = post_create(raw, host_config)
    assert r.status_code == status, r.text
    assert r.json()["message"].startswith(message), r.json()


def test_nano_cpus_beyond_the_host_are_refused(raw: docker.APIClient) -> None:
    r = post_create(raw, {"NanoCpus": 4096 * 10**9})
    assert r.status_code == 400
    assert r.json()["message"].startswith("Range of CPUs is from 0.01 to ")


def test_accepted_values_show_as_dockerd_shows_them(raw: docker.APIClient) -> None:
    cid = create(raw, {"PidsLimit": -5, "MemorySwappiness": -1, "Memory": 20_000_000,
                       "MemorySwap": -1, "UsernsMode": "host", "Isolation": "default",
                       "CpusetCpus": "0", "CpusetMems": "0", "OomScoreAdj": -500,
                       "Annotations": {"a": "b"}})
    hc = raw.inspect_container(cid)["HostConfig"]
    assert hc["PidsLimit"] is None and hc["MemorySwappiness"] is None
    assert hc["MemorySwap"] == -1 and hc["OomScoreAdj"] == -500
    assert hc["CpusetCpus"] == "0" and hc["Annotations"] == {"a": "b"}
    assert hc["Runtime"] == "hbd" and hc["CgroupnsMode"] == "private"


def test_stop_signal_is_parsed_at_create(raw: docker.APIClient) -> None:
    r = post_create(raw, {}, StopSignal="NOPE")
    assert r.status_code == 400 and r.json()["message"] == "Invalid signal: NOPE"
    assert post_create(raw, {}, StopSignal="RTMIN+3").status_code == 201


# -- what the guest is asked to do -----------------------------------------------------------

def test_process_settings_reach_the_guest(api_daemon: ApiDaemon,
                                          raw: docker.APIClient) -> None:
    cid = create(raw, {
        "GroupAdd": ["audio", "1234"], "OomScoreAdj": 500, "CpuShares": 512,
        "MemoryReservation": 64 * 1024 * 1024, "Init": True,
        "Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200},
                    {"Name": "NPROC", "Soft": -1, "Hard": -1}]})
    raw.start(cid)
    guest = guest_of(api_daemon, cid)
    setup = next(iter(guest.containers.values()))
    assert setup.group_add == ["audio", "1234"]
    assert setup.oom_score_adj == 500
    assert setup.rlimits == [Rlimit("nofile", 100, 200), Rlimit("nproc", -1, -1)]
    # runc's conversion of 512 shares, and memory.low for the reservation.
    assert setup.cpu_weight == 1 + (510 * 9999) // 262142
    assert setup.memory_low == 64 * 1024 * 1024
    assert setup.init is True
    main = guest.started[-1]
    assert main.args == ["/sbin/docker-init", "--", "sleep", "600"]
    assert raw.inspect_container(cid)["Path"] == "sleep"


def test_cpuset_pins_the_guest_and_sizes_its_vcpus(api_daemon: ApiDaemon,
                                                   raw: docker.APIClient) -> None:
    cid = create(raw, {"CpusetCpus": "0"})
    raw.start(cid)
    guest = guest_of(api_daemon, cid)
    assert guest.spec.vm.host_cpus == [0] and guest.spec.vm.vcpus == 1
    assert guest.spec.vm.host_nodes == []  # node 0 is all this host has, or no binding
    warnings = raw.update_container(cid, cpuset_cpus="0", cpu_shares=1024,
                                    mem_reservation="32m")
    assert warnings.get("Warnings") in (None, [])
    assert guest.host_cpus == [0]
    update = guest.resources[next(iter(guest.containers))]
    assert update.cpu_weight == 1 + (1022 * 9999) // 262142
    assert update.memory_low == 32 * 1024 * 1024


@pytest.mark.parametrize(("host_config", "message"), [
    ({"Ulimits": [{"Name": "nope", "Soft": 1, "Hard": 1}]}, "wrong rlimit value: RLIMIT_NOPE"),
    ({"CpuShares": 300000}, "the maximum allowed cpu-shares is 262144"),
    ({"Sysctls": {"kernel.hostname": "x"}},
     'sysctl "kernel.hostname" is not allowed as it conflicts with the OCI "hostname" field'),
    ({"Sysctls": {"../../etc/x": "1"}}, 'sysctl "../../etc/x" is not in a separate kernel '
                                         "namespace"),
])
def test_runc_checks_fail_the_start(raw: docker.APIClient, host_config: dict[str, Any],
                                    message: str) -> None:
    cid = create(raw, host_config)
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(cid)
    assert e.value.status_code == 500
    assert e.value.explanation == f"failed to create task for container: {message}: unknown"
    state = raw.inspect_container(cid)["State"]
    assert state["ExitCode"] == 128 and message in state["Error"]


def test_a_guest_of_its_own_takes_any_sysctl_a_shared_one_only_namespaced(
        raw: docker.APIClient) -> None:
    owner = create(raw, {"Sysctls": {"vm.max_map_count": "262144",
                                     "net.ipv4.ip_forward": "1"}})
    raw.start(owner)
    side = create(raw, {"NetworkMode": f"container:{owner}",
                        "Sysctls": {"vm.swappiness": "10"}})
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(side)
    assert e.value.status_code == 500
    assert 'sysctl "vm.swappiness" is not in a separate kernel namespace' in str(e.value)
    namespaced = create(raw, {"NetworkMode": f"container:{owner}",
                              "Sysctls": {"kernel.shmmax": "1000000", "fs.mqueue.msg_max": "20"}})
    raw.start(namespaced)


def test_storage_opt_size_sizes_the_writable_layer(api_daemon: ApiDaemon,
                                                  raw: docker.APIClient) -> None:
    cid = create(raw, {"StorageOpt": {"size": "96m"}})
    scratch = Path(raw.inspect_container(cid)["GraphDriver"]["Data"]["ScratchDisk"])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(scratch)],
                                     check=True, capture_output=True).stdout)
    assert info["virtual-size"] == 96 * 1024 * 1024
    default = create(raw, {})
    scratch = Path(raw.inspect_container(default)["GraphDriver"]["Data"]["ScratchDisk"])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(scratch)],
                                     check=True, capture_output=True).stdout)
    assert info["virtual-size"] != 96 * 1024 * 1024


def test_volume_driver_hbd_has_not_is_dockerds_404(raw: docker.APIClient) -> None:
    assert post_create(raw, {"VolumeDriver": "nope"}).status_code == 201
    r = post_create(raw, {"VolumeDriver": "nope", "Binds": ["hcvd:/x"]})
    assert r.status_code == 404
    assert r.json()["message"] == ('create hcvd: error looking up volume plugin nope: '
                                   'plugin "nope" not found')


# -- the user and its groups: dockerd resolves them, and says so with a 500 -------------------

def test_user_errors_are_dockerds_500(api_daemon: ApiDaemon, raw: docker.APIClient,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cid = create(raw, {"GroupAdd": ["nope"]})

    async def refuse(spec: Any, output: Any) -> int:
        raise AgentError("user", "Unable to find group nope: no matching entries in group "
                                 "file", 2)

    real_boot = driver(api_daemon).boot

    async def boot(spec: Any) -> Any:
        guest = await real_boot(spec)
        monkeypatch.setattr(guest, "start", refuse)
        return guest

    monkeypatch.setattr(driver(api_daemon), "boot", boot)
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(cid)
    assert e.value.status_code == 500
    assert e.value.explanation == "Unable to find group nope: no matching entries in group file"
    state = raw.inspect_container(cid)["State"]
    assert state["ExitCode"] == 128 and state["Error"] == e.value.explanation


# -- runtimes ----------------------------------------------------------------------------------

def test_runtimes_hbd_and_its_aliases(raw: docker.APIClient) -> None:
    info = raw.info()
    validate_definition(info, "SystemInfo")
    assert info["DefaultRuntime"] == "hbd"
    assert {"hbd", "runc", "io.containerd.runc.v2"} <= set(info["Runtimes"])
    assert info["InitBinary"] == "docker-init"
    for runtime in ("runc", "io.containerd.runc.v2", "hbd", ""):
        cid = create(raw, {"Runtime": runtime})
        assert raw.inspect_container(cid)["HostConfig"]["Runtime"] == (runtime or "hbd")


def test_docker_py_runtime_runc_runs(client: docker.DockerClient) -> None:
    c = client.containers.run("busybox", ["true"], runtime="runc", detach=True, labels=LABEL)
    try:
        assert c.wait(timeout=30)["StatusCode"] == 0
        assert c.attrs["HostConfig"]["Runtime"] == "runc"
    finally:
        c.remove(force=True)


# -- kill --------------------------------------------------------------------------------------

def kill(raw: docker.APIClient, ref: str, signal: str | None) -> requests.Response:
    params = {"signal": signal} if signal is not None else None
    return raw._post(raw._url("/containers/{0}/kill", ref), params=params)


def events_of(raw: docker.APIClient, cid: str, since: float) -> list[dict[str, Any]]:
    stream = raw.events(since=since, until=time.time() + 1, decode=True,
                        filters={"container": cid})
    return [e for e in stream if e["Action"] in ("kill", "die")]


@pytest.mark.parametrize(("signal", "number"), [
    ("SIGUSR1", 10), ("usr2", 12), ("15", 15), ("RTMIN+3", 37), ("SIGRTMAX-2", 62),
    ("HUP", 1)])
def test_kill_with_any_signal_exits_128_plus_n(raw: docker.APIClient, signal: str,
                                               number: int) -> None:
    since = time.time()
    cid = create(raw, {}, name=f"kill-{number}")
    raw.start(cid)
    r = kill(raw, cid, signal)
    assert r.status_code == 204, r.text
    assert raw.wait(cid, timeout=30)["StatusCode"] == 128 + number
    kills, dies = [], []
    for event in events_of(raw, cid, since):
        (kills if event["Action"] == "kill" else dies).append(event["Actor"]["Attributes"])
    assert kills == [{"hbd.test": "hostconfig", "image": "busybox", "name": f"kill-{number}",
                      "signal": str(number)}]
    assert dies[-1]["exitCode"] == str(128 + number)
    assert raw.inspect_container(cid)["State"]["ExitCode"] == 128 + number


def test_kill_errors_as_dockerd(raw: docker.APIClient) -> None:
    cid = create(raw, {}, name="killerrs")
    for signal in ("SIGNOPE", "0", " 9", "1.5", "SIGRTMIN+16", "RTMAX+1"):
        r = kill(raw, "killerrs", signal)
        assert (r.status_code, r.json()) == (400, {"message": f"Invalid signal: {signal}"})
    # Parsed, but no Linux signal: after the container is found, before it must run.
    for signal, shown in (("65", "65"), ("32", "32"), ("-1", "18446744073709551615")):
        r = kill(raw, "killerrs", signal)
        assert r.status_code == 500
        assert r.json()["message"] == ("Cannot kill container: killerrs: The linux daemon "
                                       f"does not support signal {shown}")
    r = kill(raw, "killerrs", None)
    assert r.status_code == 409
    assert r.json()["message"] == f"Cannot kill container: killerrs: Container {cid} is not " \
                                  "running"
    r = kill(raw, "nope-nope", "65")
    assert (r.status_code, r.json()["message"]) == (
        404, "Cannot kill container: nope-nope: No such container: nope-nope")


# -- ps and prune ------------------------------------------------------------------------------

def test_sparse_list_is_the_summary(client: docker.DockerClient) -> None:
    c = client.containers.create("busybox", ["true"], name="sparse1", labels=LABEL)
    try:
        found = client.containers.list(all=True, sparse=True, filters={"name": "sparse1"})
        assert [x.id for x in found] == [c.id]
        sparse = found[0]
        validate_definition(sparse.attrs, "ContainerSummary")
        assert sparse.attrs["Names"] == ["/sparse1"] and sparse.status == "created"
        assert sparse.attrs["Labels"] == LABEL
        assert "Config" not in sparse.attrs  # nothing was inspected
        sparse.reload()
        assert sparse.name == "sparse1" and sparse.labels == LABEL
    finally:
        c.remove()


def prune(raw: docker.APIClient, filters: dict[str, list[str]]) -> requests.Response:
    return raw._post(raw._url("/containers/prune"), params={"filters": json.dumps(filters)})


def test_prune_until_and_label_filters(raw: docker.APIClient) -> None:
    old = create(raw, {}, Labels={**LABEL, "prune": "old"})
    keep = create(raw, {}, Labels={**LABEL, "prune": "keep"})
    r = prune(raw, {"until": ["10m"], "label": ["prune=old"]})
    assert r.status_code == 200 and r.json()["ContainersDeleted"] is None  # too young
    r = prune(raw, {"until": [str(int(time.time()) + 60)], "label": ["prune=old"]})
    assert r.json() == {"ContainersDeleted": [old], "SpaceReclaimed": 0}
    r = prune(raw, {"until": ["-1m"], "label": ["hbd.test=hostconfig"],
                    "label!": ["prune=keep"]})
    assert r.json()["ContainersDeleted"] is None
    assert raw.inspect_container(keep)["Id"] == keep


@pytest.mark.parametrize(("filters", "status", "message"), [
    ({"until": ["nonsense"]}, 500, 'failed to parse value as time or duration: "nonsense"'),
    ({"until": ["1h", "2h"]}, 500, "more than one until filter specified"),
    ({"status": ["exited"]}, 400, "invalid filter 'status'"),
])
def test_prune_filter_errors(raw: docker.APIClient, filters: dict[str, list[str]],
                             status: int, message: str) -> None:
    r = prune(raw, filters)
    assert (r.status_code, r.json()) == (status, {"message": message})


# -- volume subpaths ---------------------------------------------------------------------------

def subpath_mount(source: str, subpath: str, target: str = "/d") -> dict[str, Any]:
    return {"Type": "volume", "Source": source, "Target": target,
            "VolumeOptions": {"Subpath": subpath}}


@pytest.mark.parametrize(("mount", "message"), [
    (subpath_mount("", "sub"), 'invalid mount config for type "volume": must not set '
                               "Subpath when using anonymous volumes"),
    (subpath_mount("hcsub", "/abs"), 'invalid mount config for type "volume": subpath must '
                                     "be a relative path within the volume"),
    (subpath_mount("hcsub", "a/../../b"), 'invalid mount config for type "volume": subpath '
                                          "must be a relative path within the volume"),
])
def test_subpath_checks_at_create(raw: docker.APIClient, mount: dict[str, Any],
                                  message: str) -> None:
    r = post_create(raw, {"Mounts": [mount]})
    assert (r.status_code, r.json()) == (400, {"message": message})


def test_missing_subpath_fails_the_start_as_dockerd_26(api_daemon: ApiDaemon,
                                                       raw: docker.APIClient) -> None:
    raw.create_volume("hcsub1")
    data = Path(raw.inspect_volume("hcsub1")["Mountpoint"])
    cid = create(raw, {"Mounts": [subpath_mount("hcsub1", "app/logs")]})
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(cid)
    path = data.resolve() / "app/logs"
    assert e.value.status_code == 404
    assert e.value.explanation == (f"cannot access path {path}: lstat {data.resolve()}/app: "
                                   "no such file or directory")
    assert raw.inspect_container(cid)["State"]["ExitCode"] == 128
    (data / "app/logs").mkdir(parents=True)
    (data / "app/logs/mark").write_text("in the subpath")
    raw.start(cid)
    setup = next(iter(guest_of(api_daemon, cid).containers.values()))
    share = next(m for m in setup.mounts if m.target == "/d")
    # The host shares the subdirectory itself; the guest sees nothing else of it.
    assert share.type == "share" and share.subpath == ""
    exported = guest_of(api_daemon, cid).spec.shared_dir
    assert exported is not None
    # Mounted in the daemon's share space (hbd.drivers.hostmount), not the host's.
    shares = api_daemon.daemon.containers.sandboxes.shares
    assert shares.run((exported / share.source / "mark").read_text) == \
        "in the subpath"
    raw.remove_container(cid, force=True)
    raw.remove_volume("hcsub1")


def test_subpath_may_not_leave_the_volume_by_symlink(raw: docker.APIClient) -> None:
    raw.create_volume("hcsub2")
    data = Path(raw.inspect_volume("hcsub2")["Mountpoint"])
    (data / "out").symlink_to("/etc")
    cid = create(raw, {"Mounts": [subpath_mount("hcsub2", "out")]})
    with pytest.raises(docker.errors.APIError) as e:
        raw.start(cid)
    assert e.value.status_code == 400
    assert e.value.explanation.startswith("path concatenation escapes the base directory")
    raw.remove_container(cid, force=True)
    raw.remove_volume("hcsub2")


def test_block_volume_subpath_goes_to_the_guest(api_daemon: ApiDaemon,
                                                raw: docker.APIClient) -> None:
    raw.create_volume("hcsub3", driver_opts={"type": "block", "size": "64m"})
    cid = create(raw, {"Mounts": [subpath_mount("hcsub3", "db")]})
    raw.start(cid)
    setup = next(iter(guest_of(api_daemon, cid).containers.values()))
    disk = next(m for m in setup.mounts if m.target == "/d")
    assert disk.type == "disk" and disk.subpath == "db"
    raw.remove_container(cid, force=True)
    raw.remove_volume("hcsub3")


def test_cli_container_prune_with_filters(api_daemon: ApiDaemon, raw: docker.APIClient) -> None:
    young = create(raw, {}, Labels={**LABEL, "prune": "cli"})
    kept = api_daemon.docker("container", "prune", "-f", "--filter", "until=1h",
                             "--filter", "label=prune=cli").stdout.decode()
    assert young not in kept
    pruned = api_daemon.docker("container", "prune", "-f", "--filter", "until=-1m",
                               "--filter", "label=prune=cli").stdout.decode()
    assert young in pruned.split() and "Total reclaimed space" in pruned


# -- read-only recursion of binds ----------------------------------------------------------

def ro_bind(read_only: bool, **options: bool) -> dict[str, Any]:
    return {"Type": "bind", "Source": "/tmp", "Target": "/t", "ReadOnly": read_only,
            "BindOptions": options}


@pytest.mark.parametrize(("mount", "message"), [
    (ro_bind(False, ReadOnlyNonRecursive=True),
     "mount options conflict: !ReadOnly && BindOptions.ReadOnlyNonRecursive"),
    (ro_bind(False, ReadOnlyForceRecursive=True),
     "mount options conflict: !ReadOnly && BindOptions.ReadOnlyForceRecursive"),
    (ro_bind(True, ReadOnlyNonRecursive=True, ReadOnlyForceRecursive=True),
     "mount options conflict: ReadOnlyNonRecursive && BindOptions.ReadOnlyForceRecursive"),
])
def test_read_only_recursion_checks_at_create(raw: docker.APIClient, mount: dict[str, Any],
                                              message: str) -> None:
    r = post_create(raw, {"Mounts": [mount]})
    assert (r.status_code, r.json()) == (400, {"message": message})


def test_shared_propagation_is_refused_and_slave_kept(raw: docker.APIClient) -> None:
    r = post_create(raw, {"Binds": ["/tmp:/t:rshared"]})
    assert r.status_code == 400 and "cannot reach the host" in r.json()["message"]
    cid = create(raw, {"Binds": ["/tmp:/t:rslave"]})
    try:
        [mount] = raw.inspect_container(cid)["Mounts"]
        assert mount["Propagation"] == "rslave"
    finally:
        raw.remove_container(cid, force=True)
