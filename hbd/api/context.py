"""How routers reach the daemon's services."""

from __future__ import annotations

from aiohttp import web

from hbd.daemon import Daemon

DAEMON_KEY = web.AppKey("daemon", Daemon)


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]
