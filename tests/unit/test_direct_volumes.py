"""Block devices for guests, the pure parts: direct-assigned volume
registrations (Kata's mountInfo.json), their mount options, host device
checks, device node modes, and the registration CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hbd.drivers import disks, qemuopts
from hbd.errors import InvalidParameter
from hbd.services.container import hostconfig
from hbd.services.container.sandbox import SandboxRecord
from hbd.services.volume import direct
from hbd.tools import direct_volume

GOOD = {"volume-type": "block", "device": "/dev/sdb", "fstype": "ext4",
        "options": ["noatime", "ro", "data=ordered"], "metadata": {"k": "v"}}


def test_a_mount_info_is_read_as_kata_writes_it() -> None:
    info = direct.parse_mount_info(json.dumps(GOOD))
    assert info == direct.MountInfo("block", "/dev/sdb", "ext4",
                                    ["noatime", "ro", "data=ordered"], {"k": "v"})
    assert info.readonly
    assert json.loads(info.to_json()) == GOOD
    # fstype defaults to ext4, options to none.
    bare = direct.parse_mount_info('{"volume-type": "block", "device": "/dev/vdc"}')
    assert (bare.fstype, bare.options, bare.readonly) == ("ext4", [], False)


@pytest.mark.parametrize("raw, words", [
    ("not json", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"volume-type": "nfs", "device": "/dev/sdb"}', "unknown volume-type 'nfs'"),
    ('{"device": "/dev/sdb"}', "unknown volume-type None"),
    ('{"volume-type": "block", "device": "sdb"}', "device must be an absolute path"),
    ('{"volume-type": "block", "device": "/dev/sdb", "fstype": "xfs"}',
     "fstype 'xfs' is not one the guest kernel mounts"),
    ('{"volume-type": "block", "device": "/dev/sdb", "options": "ro"}',
     "options must be a list"),
    ('{"volume-type": "block", "device": "/dev/sdb", "options": ["ro,noexec"]}',
     "options must be a list"),
])
def test_a_bad_mount_info_says_what_is_wrong(raw: str, words: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        direct.parse_mount_info(raw, "mountInfo.json")
    assert words in info.value.message
    assert info.value.message.startswith("mountInfo.json: ")


def test_mount_options_split_into_flags_and_filesystem_data() -> None:
    flags, data = direct.mount_flags(["ro", "noatime", "rw", "defaults", "data=journal",
                                      "errors=remount-ro", "nodev"])
    assert flags == 1 | 1024 | 4
    assert data == "data=journal,errors=remount-ro"
    assert direct.mount_flags([]) == (0, "")


def test_volume_paths_are_named_as_kata_runtime_names_them() -> None:
    # Go's base64.URLEncoding: '-' and '_' for '+' and '/', padded.
    assert direct.volume_key("/a/b") == "L2EvYg=="
    assert direct.volume_key("/??>") == "Lz8_Pg=="


def test_the_registry_adds_finds_and_removes(tmp_path: Path) -> None:
    registry = direct.DirectVolumes(tmp_path / "reg")
    info = direct.parse_mount_info(json.dumps(GOOD))
    assert registry.lookup("/var/lib/vol") is None
    written = registry.add("/var/lib/vol/", info)
    assert written == tmp_path / "reg" / direct.volume_key("/var/lib/vol") / "mountInfo.json"
    assert registry.lookup("/var/lib/vol") == info
    assert registry.lookup("relative") is None
    assert registry.remove("/var/lib/vol")
    assert registry.lookup("/var/lib/vol") is None
    assert not registry.remove("/var/lib/vol")
    with pytest.raises(InvalidParameter):
        registry.add("relative/path", info)


def test_a_broken_registration_is_an_error_not_a_plain_bind(tmp_path: Path) -> None:
    registry = direct.DirectVolumes(tmp_path)
    broken = tmp_path / direct.volume_key("/v") / "mountInfo.json"
    broken.parent.mkdir()
    broken.write_text('{"volume-type": "raw", "device": "/dev/sdb"}')
    with pytest.raises(InvalidParameter) as info:
        registry.lookup("/v")
    assert "direct volume /v: mountInfo.json: unknown volume-type 'raw'" in info.value.message


def test_only_block_devices_are_block_devices(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(disks.NotBlockDevice) as info:
        disks.block_device(str(tmp_path / "file"))
    assert str(info.value) == f"{tmp_path / 'file'} is not a block device"
    with pytest.raises(disks.NotBlockDevice):
        disks.block_device("/dev/null")
    with pytest.raises(disks.NotBlockDevice) as info:
        disks.block_device(str(tmp_path / "missing"))
    assert "no such file or directory" in str(info.value)


def test_a_device_is_found_among_the_host_mounts_by_number() -> None:
    device = disks.BlockDevice(Path("/dev/loop3"), os.makedev(7, 3), 0o660)
    assert device.number == "7:3"
    mountinfo = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                 "97 22 7:3 / /mnt/my\\040disk rw - ext4 /dev/loop3 rw\n"
                 "98 22 7:30 / /mnt/other rw - ext4 /dev/loop30 rw\n")
    assert disks.host_mounts_of(device, mountinfo) == ["/mnt/my disk"]
    assert disks.host_mounts_of(disks.BlockDevice(Path("/x"), os.makedev(8, 16), 0),
                                mountinfo) == []


def test_a_device_node_mode_follows_the_permissions_asked() -> None:
    assert hostconfig.device_node_mode(0o660, "rwm") == 0o660
    assert hostconfig.device_node_mode(0o660, "r") == 0o440
    assert hostconfig.device_node_mode(0o666, "w") == 0o222
    assert hostconfig.device_node_mode(0o4660, "m") == 0


def test_devices_other_than_block_devices_are_refused(tmp_path: Path) -> None:
    hc = {"Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n"}]}
    with pytest.raises(InvalidParameter) as info:
        hostconfig.check_devices(hc)
    assert info.value.message == (
        "hbd runs each container in its own virtual machine: host devices (--device) other "
        "than block devices cannot be passed to it: /dev/null is not a block device")


def test_a_host_device_is_a_host_device_node_for_qemu() -> None:
    assert qemuopts.file_node(3)["driver"] == "file"
    node = qemuopts.chain_node([1001], ["raw"], False, host_device=True)
    assert node["file"] == {"driver": "host_device", "filename": "/dev/fdset/1001",
                            "aio": "threads"}


def test_the_cli_registers_as_kata_runtime_does(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--root", str(tmp_path)]
    assert direct_volume.main([*root, "add", "--volume-path", "/k/vol",
                               "--mount-info", json.dumps(GOOD)]) == 0
    assert direct.DirectVolumes(tmp_path).lookup("/k/vol") is not None
    assert direct_volume.main([*root, "stats", "--volume-path", "/k/vol"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["mount-info"] == GOOD and stats["volume-path"] == "/k/vol"
    assert direct_volume.main([*root, "add", "--volume-path", "/k/bad", "--mount-info",
                               '{"volume-type": "loop", "device": "/dev/x"}']) == 1
    assert "unknown volume-type 'loop'" in capsys.readouterr().err
    assert direct_volume.main([*root, "remove", "--volume-path", "/k/vol"]) == 0
    assert direct_volume.main([*root, "remove", "--volume-path", "/k/vol"]) == 1
    assert not list(tmp_path.iterdir())


def test_a_sandbox_record_keeps_its_host_devices() -> None:
    """After an hbd restart the guest still holds its devices: the record says which."""
    record = SandboxRecord(id="s", owner="c", shared_fs=True)
    record.disks = {"image": 1, "scratch": 2, "d3": 3, "d4": 4}
    record.devices = {"7:3": "d3", "7:4": "d4"}
    record.readonly_disks = ["d4"]
    again = SandboxRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert (again.devices, again.readonly_disks) == ({"7:3": "d3", "7:4": "d4"}, ["d4"])
    again.forget_disk("d4")
    assert (again.disks, again.devices, again.readonly_disks) == \
        ({"image": 1, "scratch": 2, "d3": 3}, {"7:3": "d3"}, [])
    # A record from before host devices has none.
    old = record.to_dict()
    del old["devices"], old["readonly_disks"]
    assert SandboxRecord.from_dict(old).devices == {}
