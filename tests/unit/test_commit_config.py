"""The config `docker commit` gives the new image: --change and a body config.

Expected values are what dockerd 20.10 made of the same container and
request here (a busybox container created with -e A=1 -l base=1 and the
command `sh -c 'echo hi'`)."""

from __future__ import annotations

from typing import Any

import pytest

from hbd.errors import InvalidParameter
from hbd.services.image.changes import apply_changes
from hbd.services.image.commit import CommitRequest, committed_config
from hbd.services.image.model import Image

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER: dict[str, Any] = {
    "Hostname": "74debae25f87", "Domainname": "", "User": "", "AttachStdin": False,
    "AttachStdout": True, "AttachStderr": True, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "Env": ["A=1", PATH], "Cmd": ["sh", "-c", "echo hi"],
    "Image": "busybox", "Volumes": None, "WorkingDir": "", "Entrypoint": None,
    "OnBuild": None, "Labels": {"base": "1"},
}
BASE = Image("sha256:" + "b" * 64, {"config": {"Env": [PATH], "Cmd": ["sh"]},
                                    "history": [{"created_by": "base"}]}, [])


def commit(changes: list[str] = [], body: dict[str, Any] | None = None,  # noqa: B006
           ) -> dict[str, Any]:
    image = committed_config(BASE, "c" * 64, CONTAINER, "sh -c echo hi",
                             CommitRequest("snap", "me", body, tuple(changes)))
    config: dict[str, Any] = image["config"]
    # The container's Image stays; a body config has none (dockerd merges none in).
    assert config.pop("Image", None) == (None if body else "busybox")
    return config


def test_without_changes_the_container_config_is_kept_but_its_run_only_fields() -> None:
    assert commit() == {"Env": ["A=1", PATH], "Cmd": ["sh", "-c", "echo hi"],
                        "Labels": {"base": "1"}}


def test_every_change_command() -> None:
    assert commit([
        'CMD ["a","b"]', "ENTRYPOINT /bin/true", 'ENV X=1 Y="two words"',
        "ENV Z three words", "EXPOSE 80 443/udp 8000-8001", 'LABEL l1=v1 "l 2"="v 2"',
        "USER nobody:nogroup", "WORKDIR sub", "WORKDIR /abs", 'VOLUME /data ["/d2","/d3"]',
        "ONBUILD RUN echo hi", "HEALTHCHECK --interval=5s --retries=3 CMD true",
        "STOPSIGNAL SIGUSR1",
    ]) == {
        "User": "nobody:nogroup",
        "ExposedPorts": {"443/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}},
        "Env": ["A=1", PATH, "X=1", "Y=two words", "Z=three words"],
        "Entrypoint": ["/bin/sh", "-c", "/bin/true"], "Cmd": ["a", "b"],
        "Volumes": {"/data": {}, "[/d2,/d3]": {}}, "WorkingDir": "/abs",
        "Labels": {"base": "1", "l 2": "v 2", "l1": "v1"},
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000,
                        "Retries": 3},
        "OnBuild": ["RUN echo hi"], "StopSignal": "SIGUSR1",
    }


def test_variables_json_forms_and_healthcheck_none() -> None:
    assert commit(['VOLUME ["/d2","/d3"]', "WORKDIR rel", "ENV P=$A-x", "CMD echo $A",
                   "HEALTHCHECK NONE"]) == {
        "Env": ["A=1", PATH, "P=1-x"], "Cmd": ["/bin/sh", "-c", "echo $A"],
        "Volumes": {"/d2": {}, "/d3": {}}, "WorkingDir": "/rel", "Labels": {"base": "1"},
        "Healthcheck": {"Test": ["NONE"]}}
    assert commit(["ENV A=2", "ENV B=${A}x$NOPE", "USER $A", "WORKDIR /w$A", "LABEL l=$A",
                   "EXPOSE ${A}0", "VOLUME /v$A"]) == {
        "User": "2", "ExposedPorts": {"20/tcp": {}}, "Env": ["A=2", PATH, "B=2x"],
        "Cmd": ["sh", "-c", "echo hi"], "Volumes": {"/v2": {}}, "WorkingDir": "/w2",
        "Labels": {"base": "1", "l": "2"}}


@pytest.mark.parametrize(("changes", "expected"), [
    (['ENTRYPOINT ["/bin/e"]'], {"Entrypoint": ["/bin/e"]}),  # drops the old Cmd
    (['ENTRYPOINT ["/bin/e"]', 'CMD ["x"]'], {"Entrypoint": ["/bin/e"], "Cmd": ["x"]}),
    (['CMD ["x"]', 'ENTRYPOINT ["/bin/e"]'], {"Entrypoint": ["/bin/e"], "Cmd": ["x"]}),
    (["WORKDIR a", "WORKDIR b", "WORKDIR ../c"], {"WorkingDir": "/a/c"}),
    (["EXPOSE 80/TCP"], {"ExposedPorts": {"80/tcp": {}}}),
    (["cmd a", "Env q=1"], {"Cmd": ["/bin/sh", "-c", "a"], "Env": ["A=1", PATH, "q=1"]}),
    (["CMD a \\", "b"], {"Cmd": ["/bin/sh", "-c", "a b"]}),  # a change continues a line
    (['CMD ["unterminated'], {"Cmd": ["/bin/sh", "-c", '["unterminated']}),
    (["CMD"], {"Cmd": ["/bin/sh", "-c"]}),
    (["USER a b", "WORKDIR a b"], {"User": "a b", "WorkingDir": "/a b"}),
    (['HEALTHCHECK --interval=5s --timeout=1s --start-period=2s --retries=3 CMD ["true","x"]'],
     {"Healthcheck": {"Test": ["CMD", "true", "x"], "Interval": 5_000_000_000,
                      "Timeout": 1_000_000_000, "StartPeriod": 2_000_000_000, "Retries": 3}}),
])
def test_single_changes(changes: list[str], expected: dict[str, Any]) -> None:
    unchanged = {"Env": ["A=1", PATH], "Cmd": ["sh", "-c", "echo hi"], "Labels": {"base": "1"}}
    want = {**unchanged, **expected}
    if "Entrypoint" in expected and "Cmd" not in expected:
        del want["Cmd"]
    assert commit(changes) == want


@pytest.mark.parametrize(("change", "message"), [
    ("RUN true", "run is not a valid change command"),
    ("SHELL [\"/bin/bash\",\"-c\"]", "shell is not a valid change command"),
    ("FROM busybox", "from is not a valid change command"),
    ("ARG X=1", "arg is not a valid change command"),
    ("MAINTAINER me", "maintainer is not a valid change command"),
    ("COPY a b", "copy is not a valid change command"),
    ("BOGUS x", "bogus is not a valid change command"),
    ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("ONBUILD", "ONBUILD requires at least one argument"),
    ("HEALTHCHECK --interval=xx CMD true", 'time: invalid duration "xx"'),
    ("HEALTHCHECK FOO", 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
    ("HEALTHCHECK --retries=-1 CMD x", "--retries must be at least 1 (not -1)"),
    ("HEALTHCHECK --foo=1 CMD x", "Unknown flag: foo"),
    ("EXPOSE abc", "Invalid containerPort: abc"),
    ("EXPOSE 80/xyz", "Invalid proto: xyz"),
    ("ENV", "ENV requires at least one argument"),
    ("ENV A", "ENV must have two arguments"),
    ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
    ("LABEL a", "LABEL must have two arguments"),
    ("LABEL =x", "LABEL names can not be blank"),
    ("WORKDIR", "WORKDIR requires exactly one argument"),
    ("USER", "USER requires exactly one argument"),
    ('VOLUME ""', "VOLUME specified can not be an empty string"),
    ("", "file with no instructions"),
    ("# comment", "file with no instructions"),
    ("STOPSIGNAL NOPE", "Invalid signal: NOPE"),
])
def test_bad_changes_get_dockerds_words(change: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        commit([change])
    assert e.value.message == message


def test_a_body_config_is_completed_from_the_container() -> None:
    assert commit(body={
        "Env": ["X=1", "A=9"], "Labels": {"n": "1"}, "Cmd": ["c"],
        "ExposedPorts": {"1/tcp": {}}, "Volumes": {"/v": {}}, "WorkingDir": "/w", "User": "u",
        "StopSignal": "SIGINT", "Healthcheck": {"Test": ["CMD", "x"], "Interval": 10**9},
    }) == {
        "User": "u", "ExposedPorts": {"1/tcp": {}}, "Env": ["X=1", "A=9", PATH],
        "Cmd": ["c"], "Volumes": {"/v": {}}, "WorkingDir": "/w",
        "Labels": {"base": "1", "n": "1"}, "StopSignal": "SIGINT",
        "Healthcheck": {"Test": ["CMD", "x"], "Interval": 10**9}}


def test_body_config_fields_and_changes_together() -> None:
    image = committed_config(BASE, "c" * 64, CONTAINER, "sh", CommitRequest(
        body={"Cmd": "single"}))["config"]
    assert image["Cmd"] == ["single"] and image["Env"] == ["A=1", PATH]
    image = committed_config(BASE, "c" * 64, CONTAINER, "sh", CommitRequest(
        body={"Entrypoint": ["/e"]}))["config"]
    assert image["Entrypoint"] == ["/e"] and "Cmd" not in image
    # The changes see the body's Env, not the container's ($A is unset there).
    image = committed_config(BASE, "c" * 64, CONTAINER, "sh", CommitRequest(
        body={"Cmd": ["x"]}, changes=("CMD y", "ENV E=$A")))["config"]
    assert image["Env"] == ["E=", "A=1", PATH] and image["Cmd"] == ["/bin/sh", "-c", "y"]


@pytest.mark.parametrize(("body", "message"), [
    ({"Env": "X=1"}, "json: cannot unmarshal string into Go struct field "
                     "ContainerConfigWrapper.Env of type array"),
    ({"Labels": {"n": 1}}, "json: cannot unmarshal number into Go struct field "
                           "ContainerConfigWrapper.Labels of type string"),
])
def test_mistyped_body_configs_are_refused(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameter) as e:
        commit(body=body)
    assert e.value.message == message


def test_image_metadata_and_history() -> None:
    image = committed_config(BASE, "c" * 64, CONTAINER, "sh -c echo hi",
                             CommitRequest("snap", "me"))
    assert image["author"] == "me" and image["comment"] == "snap"
    assert image["container"] == "c" * 64
    assert image["history"] == [{"created_by": "base"}, {
        "created": image["created"], "created_by": "sh -c echo hi", "comment": "snap",
        "author": "me"}]
    assert BASE.config["history"] == [{"created_by": "base"}]  # the base is not touched


def test_import_changes_start_from_nothing() -> None:
    assert apply_changes({}, ["ENV A=1", "CMD run"]) == {"Env": ["A=1"],
                                                         "Cmd": ["/bin/sh", "-c", "run"]}
    assert apply_changes({"Env": ["A=1"]}, []) == {"Env": ["A=1"]}
