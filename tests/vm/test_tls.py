"""The Engine API over TCP with TLS, as dockerd serves it: `docker --tlsverify
-H tcp://…` works unchanged, and a client without a certificate signed by the
daemon's CA is refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.daemon_fixture import DOCKER_CLI, RunningDaemon, hbd_daemon
from tests.registry_fixture import free_port


def _key_and_cert(common_name: str, issuer: tuple[ec.EllipticCurvePrivateKey,
                                                  x509.Certificate] | None,
                  usage: x509.ObjectIdentifier | None) -> tuple[ec.EllipticCurvePrivateKey,
                                                                 x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer[1].subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1)))
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    else:
        assert usage is not None
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    signer = issuer[0] if issuer else key
    return key, builder.sign(signer, hashes.SHA256())


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey,
           cert: x509.Certificate) -> None:
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docker's DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem (client);
    server.pem and server-key.pem beside them for the daemon."""
    directory = tmp_path_factory.mktemp("certs")
    ca = _key_and_cert("hbd test CA", None, None)
    (directory / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    _write(directory, "server",
           *_key_and_cert("127.0.0.1", ca, ExtendedKeyUsageOID.SERVER_AUTH))
    client_key, client_cert = _key_and_cert("client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(directory, "client", client_key, client_cert)
    os.rename(directory / "client.pem", directory / "cert.pem")
    os.rename(directory / "client-key.pem", directory / "key.pem")
    stranger = _key_and_cert("stranger CA", None, None)
    _write(directory, "stranger", *_key_and_cert("stranger", stranger,
                                                 ExtendedKeyUsageOID.CLIENT_AUTH))
    return directory


@pytest.fixture(scope="module")
def tls_daemon(certs: Path) -> Iterator[tuple[RunningDaemon, str]]:
    address = f"127.0.0.1:{free_port()}"
    with hbd_daemon(extra_args=(
            "-H", f"tcp://{address}", "--tlsverify", "--tlscacert", str(certs / "ca.pem"),
            "--tlscert", str(certs / "server.pem"),
            "--tlskey", str(certs / "server-key.pem"))) as daemon:
        yield daemon, address


def test_docker_cli_over_tls(tls_daemon: tuple[RunningDaemon, str], certs: Path) -> None:
    _, address = tls_daemon
    env = {**os.environ, "DOCKER_HOST": f"tcp://{address}", "DOCKER_TLS_VERIFY": "1",
           "DOCKER_CERT_PATH": str(certs)}
    out = subprocess.run([DOCKER_CLI, "run", "--rm", "busybox", "echo", "ok"], env=env,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"ok\n"
    # stdin through the hijacked connection, then its half-close (TLS close_notify).
    piped = subprocess.run([DOCKER_CLI, "run", "--rm", "-i", "busybox", "sh", "-c",
                            "cat; echo done"], input=b"piped\n", env=env,
                           capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == b"piped\ndone\n"
    flags = subprocess.run([DOCKER_CLI, "--tlsverify", "-H", f"tcp://{address}",
                            "--tlscacert", str(certs / "ca.pem"),
                            "--tlscert", str(certs / "cert.pem"),
                            "--tlskey", str(certs / "key.pem"), "version", "--format",
                            "{{.Server.Os}}"], capture_output=True, timeout=60)
    assert flags.returncode == 0 and flags.stdout.strip() == b"linux"


def _ping_over_tls(host: str, port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection((host, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: hbd\r\nConnection: close\r\n\r\n")
        answer = tls.recv(1024)
        if not answer:
            raise ConnectionError("closed without an answer")
        return answer


def test_client_without_a_good_certificate_is_refused(tls_daemon: tuple[RunningDaemon, str],
                                                      certs: Path) -> None:
    _, address = tls_daemon
    host, port = address.rsplit(":", 1)
    trusted = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    trusted.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    assert _ping_over_tls(host, int(port), trusted).startswith(b"HTTP/1.1 200 OK")
    for cert in (None, "stranger"):
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        if cert:
            context.load_cert_chain(certs / f"{cert}.pem", certs / f"{cert}-key.pem")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _ping_over_tls(host, int(port), context)
    refused = subprocess.run([DOCKER_CLI, "-H", f"tcp://{address}", "--tls",
                              "--tlscacert", str(certs / "ca.pem"), "version"],
                             capture_output=True, timeout=60)
    assert refused.returncode != 0
    plain = subprocess.run([DOCKER_CLI, "-H", f"tcp://{address}", "version"],
                           capture_output=True, timeout=60)
    assert plain.returncode != 0
