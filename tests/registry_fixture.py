"""A real registry (Debian's docker-registry, distribution 2.8) on 127.0.0.1.

Three ways to run it: anonymous; htpasswd basic auth; or bearer-token auth
with a small token server of our own (the registry checks the tokens' ES256
signatures against a certificate we generate).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USER, PASSWORD = "hbd", "s3cret-pass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    auth: str  # none | basic | token
    root: Path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _TokenIssuer:
    def __init__(self, directory: Path, service: str, issuer: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hbd test token issuer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1))
                     .not_valid_after(now + dt.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "token.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.service = service
        self.issuer = issuer

    def token(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(
            self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"


def _token_server(issuer: _TokenIssuer, port: int) -> ThreadingHTTPServer:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            token = issuer.token(USER, query.get("scope", []))
            body = json.dumps({"token": token, "access_token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def registry(auth: str = "none") -> Iterator[Registry]:
    root = Path(tempfile.mkdtemp(prefix=f"hbd-registry-{auth}-"))
    port = free_port()
    config = {"version": 0.1, "log": {"level": "error"},
              "storage": {"filesystem": {"rootdirectory": str(root / "data")},
                          "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    server = None
    if auth == "basic":
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (root / "htpasswd").write_text(f"{USER}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "hbd-test", "path": str(root / "htpasswd")}}
    elif auth == "token":
        token_port = free_port()
        issuer = _TokenIssuer(root, "hbd-test-registry", "hbd-test-issuer")
        server = _token_server(issuer, token_port)
        config["auth"] = {"token": {"realm": f"http://127.0.0.1:{token_port}/token",
                                    "service": issuer.service, "issuer": issuer.issuer,
                                    "rootcertbundle": str(issuer.cert_path)}}
    (root / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "registry.log").read_text()) from None
                time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", auth, root)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        if server is not None:
            server.shutdown()
        shutil.rmtree(root, ignore_errors=True)
