"""The aiohttp application with every router registered."""

from __future__ import annotations

from aiohttp import web

from hbd.api import build as build_routes
from hbd.api import containers, exec, images, networks, system, volumes
from hbd.api.app import Router, create_app
from hbd.api.context import DAEMON_KEY
from hbd.daemon import Daemon


def build(daemon: Daemon) -> web.Application:
    app = create_app()
    app[DAEMON_KEY] = daemon
    router = Router(app)
    for module in (system, containers, exec, images, networks, volumes, build_routes):
        module.register(router)
    return app
