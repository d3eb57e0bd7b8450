"""Plugin endpoints through docker-py's APIClient. Statuses and texts are the
ones dockerd 20.10 gave on this machine for the same requests; hbd keeps
plugins but never runs one, so enabling is refused."""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.api.conftest import ApiDaemon, serve_api_daemon
from tests.conformance import validate_response
from tests.registry_fixture import REGISTRY, registry

DUMMY_CONFIG = {
    "description": "Dummy test plugin for docker python SDK",
    "documentation": "https://github.com/docker/docker-py",
    "entrypoint": ["/dummy"],
    "network": {"type": "host"},
    "interface": {"types": ["docker.volumedriver/1.0"], "socket": "dummy.sock"},
    "env": [{"name": "DEBUG", "settable": ["value"], "value": "0"}],
}
PRIVILEGED_CONFIG = {
    **DUMMY_CONFIG,
    "linux": {"capabilities": ["CAP_SYS_ADMIN"],
              "devices": [{"name": "fuse", "path": "/dev/fuse", "settable": ["path"]}]},
    "mounts": [{"name": "state", "source": "/var/lib/x", "destination": "/state",
                "type": "bind", "options": ["rbind"], "settable": ["source"]}],
    "args": {"name": "args", "value": ["-v"], "settable": ["value"]},
}


def plugin_dir(base: Path, config: Any = DUMMY_CONFIG, content: str = "") -> Path:
    """config.json and rootfs/, as docker-py's testdata/dummy-plugin."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "rootfs" / "dummy").mkdir(parents=True, exist_ok=True)
    (base / "rootfs" / "dummy" / "file.txt").write_text(content)
    (base / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return base


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def raw(api_daemon: ApiDaemon) -> Iterator[docker.APIClient]:
    c = docker.APIClient(base_url=api_daemon.host, version="1.47")
    yield c
    for p in c.plugins():
        c.remove_plugin(p["Id"], force=True)
    c.close()


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(docker.errors.APIError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    return info.value.status_code, info.value.explanation


def post_create(raw: docker.APIClient, name: str | None, body: bytes) -> tuple[int, str]:
    params = {"name": name} if name is not None else {}
    r = raw._post(raw._url("/plugins/create"), params=params, data=body,
                  headers={"Content-Type": "application/x-tar"})
    return r.status_code, r.json()["message"] if r.content else ""


# -- create, inspect, list ----------------------------------------------------------------


def test_create_and_inspect_as_dockerd(raw: docker.APIClient, tmp_path: Path) -> None:
    assert raw.create_plugin("docker-sdk-py/dummy", str(plugin_dir(tmp_path / "p")))
    data = raw.inspect_plugin("docker-sdk-py/dummy")
    assert re.fullmatch(r"[0-9a-f]{64}", data["Id"])
    assert data["Name"] == "docker-sdk-py/dummy:latest"
    assert data["PluginReference"] == "docker-sdk-py/dummy:latest"
    assert data["Enabled"] is False
    assert data["Settings"] == {"Args": [], "Devices": [], "Env": ["DEBUG=0"], "Mounts": []}
    config = data["Config"]
    assert list(config) == ["Args", "Description", "DockerVersion", "Documentation",
                            "Entrypoint", "Env", "Interface", "IpcHost", "Linux", "Mounts",
                            "Network", "PidHost", "PropagatedMount", "User", "WorkDir", "rootfs"]
    assert config["Entrypoint"] == ["/dummy"]
    assert config["Args"] == {"Description": "", "Name": "", "Settable": None, "Value": None}
    assert config["Env"] == [{"Description": "", "Name": "DEBUG", "Settable": ["value"],
                              "Value": "0"}]
    assert config["Interface"] == {"Socket": "dummy.sock", "Types": ["docker.volumedriver/1.0"]}
    assert config["Linux"] == {"AllowAllDevices": False, "Capabilities": None, "Devices": None}
    assert config["Mounts"] is None and config["User"] == {} and config["WorkDir"] == ""
    assert config["Network"] == {"Type": "host"}
    assert config["rootfs"]["type"] == "layers"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", config["rootfs"]["diff_ids"][0])
    # The spec types Interface.Types as objects; dockerd (and hbd) send strings.
    checked = copy.deepcopy(data)
    checked["Config"]["Interface"]["Types"] = None
    validate_response(checked, "/plugins/{name}/json", "get")


def test_names_and_ids_find_a_plugin(raw: docker.APIClient, tmp_path: Path) -> None:
    raw.create_plugin("hbdtest/find", str(plugin_dir(tmp_path / "p")))
    plugin_id = raw.inspect_plugin("hbdtest/find")["Id"]
    for ref in ("hbdtest/find:latest", "docker.io/hbdtest/find", plugin_id, plugin_id[:7]):
        assert raw.inspect_plugin(ref)["Id"] == plugin_id
    for ref in ("hbdtest/find:v2", "find", "Bad", plugin_id + "0",
                f"hbdtest/find@sha256:{plugin_id}"):
        assert error_of(raw.inspect_plugin, ref) == (404, f"plugin {json.dumps(ref)} not found")


def test_an_ambiguous_id_prefix_is_refused(raw: docker.APIClient, tmp_path: Path) -> None:
    source = str(plugin_dir(tmp_path / "p"))
    firsts: dict[str, str] = {}
    for i in range(17):  # 17 ids, 16 first characters: two share one
        raw.create_plugin(f"hbdtest/many{i}", source)
        first = raw.inspect_plugin(f"hbdtest/many{i}")["Id"][0]
        if first in firsts:
            break
        firsts[first] = f"hbdtest/many{i}"
    assert error_of(raw.inspect_plugin, first) == (
        400, f'multiple plugins found for "{first}"')


def test_create_refuses_what_dockerd_refuses(raw: docker.APIClient, tmp_path: Path) -> None:
    raw.create_plugin("hbdtest/dup", str(plugin_dir(tmp_path / "p")))
    assert error_of(raw.create_plugin, "hbdtest/dup:latest", str(tmp_path / "p")) == (
        409, "plugin hbdtest/dup:latest already exists")
    good = tar_of({"config.json": json.dumps(DUMMY_CONFIG).encode(),
                   "rootfs/dummy/file.txt": b""})
    cases = [
        (None, good, "failed to parse reference : invalid reference format"),
        ("Bad/Name", good, "failed to parse reference Bad/Name: invalid reference format: "
                           "repository name must be lowercase"),
        ("hbdtest/x@sha256:" + "0" * 64, good, "canonical references are not permitted"),
        ("hbdtest/x", b"garbage", "failed to read from tar: unexpected EOF"),
        ("hbdtest/x", b"", "no rootfs found: EOF"),
        ("hbdtest/x", tar_of({"config.json": b"{}"}), "no rootfs found: EOF"),
        ("hbdtest/x", tar_of({"rootfs/a": b"a"}), "config not found"),
        ("hbdtest/x", tar_of({"x/config.json": b"{}", "x/rootfs/a": b""}),
         "no rootfs found: EOF"),
        ("hbdtest/x", tar_of({"config.json": b"{bad", "rootfs/a": b""}),
         "failed to parse config: invalid character 'b' looking for beginning of object key "
         "string"),
        ("hbdtest/x", tar_of({"config.json": b"[]", "rootfs/a": b""}),
         "failed to parse config: json: cannot unmarshal array into Go value of type "
         "types.PluginConfig"),
        ("hbdtest/x", tar_of({"config.json": b'{"entrypoint":"x"}', "rootfs/a": b""}),
         "failed to parse config: json: cannot unmarshal string into Go struct field "
         "PluginConfig.Entrypoint of type []string"),
        ("hbdtest/x", tar_of({"config.json": b'{"interface":{"socket":5}}', "rootfs/a": b""}),
         "failed to parse config: json: cannot unmarshal number into Go struct field "
         "PluginConfigInterface.Interface.Socket of type string"),
        ("hbdtest/x", tar_of({"config.json": b'{"user":{"uid":-1}}', "rootfs/a": b""}),
         "failed to parse config: json: cannot unmarshal number -1 into Go struct field "
         "PluginConfigUser.User.UID of type uint32"),
        ("hbdtest/x", tar_of({"config.json": b'{"interface":{"types":[1]}}', "rootfs/a": b""}),
         'failed to parse config: "1" is not a plugin interface type'),
    ]
    for name, body, message in cases:
        assert post_create(raw, name, body) == (500, message), message
    assert [p["Name"] for p in raw.plugins()] == ["hbdtest/dup:latest"]


def test_a_null_config_takes_every_default(raw: docker.APIClient) -> None:
    assert post_create(raw, "hbdtest/null", tar_of({"config.json": b"null",
                                                    "rootfs/a": b"a"}))[0] == 204
    data = raw.inspect_plugin("hbdtest/null")
    assert data["Config"]["Interface"] == {"Socket": "", "Types": None}
    assert data["Settings"] == {"Args": [], "Devices": [], "Env": [], "Mounts": []}


def test_list_and_its_filters(raw: docker.APIClient, tmp_path: Path) -> None:
    raw.create_plugin("hbdtest/vol", str(plugin_dir(tmp_path / "v")))
    net = {**DUMMY_CONFIG, "interface": {"types": ["docker.networkdriver/1.0"],
                                         "socket": "n.sock"}}
    raw.create_plugin("hbdtest/net", str(plugin_dir(tmp_path / "n", net)))

    def names(filters: dict[str, list[str]] | None = None) -> list[str]:
        r = raw._get(raw._url("/plugins"),
                     params={"filters": json.dumps(filters)} if filters else {})
        return sorted(p["Name"] for p in raw._result(r, True))

    assert names() == ["hbdtest/net:latest", "hbdtest/vol:latest"]
    assert names({"enabled": ["false"]}) == names()
    assert names({"enabled": ["true"]}) == []
    assert names({"capability": ["volumedriver"]}) == ["hbdtest/vol:latest"]
    assert names({"capability": ["^net"]}) == ["hbdtest/net:latest"]
    assert names({"capability": ["docker.volumedriver/1.0"]}) == []
    for filters, message in [({"enable": ["true"]}, "Invalid filter 'enable'"),
                             ({"enabled": ["maybe"]}, "Invalid filter 'enabled=[maybe]'")]:
        r = raw._get(raw._url("/plugins"), params={"filters": json.dumps(filters)})
        assert (r.status_code, r.json()["message"]) == (400, message)


# -- settings, enable, disable, remove ----------------------------------------------------


def test_set_changes_settable_values_only(raw: docker.APIClient, tmp_path: Path) -> None:
    raw.create_plugin("hbdtest/set", str(plugin_dir(tmp_path / "p", PRIVILEGED_CONFIG)))
    raw.configure_plugin("hbdtest/set", {"DEBUG": "1"})
    assert raw.inspect_plugin("hbdtest/set")["Settings"]["Env"] == ["DEBUG=1"]
    raw.configure_plugin("hbdtest/set", ["DEBUG.value=2", "args=a b", "state=/srv",
                                         "fuse.path=/dev/null"])
    data = raw.inspect_plugin("hbdtest/set")
    assert data["Settings"]["Env"] == ["DEBUG=2"]
    assert data["Settings"]["Args"] == ["a", "b"]
    assert data["Settings"]["Mounts"][0]["Source"] == "/srv"
    assert data["Config"]["Mounts"][0]["Source"] == "/srv"
    assert data["Settings"]["Devices"][0]["Path"] == "/dev/null"
    for args, message in [
        (["NOPE=1"], 'setting "NOPE" not found in the plugin configuration'),
        (["=1"], "invalid format, must be <name>[.<field>][=<value>]"),
        (["DEBUG.source=2"], '"DEBUG.source" is not settable'),
        (["DEBUG=3", "NOPE=1"], 'setting "NOPE" not found in the plugin configuration'),
    ]:
        assert error_of(raw.configure_plugin, "hbdtest/set", args) == (500, message)
    assert raw.inspect_plugin("hbdtest/set")["Settings"]["Env"] == ["DEBUG=2"]
    url = raw._url("/plugins/{0}/set", "hbdtest/set")
    for body, message in [("", "got EOF while reading request body"),
                          ("garbage", "invalid character 'g' looking for beginning of value"),
                          ('{"DEBUG":"1"}',
                           "json: cannot unmarshal object into Go value of type []string"),
                          ("[1]", "json: cannot unmarshal number into Go value of type string")]:
        r = raw._post(url, data=body, headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["message"]) == (400, message)
    assert error_of(raw.configure_plugin, "hbdtest/nope", ["DEBUG=1"]) == (
        404, 'plugin "hbdtest/nope" not found')


def test_enable_is_refused_and_disable_finds_it_disabled(raw: docker.APIClient,
                                                         tmp_path: Path) -> None:
    raw.create_plugin("hbdtest/run", str(plugin_dir(tmp_path / "p")))
    status, message = error_of(raw.enable_plugin, "hbdtest/run")
    assert status == 501
    assert message.startswith("cannot enable plugin hbdtest/run:latest: hbd does not run "
                              "plugins")
    assert raw.inspect_plugin("hbdtest/run")["Enabled"] is False
    assert error_of(raw.enable_plugin, "hbdtest/nope") == (404, 'plugin "hbdtest/nope" not found')
    r = raw._post(raw._url("/plugins/{0}/enable", "hbdtest/run"), params={"timeout": "x"})
    assert (r.status_code, r.json()["message"]) == (
        500, 'strconv.Atoi: parsing "x": invalid syntax')
    assert error_of(raw.disable_plugin, "hbdtest/run", True) == (
        409, "plugin is already disabled: plugin hbdtest/run:latest found but disabled")
    assert error_of(raw.disable_plugin, "hbdtest/nope") == (
        404, 'plugin "hbdtest/nope" not found')


def test_remove(raw: docker.APIClient, tmp_path: Path, api_daemon: ApiDaemon) -> None:
    raw.create_plugin("hbdtest/rm", str(plugin_dir(tmp_path / "p")))
    plugin_id = raw.inspect_plugin("hbdtest/rm")["Id"]
    files = Path(api_daemon.daemon.config.data_root) / "plugins" / plugin_id
    assert files.is_dir()
    assert raw.remove_plugin("hbdtest/rm") is True
    assert not files.exists()
    assert raw.plugins() == []
    for force in (False, True):
        assert error_of(raw.remove_plugin, "hbdtest/rm", force) == (
            404, 'plugin "hbdtest/rm" not found')


def test_plugin_events(raw: docker.APIClient, tmp_path: Path) -> None:
    since = int(time.time()) - 1
    raw.create_plugin("hbdtest/ev", str(plugin_dir(tmp_path / "p")))
    plugin_id = raw.inspect_plugin("hbdtest/ev")["Id"]
    raw.remove_plugin("hbdtest/ev")
    events = [e for e in raw.events(since=since, until=int(time.time()) + 1, decode=True,
                                     filters={"type": "plugin"})
              if e["Actor"]["ID"] == plugin_id]
    assert [(e["Action"], e["Actor"]["Attributes"]) for e in events] == [
        ("create", {"name": "hbdtest/ev:latest"}), ("remove", {"name": "hbdtest/ev:latest"})]


# -- registries -------------------------------------------------------------------------


def test_without_a_registry(raw: docker.APIClient, tmp_path: Path) -> None:
    assert raw.plugin_privileges("localhost:1/hbdtest/none") == []
    r = raw._get(raw._url("/plugins/privileges"))
    assert (r.status_code, r.json()["message"]) == (500, "invalid reference format")
    status, message = error_of(raw.pull_plugin, "localhost:1/hbdtest/none", [])
    assert status == 500 and message.startswith("error resolving plugin reference: ")
    raw.create_plugin("hbdtest/here", str(plugin_dir(tmp_path / "p")))
    assert error_of(raw.pull_plugin, "localhost:1/hbdtest/none", [], "hbdtest/here") == (
        400, "plugin hbdtest/here:latest already exists")
    url = raw._url("/plugins/pull")
    for body, message in [("", "failed to parse privileges: EOF"),
                          ("{}", "failed to parse privileges: json: cannot unmarshal object "
                                 "into Go value of type types.PluginPrivileges")]:
        r = raw._post(url, params={"remote": "localhost:1/x"}, data=body)
        assert (r.status_code, r.json()["message"]) == (500, message)
    status, message = error_of(raw.upgrade_plugin, "hbdtest/here", "localhost:1/x", [])
    assert status == 500 and message.startswith("error resolving plugin reference: ")
    assert error_of(raw.upgrade_plugin, "hbdtest/nope", "localhost:1/x", []) == (
        404, 'plugin "hbdtest/nope:latest" not found')
    # A push answers 200 and reports the failure in its stream, as dockerd does.
    r = raw._post(raw._url("/plugins/{0}/push", "localhost:1/hbdtest/here"))
    assert r.status_code == 404
    raw.create_plugin("localhost:1/hbdtest/here", str(plugin_dir(tmp_path / "p")))
    r = raw._post(raw._url("/plugins/{0}/push", "localhost:1/hbdtest/here"))
    messages = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200
    assert messages[0] == {"status": "The push refers to repository [localhost:1/hbdtest/here]"}
    assert messages[-1]["error"].startswith("error pushing plugin: ")


@pytest.mark.skipif(not Path(REGISTRY).exists(), reason="needs docker-registry")
def test_push_pull_and_upgrade_through_a_registry(raw: docker.APIClient, tmp_path: Path) -> None:
    with registry("none") as reg:
        first, second = f"{reg.host}/hbdtest/priv:v1", f"{reg.host}/hbdtest/plain"
        raw.create_plugin(first, str(plugin_dir(tmp_path / "a", PRIVILEGED_CONFIG, "a")))
        raw.create_plugin(second, str(plugin_dir(tmp_path / "b", DUMMY_CONFIG, "b")))
        for name in (first, second):
            r = raw._post(raw._url("/plugins/{0}/push", name))
            assert r.status_code == 200 and "error" not in r.text, r.text
        privileges = raw.plugin_privileges(first)
        assert privileges == [
            {"Name": "network", "Description": "permissions to access a network",
             "Value": ["host"]},
            {"Name": "mount", "Description": "host path to mount", "Value": ["/var/lib/x"]},
            {"Name": "device", "Description": "host device to access", "Value": ["/dev/fuse"]},
            {"Name": "capabilities", "Description": "list of additional capabilities required",
             "Value": ["CAP_SYS_ADMIN"]}]
        assert error_of(raw.pull_plugin, first, [], "hbdtest/local") == (
            500, "incorrect privileges")
        logs = list(raw.pull_plugin(first, privileges, "hbdtest/local"))
        assert any(m.get("status") == "Download complete" for m in logs)
        pulled = raw.inspect_plugin("hbdtest/local")
        original = raw.inspect_plugin(first)
        assert pulled["Name"] == "hbdtest/local:latest"
        assert pulled["PluginReference"] == first
        assert pulled["Config"] == original["Config"]
        assert pulled["Id"] != original["Id"]
        raw.configure_plugin("hbdtest/local", ["DEBUG=1"])
        logs = list(raw.upgrade_plugin("hbdtest/local", second,
                                       raw.plugin_privileges(second)))
        upgraded = raw.inspect_plugin("hbdtest/local")
        assert upgraded["Id"] == pulled["Id"]
        assert upgraded["Config"]["rootfs"] == raw.inspect_plugin(second)["Config"]["rootfs"]
        assert upgraded["PluginReference"] == f"{second}:latest"
        assert upgraded["Settings"]["Env"] == ["DEBUG=1"]
        status, message = error_of(raw.pull_plugin, f"{reg.host}/hbdtest/none", [])
        assert status == 404 and message.startswith("error resolving plugin reference: ")


# -- persistence --------------------------------------------------------------------------


def test_plugins_survive_a_restart(tmp_path: Path) -> None:
    with serve_api_daemon(tmp_path / "hbd") as api:
        c = docker.APIClient(base_url=api.host, version="1.47")
        c.create_plugin("hbdtest/keep", str(plugin_dir(tmp_path / "p")))
        c.configure_plugin("hbdtest/keep", ["DEBUG=1"])
        before = c.inspect_plugin("hbdtest/keep")
        c.create_plugin("hbdtest/gone", str(plugin_dir(tmp_path / "p")))
        c.remove_plugin("hbdtest/gone")
        data_root = Path(api.daemon.config.data_root)
        c.close()
    # What an interrupted create leaves: files without a record.
    leftover = data_root / "plugins" / ("f" * 64)
    leftover.mkdir()
    stray = data_root / "plugins" / before["Id"] / "stray"
    stray.write_text("x")
    with serve_api_daemon(tmp_path / "hbd") as api:
        c = docker.APIClient(base_url=api.host, version="1.47")
        assert c.inspect_plugin("hbdtest/keep") == before
        assert [p["Name"] for p in c.plugins()] == ["hbdtest/keep:latest"]
        assert not leftover.exists() and not stray.exists()
        c.close()
    shutil.rmtree(tmp_path / "p")
