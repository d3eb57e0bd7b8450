"""A raw client for hijacked streams (attach, exec start): the exact bytes the
daemon sends, headers and framing included, over its unix socket."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

# Detach keys count only when the daemon reads them alone (as a terminal sends
# a keypress); the pause between sends keeps them apart, as docker-py's tests do.
KEY_PAUSE = 0.5
GUARD = 60.0  # no stream in these tests takes this long; a hang fails instead


@dataclass
class Hijacked:
    sock: socket.socket
    status: int
    headers: dict[str, str]

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.sock.sendall(chunk)
            time.sleep(KEY_PAUSE)

    def close_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def read_until_eof(self) -> bytes:
        out = b""
        self.sock.settimeout(GUARD)
        while chunk := self.sock.recv(65536):
            out += chunk
        return out

    def error_body(self) -> bytes:
        """The body of a response that did not upgrade."""
        return self.read_exactly(int(self.headers["content-length"]))

    def read_exactly(self, n: int) -> bytes:
        out = b""
        self.sock.settimeout(GUARD)
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"stream ended after {out!r}")
            out += chunk
        return out

    def close(self) -> None:
        self.sock.close()


def hijack(socket_path: Path | str, path: str, body: Any = None) -> Hijacked:
    """POST `path` asking to upgrade; the response headers are read byte by byte
    so that no stream byte is taken with them."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(GUARD)
    sock.connect(str(socket_path))
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    sock.sendall(head.encode() + data)
    raw = b""
    while not raw.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            break
        raw += byte
    status_line, *lines = raw.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    return Hijacked(sock, int(status_line.split()[1]), headers)


@contextlib.contextmanager
def running_cat(api: docker.APIClient, tty: bool = False) -> Iterator[str]:
    """docker-py's stream tests' container: `cat`, stdin open and not closed when
    a client's ends (as `docker run -d -i`)."""
    cid = str(api.create_container("busybox", "cat", stdin_open=True, tty=tty,
                                   detach=True)["Id"])
    try:
        api.start(cid)
        yield cid
    finally:
        api.remove_container(cid, force=True)


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """stdcopy frames: (stream, payload), in order."""
    out = []
    while data:
        stream, size = struct.unpack(">BxxxL", data[:8])
        out.append((stream, data[8:8 + size]))
        data = data[8 + size:]
    return out


def ctrl(key: str) -> bytes:
    return bytes([ord(key) - ord("a") + 1])
