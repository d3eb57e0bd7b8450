from typing import Any

import pytest

from hbd.errors import InvalidParameter
from hbd.services.container import config as cc
from hbd.services.container import signals

IMAGE = {
    "Env": ["PATH=/usr/bin:/bin", "LANG=C"],
    "Cmd": ["sh"],
    "Entrypoint": None,
    "WorkingDir": "/srv",
    "User": "app",
    "Labels": {"a": "image", "b": "image"},
    "ExposedPorts": {"80/tcp": {}},
    "Volumes": {"/data": {}},
    "StopSignal": "SIGQUIT",
}


def merged(body: dict) -> dict:
    config = cc.normalize_config({"Image": "x", **body})
    cc.merge_image_config(config, IMAGE)
    return config


def test_image_defaults_fill_an_empty_config() -> None:
    config = merged({})
    assert config["Cmd"] == ["sh"]
    assert config["Env"] == ["PATH=/usr/bin:/bin", "LANG=C"]
    assert config["WorkingDir"] == "/srv"
    assert config["User"] == "app"
    assert config["Labels"] == {"a": "image", "b": "image"}
    assert config["ExposedPorts"] == {"80/tcp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGQUIT"


def test_user_values_win_and_env_merges_by_key() -> None:
    config = merged({"Env": ["LANG=fr", "X=1"], "Labels": {"a": "user"}, "User": "root",
                     "Cmd": ["echo", "hi"]})
    assert config["Env"] == ["LANG=fr", "X=1", "PATH=/usr/bin:/bin"]
    assert config["Labels"] == {"a": "user", "b": "image"}
    assert config["User"] == "root"
    assert config["Cmd"] == ["echo", "hi"]


def test_user_entrypoint_drops_image_cmd() -> None:
    config = merged({"Entrypoint": ["/bin/true"]})
    assert config["Cmd"] is None
    assert cc.command_of(config) == ["/bin/true"]


def test_empty_entrypoint_string_means_none() -> None:
    config = merged({"Entrypoint": [""], "Cmd": ["ls"]})
    assert cc.command_of(config) == ["ls"]


def test_no_command_is_an_error() -> None:
    config = cc.normalize_config({"Image": "x"})
    cc.merge_image_config(config, {})
    with pytest.raises(InvalidParameter, match="No command specified"):
        cc.command_of(config)


def test_cmd_may_be_a_string() -> None:
    assert cc.normalize_config({"Cmd": "ls"})["Cmd"] == ["ls"]


def test_process_env_defaults_and_overrides() -> None:
    config = cc.normalize_config({"Env": ["PATH=/x", "A=1", "UNSET"], "Tty": True})
    env = cc.process_env(config, "host1")
    assert env == ["PATH=/x", "HOSTNAME=host1", "TERM=xterm", "A=1"]


@pytest.mark.parametrize(("text", "number"), [
    ("KILL", 9), ("SIGTERM", 15), ("15", 15), ("sigint", 2), (10, 10), ("RTMIN", 34),
    ("SIGRTMIN+3", 37), ("rtmin+15", 49), ("RTMAX-14", 50), ("SIGRTMAX-2", 62),
    ("RTMAX", 64), ("CLD", 17), ("POLL", 29), ("IOT", 6), ("+9", 9),
    # Parsed as dockerd parses them; `kill` refuses those Linux has no name for.
    ("65", 65), ("-1", -1), ("32", 32)])
def test_parse_signal(text: str | int, number: int) -> None:
    assert cc.parse_signal(text) == number


@pytest.mark.parametrize("bad", ["NOPE", "0", "", " 9", "1.5", "SIGRTMIN+16", "RTMIN+",
                                 "RTMAX+1", "RTMIN-1", "1_0", "99999999999999999999"])
def test_parse_signal_rejects(bad: str) -> None:
    with pytest.raises(InvalidParameter, match="Invalid signal"):
        cc.parse_signal(bad)


@pytest.mark.parametrize(("number", "valid"), [(1, True), (31, True), (32, False),
                                               (33, False), (34, True), (64, True),
                                               (65, False), (-1, False)])
def test_signals_linux_names(number: int, valid: bool) -> None:
    assert signals.valid_for_platform(number) is valid


def test_host_config_defaults_and_restart_policy_checks() -> None:
    hc = cc.normalize_host_config(None)
    assert hc["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert hc["NetworkMode"] == "default"
    assert "Mounts" not in hc
    with pytest.raises(InvalidParameter, match="invalid restart policy"):
        cc.normalize_host_config({"RestartPolicy": {"Name": "sometimes"}})
    with pytest.raises(InvalidParameter, match="AutoRemove"):
        cc.normalize_host_config({"AutoRemove": True, "RestartPolicy": {"Name": "always"}})
    with pytest.raises(InvalidParameter, match="Minimum memory"):
        cc.normalize_host_config({"Memory": 1024})


def test_names() -> None:
    assert cc.validate_name("web") == "/web"
    with pytest.raises(InvalidParameter, match="Invalid container name"):
        cc.validate_name("bad name")
    taken = {cc.generate_name(set()) for _ in range(20)}
    assert all("_" in n for n in taken)


def log_config(log: dict | None) -> dict:
    return cc.normalize_host_config({"LogConfig": log})["LogConfig"]


@pytest.mark.parametrize(("given", "kept"), [
    (None, {"Type": "json-file", "Config": {}}),
    ({"Type": "", "Config": None}, {"Type": "json-file", "Config": {}}),
    ({"Type": "local"}, {"Type": "local", "Config": {}}),
    # dockerd checks nothing of the none driver's options.
    ({"Type": "none", "Config": {"mode": "bogus", "x": "1"}},
     {"Type": "none", "Config": {"mode": "bogus", "x": "1"}}),
    # Values are read when the container starts, not here.
    ({"Type": "json-file", "Config": {"max-size": "abc", "labels-regex": "a", "tag": "t",
                                      "cache-disabled": "true", "cache-max-size": "zz"}},
     {"Type": "json-file", "Config": {"max-size": "abc", "labels-regex": "a", "tag": "t",
                                      "cache-disabled": "true", "cache-max-size": "zz"}}),
    ({"Type": "local", "Config": {"mode": "non-blocking", "max-buffer-size": "1m"}},
     {"Type": "local", "Config": {"mode": "non-blocking", "max-buffer-size": "1m"}}),
])
def test_log_config_is_normalized(given: dict | None, kept: dict) -> None:
    assert log_config(given) == kept


@pytest.mark.parametrize(("given", "message"), [
    ({"Type": "nope"}, 'error looking up logging plugin nope: plugin "nope" not found'),
    ({"Type": "NONE"}, 'error looking up logging plugin NONE: plugin "NONE" not found'),
    ({"Type": "json-file", "Config": {"foo": "bar"}},
     "unknown log opt 'foo' for json-file log driver"),
    ({"Type": "local", "Config": {"tag": "x"}}, "unknown log opt 'tag' for log driver local"),
    ({"Type": "nope", "Config": {"mode": "bad"}}, "logger: logging mode not supported: bad"),
    ({"Type": "json-file", "Config": {"max-buffer-size": "1m"}},
     "logger: max-buffer-size option is only supported with 'mode=non-blocking'"),
    ({"Type": "json-file", "Config": {"mode": "non-blocking", "max-buffer-size": "-1"}},
     "error parsing option max-buffer-size: invalid size: '-1'"),
    ({"Type": "json-file", "Config": {"cache-disabled": "maybe"}},
     "invalid value for option cache-disabled: maybe"),
    ({"Type": "syslog"}, "hbd does not serve the syslog logging driver: use json-file, "
                         "local or none"),
    ({"Type": 5}, "json: cannot unmarshal number into Go struct field "
                  "LogConfig.HostConfig.LogConfig.Type of type string"),
    ({"Type": "json-file", "Config": {"max-size": 5}},
     "json: cannot unmarshal number into Go struct field "
     "LogConfig.HostConfig.LogConfig.Config of type string"),
])
def test_log_config_is_refused_as_dockerd(given: dict, message: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        log_config(given)
    assert e.value.message == message


@pytest.mark.parametrize(("body", "expected"), [
    # No HostConfig object: the top-level fields are the host config.
    ({"Runtime": "runc", "Memory": 8000000}, {"Runtime": "runc", "Memory": 8000000}),
    ({"HostConfig": None, "Runtime": "runc"}, {"Runtime": "runc"}),
    # With one, only four fields fill in its zero values (as dockerd 20.10 answers).
    ({"Runtime": "bogus", "HostConfig": {"Runtime": "runc"}}, {"Runtime": "runc"}),
    ({"Runtime": "bogus", "HostConfig": {}}, {}),
    ({"Memory": 8000000, "CpuShares": 7, "HostConfig": {"CpuShares": 3}},
     {"Memory": 8000000, "CpuShares": 3}),
    ({"Cpuset": "0", "HostConfig": {}}, {"CpusetCpus": "0"}),
    ({"Image": "busybox"}, None),
])
def test_host_config_at_the_top_level(body: dict[str, Any], expected: Any) -> None:
    assert cc.host_config_of(body) == expected
