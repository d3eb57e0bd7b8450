"""docker commit with --change and a body config, and system df / prune of real
containers (real guests, the docker CLI and SDK)."""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from tests.daemon_fixture import RunningDaemon
from tests.fakes import human_size

MIB = 1024 * 1024
CHANGES = [
    "WORKDIR /tmp", "USER nobody", "ENV GREETING=hi", 'ENTRYPOINT ["sh", "-c"]',
    'CMD ["echo $GREETING from $(pwd) as $(id -u) $(cat /made)"]', "EXPOSE 8080 53/udp",
    "LABEL stage=two", "VOLUME /cache", "STOPSIGNAL SIGUSR1",
    "HEALTHCHECK --interval=5s --retries=2 CMD true", "ONBUILD RUN true",
]


def _image_config(hbd: RunningDaemon, ref: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(hbd.docker("image", "inspect", ref).stdout)[0]["Config"]
    return config


@pytest.fixture
def made(hbd: RunningDaemon) -> Any:  # type: ignore[misc]
    cid = hbd.docker("run", "-d", "-e", "A=base", "busybox", "sh", "-c",
                     "echo made-here > /made; sleep 600").stdout.decode().strip()
    hbd.docker("exec", cid, "sh", "-c", "until test -s /made; do sleep 0.1; done")
    yield cid
    hbd.docker("rm", "-f", cid, check=False)


def test_commit_changes_show_in_the_config_and_the_run(hbd: RunningDaemon, made: str) -> None:
    args = [a for change in CHANGES for a in ("-c", change)]
    hbd.docker("commit", *args, made, "i9commit:changes")
    try:
        config = _image_config(hbd, "i9commit:changes")
        assert config["WorkingDir"] == "/tmp" and config["User"] == "nobody"
        assert "GREETING=hi" in config["Env"] and "A=base" in config["Env"]
        assert config["Entrypoint"] == ["sh", "-c"]
        assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
        assert config["Labels"] == {"stage": "two"} and config["Volumes"] == {"/cache": {}}
        assert config["StopSignal"] == "SIGUSR1" and config["OnBuild"] == ["RUN true"]
        assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"],
                                         "Interval": 5_000_000_000, "Retries": 2}
        out = hbd.docker("run", "--rm", "i9commit:changes").stdout
        assert out == b"hi from /tmp as 65534 made-here\n"
    finally:
        hbd.docker("rmi", "i9commit:changes")


def test_bad_change_fails_and_makes_no_image(hbd: RunningDaemon, made: str) -> None:
    before = hbd.docker("images", "-aq", "--no-trunc").stdout
    bad = hbd.docker("commit", "-c", "RUN touch /x", made, "i9commit:bad", check=False)
    assert bad.returncode == 1
    assert b"run is not a valid change command" in bad.stderr
    assert hbd.docker("images", "-aq", "--no-trunc").stdout == before


def test_sdk_commit_with_a_config(hbd: RunningDaemon, sdk: docker.DockerClient,
                                  made: str) -> None:
    image = sdk.containers.get(made).commit(
        "i9commit", "conf", conf={"Env": ["FROM_CONF=1"], "Labels": {"c": "1"},
                                  "Cmd": ["sh", "-c", "echo $FROM_CONF $A $(cat /made)"]},
        changes=["LABEL d=2"])
    try:
        config = image.attrs["Config"]
        # As in dockerd, the container's image is the commit's parent.
        assert image.attrs["Parent"] == sdk.images.get("busybox").id
        # The body config, completed from the container's (its Env, its labels).
        assert config["Env"][0] == "FROM_CONF=1" and "A=base" in config["Env"]
        assert config["Labels"] == {"c": "1", "d": "2"}
        out = sdk.containers.run("i9commit:conf", remove=True)
        assert out == b"1 base made-here\n"
    finally:
        sdk.images.remove("i9commit:conf")


def test_df_and_prune_of_real_containers(hbd: RunningDaemon, sdk: docker.DockerClient
                                         ) -> None:
    image_size = sdk.images.get("busybox").attrs["Size"]
    label = "i9df=real"
    writer = hbd.docker("run", "-d", "-l", label, "busybox", "sh", "-c",
                        "head -c 5242880 /dev/urandom > /data.bin").stdout.decode().strip()
    hbd.docker("wait", writer)
    # A guest syncs its disks as it leaves; diff boots the stopped container
    # again, which waits for that.
    assert "A /data.bin" in hbd.docker("diff", writer).stdout.decode().splitlines()
    fresh = hbd.docker("create", "-l", label, "busybox", "true").stdout.decode().strip()
    mine = {c["Id"]: c for c in sdk.df()["Containers"] if c["Labels"].get("i9df") == "real"}
    assert len(mine) == 2
    written = mine[writer]
    assert "SizeRw" not in mine[fresh] and mine[fresh]["SizeRootFs"] == image_size
    assert 5 * MIB <= written["SizeRw"] < 8 * MIB  # 5 MiB of data, and ext4's metadata
    assert written["SizeRootFs"] == image_size + written["SizeRw"]
    listing = hbd.docker("system", "df", "-v").stdout.decode()
    assert written["Id"][:12] in listing and fresh[:12] in listing
    pruned = hbd.docker("container", "prune", "-f", "--filter", f"label={label}").stdout
    assert f"Total reclaimed space: {human_size(written['SizeRw'])}".encode() in pruned
