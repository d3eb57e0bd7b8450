"""`hbd`: the daemon's command line, with dockerd's flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import grp
import logging
import os
import resource
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from aiohttp import web

from hbd import __version__
from hbd.api import server
from hbd.api.auth import TENANCY, Tenancy
from hbd.api.kubestream import StreamingServer
from hbd.api.tls import serve_tls
from hbd.config import Config, DaemonSettings, load_config
from hbd.daemon import Daemon
from hbd.drivers.keystone import KeystoneClient, ServiceCredentials
from hbd.errors import HbdError
from hbd.services.identity.validator import TokenValidator

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("hbd")
PR_SET_CHILD_SUBREAPER = 36


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hbd", description="Hummingbird daemon: the Docker "
                                "Engine API, every container in its own QEMU microvm.")
    p.add_argument("-H", "--host", action="append", dest="hosts", metavar="HOST",
                   help="daemon socket to listen on, e.g. unix:///run/hbd.sock "
                        "(repeatable)")
    p.add_argument("--data-root", help="root of persistent state (default /var/lib/hbd)")
    p.add_argument("--exec-root", help="root of runtime state (default /run/hbd)")
    p.add_argument("--config", type=Path, help="hbd.toml settings file")
    p.add_argument("-l", "--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("-D", "--debug", action="store_true", help="debug logging")
    p.add_argument("-p", "--pidfile", help="write the daemon's pid here")
    p.add_argument("--tls", action="store_true", default=None,
                   help="serve TLS on tcp:// hosts (with --tlscert/--tlskey)")
    p.add_argument("--tlsverify", action="store_true", default=None,
                   help="TLS and require client certificates signed by --tlscacert")
    p.add_argument("--tlscacert", help="CA that signs client certificates")
    p.add_argument("--tlscert", help="the server's certificate")
    p.add_argument("--tlskey", help="the server's key")
    p.add_argument("--cri-endpoint", metavar="unix:///PATH",
                   help="serve the Kubernetes CRI v1 here (kubelet's "
                        "--container-runtime-endpoint)")
    p.add_argument("-v", "--version", action="version", version=f"hbd {__version__}")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.hosts:
        config.daemon.hosts = args.hosts
    if args.data_root:
        config.daemon.data_root = args.data_root
    if args.exec_root:
        config.daemon.exec_root = args.exec_root
    if args.log_level:
        config.daemon.log_level = args.log_level
    if args.debug:
        config.daemon.log_level = "debug"
    daemon = config.daemon
    daemon.tls = bool(args.tls) if args.tls is not None else daemon.tls
    daemon.tls_verify = bool(args.tlsverify) if args.tlsverify is not None else daemon.tls_verify
    daemon.tls_cacert = args.tlscacert or daemon.tls_cacert
    daemon.tls_cert = args.tlscert or daemon.tls_cert
    daemon.tls_key = args.tlskey or daemon.tls_key
    if args.cri_endpoint is not None:
        config.cri.endpoint = args.cri_endpoint
    return config


def tls_context(settings: DaemonSettings) -> ssl.SSLContext | None:
    """The server side of dockerd's TLS: none, TLS, or TLS with client certificates."""
    if not (settings.tls or settings.tls_verify):
        return None
    if not settings.tls_cert or not settings.tls_key:
        raise HbdError("--tls needs --tlscert and --tlskey")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_verify:
            if not settings.tls_cacert:
                raise HbdError("--tlsverify needs --tlscacert")
            context.load_verify_locations(settings.tls_cacert)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise HbdError(f"cannot load TLS certificates: {e}") from e
    return context


def _become_subreaper() -> None:
    # QEMU is started with -daemonize; as a subreaper hbd inherits and reaps
    # it instead of leaving zombies to whatever PID 1 is.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _raise_open_file_limit() -> None:
    """Soft limit on open files up to the hard one, as Go's runtime does for
    dockerd: hbd holds several descriptors per guest (its agent channel,
    log and output-mark files, QEMU's process handle), so a shell's usual
    1024 would refuse new containers after a couple of hundred."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _listener_key(host: str, tls: ssl.SSLContext | None, exec_root: Path) -> str:
    """What hbd.api.auth.listener_key says of the connections `_listen(host)` accepts."""
    url = urlparse(host)
    if url.scheme == "unix":
        return url.path or "/run/hbd.sock"
    port = url.port or (2376 if tls else 2375)
    return f"tcp:{port}" if tls is None else str(exec_root / f"api-tls-{port}.sock")


def _tenancy(config: Config, tls: ssl.SSLContext | None) -> Tenancy | None:
    """Keystone on the tenant listeners, when hbd.toml's [keystone] names one."""
    ks = config.keystone
    if not ks.url:
        return None
    unknown = set(ks.tenant_hosts) - set(config.daemon.hosts)
    if unknown:
        raise HbdError(f"keystone.tenant_hosts {sorted(unknown)} are not among the hosts")
    client = KeystoneClient(ks.url, ServiceCredentials(ks.service_user, ks.service_password,
                                                       ks.service_project))
    return Tenancy(TokenValidator(client, ks.cache_seconds, ks.cache_size),
                   {_listener_key(h, tls, config.exec_root) for h in ks.tenant_hosts},
                   frozenset(ks.reader_roles), frozenset(ks.member_roles))


async def _listen(runner: web.AppRunner, host: str, tls: ssl.SSLContext | None,
                  exec_root: Path) -> web.BaseSite | asyncio.Server:
    url = urlparse(host)
    if url.scheme == "unix":
        path = url.path or "/run/hbd.sock"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).unlink(missing_ok=True)
        site: web.BaseSite = web.UnixSite(runner, path)
        await site.start()
        os.chmod(path, 0o660)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(path, 0, grp.getgrnam("docker").gr_gid)
        return site
    if url.scheme == "tcp":
        address, port = url.hostname or "127.0.0.1", url.port or (2376 if tls else 2375)
        if tls is None:
            log.warning("listening on %s without TLS: anyone who reaches it is root", host)
            site = web.TCPSite(runner, address, port)
            await site.start()
            return site
        if tls.verify_mode != ssl.CERT_REQUIRED:
            log.warning("listening on %s without --tlsverify: anyone who reaches it is root",
                        host)
        # TLS is terminated in front of a private unix socket (hbd/api/tls.py).
        backend = exec_root / f"api-tls-{port}.sock"
        backend.unlink(missing_ok=True)
        await web.UnixSite(runner, str(backend)).start()
        os.chmod(backend, 0o600)
        return await serve_tls(address, port, tls, backend)
    raise HbdError(f"unsupported host {host!r}: use unix:///path or tcp://addr:port")


async def _serve_cri(daemon: Daemon) -> tuple[grpc.aio.Server, StreamingServer]:
    """The CRI beside the Engine API. Imported here: its modules are generated
    from the CRI spec (hbd/api/cri/stubs.py), and only a CRI needs them."""
    # hbd forks to launch every QEMU and virtiofsd (hbd/drivers/jail.py) and
    # runs Python in the child before exec. gRPC's fork handlers, with its
    # threads busy, skip preparing and leave that child to die now and then:
    # the child never touches gRPC, so it needs none of them.
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
    from hbd.api.cri import stubs  # noqa: PLC0415
    stubs.load()
    from hbd.api.cri.images import ImageServicer  # noqa: PLC0415
    from hbd.api.cri.runtime import RuntimeServicer  # noqa: PLC0415
    from hbd.api.cri.server import serve  # noqa: PLC0415
    await daemon.pods.prepare()
    settings = daemon.config.cri
    streaming = StreamingServer(settings.streaming_address, settings.streaming_port)
    await streaming.start()
    server = await serve(settings.endpoint, RuntimeServicer(daemon.pods, streaming),
                         ImageServicer(daemon.images, daemon.distribution))
    log.info("CRI listen on %s, streaming server on %s", settings.endpoint, streaming.base_url)
    return server, streaming


async def run(config: Config, pidfile: str | None) -> None:
    tls = tls_context(config.daemon)  # bad certificates stop hbd before anything starts
    daemon = Daemon(config)
    await daemon.start()
    app = server.build(daemon)
    tenancy = _tenancy(config, tls)
    if tenancy is not None:
        app[TENANCY] = tenancy
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    for host in config.daemon.hosts:
        await _listen(runner, host, tls, config.exec_root)
        log.info("API listen on %s", host)
    cri = await _serve_cri(daemon) if config.cri.endpoint else None
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("daemon has completed initialization")
    await stop.wait()
    log.info("shutting down; guests keep running")
    if cri is not None:
        await cri[0].stop(1.0)
        await cri[1].stop()
    await daemon.stop()
    await runner.cleanup()
    if pidfile:
        Path(pidfile).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except HbdError as e:
        print(f"hbd: {e.message}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=getattr(logging, config.daemon.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pyroute2 logs every netlink message at debug level.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    _become_subreaper()
    _raise_open_file_limit()
    try:
        asyncio.run(run(config, args.pidfile))
    except HbdError as e:
        log.error("%s", e.message)
        return 1
    return 0
