"""Requests that schemathesis found to break hbd (a Python exception where
dockerd answers a Docker error), each answered now as dockerd answers it.
The texts are dockerd's for the same request (20.10 on this machine), with
the "invalid JSON: " that dockerd 27's httputils.ReadJSON puts before a
decoding error."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
import requests

from tests.api.apifuzz import Answer, LogWatch, problems_of, watching_logs

JSON = {"Content-Type": "application/json"}


Api = tuple[docker.APIClient, LogWatch]


@pytest.fixture
def api(raw: docker.APIClient) -> Iterator[Api]:
    """The client, and the ERROR records hbd logs meanwhile: none, ever."""
    with watching_logs() as watch:
        yield raw, watch
        assert watch.take() == []


def _post(api: Api, path: str, body: bytes) -> requests.Response:
    client, _ = api
    response: requests.Response = client._post(client._url(path), data=body, headers=JSON)
    return response


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/networks/bridge/connect", b"[null, null]", "invalid JSON: json: cannot unmarshal array "
                                                  "into Go value of type types.NetworkConnect"),
    ("/networks/bridge/disconnect", b'"x"', "invalid JSON: json: cannot unmarshal string into "
                                            "Go value of type types.NetworkDisconnect"),
    ("/networks/bridge/disconnect", b'{"Container": 5}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "NetworkDisconnect.Container of type string"),
    ("/networks/bridge/connect", b'{"Container": "x", "EndpointConfig": [1]}',
     "invalid JSON: json: cannot unmarshal array into Go struct field "
     "NetworkConnect.EndpointConfig of type network.EndpointSettings"),
    ("/exec/0/start", b'{"Tty": true, "ConsoleSize": ["AAA", 1]}',
     "invalid JSON: json: cannot unmarshal string into Go struct field "
     "ExecStartCheck.ConsoleSize of type uint"),
    ("/exec/0/start", b'{"ConsoleSize": [-1, 1]}',
     "invalid JSON: json: cannot unmarshal number -1 into Go struct field "
     "ExecStartCheck.ConsoleSize of type uint"),
    ("/containers/nope/exec", b'{"Cmd": ["true"], "ConsoleSize": [{}, 1]}',
     "invalid JSON: json: cannot unmarshal object into Go struct field "
     "ExecConfig.ConsoleSize of type uint"),
    ("/volumes/create", b'{"Labels": 5}', "invalid JSON: json: cannot unmarshal number into Go "
                                          "struct field CreateOptions.Labels of type "
                                          "map[string]string"),
    ("/volumes/create", b'{"DriverOpts": {"a": 1}}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateOptions.DriverOpts of type string"),
    ("/networks/create", b'{"Name": "x", "IPAM": {"Config": [5]}}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateRequest.IPAM.Config of type network.IPAMConfig"),
    ("/networks/create", b'{"name": "x", "labels": 5}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateRequest.Labels of type map[string]string"),
    ("/containers/create", b'{"Image": "busybox", "HostConfig": {"PortBindings": {"80/tcp": 5}}}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateRequest.HostConfig.PortBindings of type []nat.PortBinding"),
    ("/containers/create", b'{"Image": "busybox", "HostConfig": {"Mounts": [5]}}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateRequest.HostConfig.Mounts of type mount.Mount"),
    ("/containers/create", b'{"Image": "busybox", "Labels": {"a": 1}}',
     "invalid JSON: json: cannot unmarshal number into Go struct field "
     "CreateRequest.Labels of type string"),
    # The kinds of the fields themselves: the container service's own texts.
    ("/containers/create", b'{"Image": "busybox", "HostConfig": {"Binds": 5}}',
     "json: cannot unmarshal number into Go struct field HostConfig.Binds of type array"),
    ("/plugins/nope/set", b"1\xbe", "json: cannot unmarshal number into Go value of "
                                    "type []string"),
    ("/containers/create", b"{bad", "invalid JSON: invalid character 'b' looking for "
                                    "beginning of object key string"),
])
def test_a_body_of_the_wrong_shape_is_dockers_400(api: Api,
                                                   path: str, body: bytes, message: str) -> None:
    r = _post(api, path, body)
    assert (r.status_code, r.json()) == (400, {"message": message})


@pytest.mark.parametrize(("body", "message"), [
    (b"", "EOF"),
    (b'{"username": 5}', "json: cannot unmarshal number into Go struct field "
                         "AuthConfig.username of type string"),
])
def test_a_login_that_does_not_decode_is_dockerds_500(api: Api, body: bytes,
                                                      message: str) -> None:
    r = _post(api, "/auth", body)
    assert (r.status_code, r.json()) == (500, {"message": message})


def test_null_console_sizes_are_zeros_as_in_go(api: Api
                                               ) -> None:
    r = _post(api, "/exec/0/start", b'{"Tty": true, "ConsoleSize": [null, null]}')
    assert (r.status_code, r.json()) == (404, {"message": "No such exec instance: 0"})


def test_invalid_utf8_in_a_json_string_is_taken_as_go_takes_it(
        api: Api) -> None:
    r = _post(api, "/volumes/create", b'{"Name": "\xbe"}')
    assert r.status_code == 400
    assert "includes invalid characters for a local volume name" in r.json()["message"]


def test_plugin_pull_reads_the_privileges_before_the_remote(
        api: Api) -> None:
    for path in ("/plugins/pull?remote=", "/plugins/x/upgrade?remote="):
        r = _post(api, path, b"")
        assert (r.status_code, r.json()) == (500, {"message": "failed to parse privileges: EOF"})


def test_the_fake_guest_refuses_builtins_as_a_docker_error(
        api: Api) -> None:
    client, _ = api
    container = client.create_container("busybox", ["true"])["Id"]
    r = client._get(client._url("/containers/{0}/changes", container))
    assert r.status_code == 500
    assert r.json()["message"].startswith("guest refused changes: ")


# -- the judge itself: each kind of failure is seen ---------------------------------


def _answer(status: int, body: bytes, content_type: str = "application/json") -> Answer:
    return Answer(status, body, content_type)


def test_the_judge_passes_docker_errors_and_dockerds_own_5xx() -> None:
    assert problems_of("GET", _answer(404, b'{"message":"No such container: x"}'), []) == []
    assert problems_of("GET", _answer(503, b'{"message":"This node is not a swarm manager."}'),
                       []) == []
    assert problems_of("HEAD", _answer(404, b"", ""), []) == []
    assert problems_of("GET", _answer(200, b"", "text/plain"), []) == []


@pytest.mark.parametrize(("answer", "logged", "kind"), [
    (_answer(500, b'{"message":"TypeError: int() argument must be a string"}'), [],
     "exception-text"),
    (_answer(500, b"500 Internal Server Error\n\nServer got itself in trouble", "text/plain"),
     [], "error-body"),
    (_answer(400, b'{"msg":"x"}'), [], "error-body"),
    (_answer(200, b""), ["hbd.api.app: GET /x failed\nTraceback ..."], "traceback"),
])
def test_the_judge_sees_each_kind_of_failure(answer: Answer, logged: list[str],
                                            kind: str) -> None:
    assert [k for k, _ in problems_of("GET", answer, logged)] == [kind]
