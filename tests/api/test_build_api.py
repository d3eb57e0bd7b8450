"""POST /build with the fake driver: steps that touch no guest (config
instructions), the jsonmessage stream, the cache, tags, errors, /build/prune."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import docker
import pytest

from tests.api.conftest import ApiDaemon
from tests.daemon_fixture import DOCKER_CLI
from tests.fakes import text_tar


def _build(client: docker.DockerClient, files: dict[str, str], **kwargs: Any
           ) -> list[dict[str, Any]]:
    return list(client.api.build(fileobj=text_tar(files), custom_context=True, decode=True,
                                 **kwargs))


DOCKERFILE = """\
FROM busybox
ARG WHO
ENV GREETING="hello ${WHO:-nobody}"
LABEL a=1 "b c"=2
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT echo $GREETING
ONBUILD RUN true
"""


def test_stream_config_cache_and_tags(client: docker.DockerClient) -> None:
    messages = _build(client, {"Dockerfile": DOCKERFILE}, tag="api-built:v1",
                      buildargs={"WHO": "you", "EXTRA": "x"}, labels={"q": "label"})
    streams = [m["stream"] for m in messages if "stream" in m]
    # busybox's ID follows the release's busybox-static (images/busybox)
    base = client.images.get("busybox").id[7:19]
    assert streams[:3] == ["Step 1/8 : FROM busybox", "\n", f" ---> {base}\n"]
    assert "Step 8/8 : LABEL \"q\"=\"label\"" in streams
    assert "[Warning] One or more build-args [EXTRA] were not consumed\n" in streams
    aux = [m["aux"]["ID"] for m in messages if "aux" in m]
    assert len(aux) == 1 and aux[0].startswith("sha256:")
    assert streams[-2:] == [f"Successfully built {aux[0][7:19]}\n",
                            "Successfully tagged api-built:v1\n"]
    config = client.images.get("api-built:v1").attrs["Config"]
    assert "GREETING=hello you" in config["Env"]
    assert config["Labels"] == {"a": "1", "b c": "2", "q": "label"}
    assert config["Shell"] == ["/bin/sh", "-ec"]
    assert config["Entrypoint"] == ["/bin/sh", "-ec", "echo $GREETING"]
    assert config["Cmd"] is None  # ENTRYPOINT drops the base image's CMD
    assert config["OnBuild"] == ["RUN true"]

    again = _build(client, {"Dockerfile": DOCKERFILE}, tag="api-built:v2",
                   buildargs={"WHO": "you"}, labels={"q": "label"})
    assert sum(m.get("stream") == " ---> Using cache\n" for m in again) == 7
    assert [m["aux"]["ID"] for m in again if "aux" in m] == aux
    # Another build arg value: the ENV step (and what follows) is built anew.
    other = _build(client, {"Dockerfile": DOCKERFILE}, buildargs={"WHO": "them"})
    assert sum(m.get("stream") == " ---> Using cache\n" for m in other) == 1
    assert [m["aux"]["ID"] for m in other if "aux" in m] != aux
    quiet = _build(client, {"Dockerfile": DOCKERFILE}, quiet=True, buildargs={"WHO": "you"},
                   labels={"q": "label"})
    assert quiet == [{"stream": aux[0] + "\n"}]
    nocache = _build(client, {"Dockerfile": DOCKERFILE}, nocache=True,
                     buildargs={"WHO": "you"})
    assert not any(m.get("stream") == " ---> Using cache\n" for m in nocache)
    assert client.api.prune_builds()["CachesDeleted"]
    after = _build(client, {"Dockerfile": DOCKERFILE}, buildargs={"WHO": "you"},
                   labels={"q": "label"})
    assert not any(m.get("stream") == " ---> Using cache\n" for m in after)
    client.images.remove("api-built:v1")
    client.images.remove("api-built:v2")


def test_dockerfile_path_target_and_intermediate_images(client: docker.DockerClient) -> None:
    files = {"build/Prod.dockerfile": "FROM busybox AS one\nLABEL stage=one\nEXPOSE 80\n"
                                      "FROM one AS two\nLABEL stage=two\n"}
    messages = _build(client, files, dockerfile="build/Prod.dockerfile", target="one",
                      tag="api-target")
    assert client.images.get("api-target").attrs["Config"]["Labels"] == {"stage": "one"}
    assert "Step 2/3 : LABEL stage=one" in [m.get("stream") for m in messages]
    # The steps' images are hidden from the list (not from all=1).
    parent = client.images.get("api-target").attrs["Parent"]
    assert parent.startswith("sha256:")
    assert parent not in [img["Id"] for img in client.api.images()]
    assert parent in [img["Id"] for img in client.api.images(all=True)]
    client.images.remove("api-target")


def test_errors(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.APIError, match="unknown instruction: NOPE") as e:
        _build(client, {"Dockerfile": "FROM busybox\nNOPE\n"})
    assert e.value.status_code == 400
    with pytest.raises(docker.errors.APIError, match="Cannot locate specified Dockerfile"):
        _build(client, {"Other": "FROM busybox\n"})
    # (docker-py checks tags itself: past it, straight to the API)
    bad_tag = client.api._post(client.api._url("/build"), params={"t": "Bad:Tag:"},
                               data=text_tar({"Dockerfile": "FROM busybox\n"}).getvalue())
    assert bad_tag.status_code == 400 and "invalid reference format" in bad_tag.text
    missing = _build(client, {"Dockerfile": "FROM busybox\nCOPY nothere /x\n"})
    assert missing[-1]["error"] == (
        "COPY failed: file not found in build context or excluded by .dockerignore: "
        "stat nothere: file does not exist")
    url = _build(client, {"Dockerfile": "FROM busybox\nADD http://example.com/x /x\n"})
    assert "does not download URLs" in url[-1]["error"]
    many = _build(client, {"Dockerfile": "FROM busybox\nCOPY a b /dest\n", "a": "", "b": ""})
    assert "the destination must be a directory and end with a /" in many[-1]["error"]
    ignored = _build(client, {"Dockerfile": "FROM busybox\nCOPY k.key /\n",
                              ".dockerignore": "*.key\n", "k.key": "secret"})
    assert "excluded by .dockerignore" in ignored[-1]["error"]



def test_cli_builds_a_dockerfile_from_stdin(api_daemon: ApiDaemon) -> None:
    result = subprocess.run([DOCKER_CLI, "build", "-t", "api-stdin", "-"],
                            input=b"FROM busybox\nCMD [\"x\"]\n", capture_output=True,
                            timeout=60, env={**os.environ, "DOCKER_HOST": api_daemon.host,
                                             "DOCKER_BUILDKIT": "0"})
    assert result.returncode == 0, result.stderr
    assert b"Successfully tagged api-stdin:latest" in result.stdout
    api_daemon.docker("rmi", "api-stdin")


def test_onbuild_triggers_run_in_the_child_build(client: docker.DockerClient) -> None:
    _build(client, {"Dockerfile": "FROM busybox\nONBUILD LABEL from=trigger\n"},
           tag="api-onbuild")
    messages = _build(client, {"Dockerfile": "FROM api-onbuild\nLABEL own=1\n"},
                      tag="api-onbuild-child")
    assert "# Executing build trigger: LABEL from=trigger\n" in \
        [m.get("stream") for m in messages]
    config = client.images.get("api-onbuild-child").attrs["Config"]
    assert config["Labels"] == {"from": "trigger", "own": "1"}
    assert config["OnBuild"] is None  # triggers fire once, for the direct child
    client.images.remove("api-onbuild-child")
    client.images.remove("api-onbuild")
