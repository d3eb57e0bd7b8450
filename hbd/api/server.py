"""The aiohttp application with every router registered, and the Daemon's
services put in as the routers' backends (hbd/api/backends.py)."""

from __future__ import annotations

from aiohttp import web

from hbd.api import (
    auth,
    backends,
    containers,
    exec,
    images,
    networks,
    plugins,
    swarm,
    system,
    volumes,
)
from hbd.api import build as build_routes
from hbd.api.app import Router, create_app
from hbd.daemon import Daemon


def build(daemon: Daemon) -> web.Application:
    app = create_app()
    # Inside error_middleware, so that a refused token is a Docker-style 401.
    app.middlewares.append(auth.auth_middleware)
    app[backends.CONTAINERS] = daemon.containers
    app[backends.CONTAINER_FILES] = daemon.files
    app[backends.CONTAINER_NETWORKS] = daemon.containers
    app[backends.EXECS] = daemon.execs
    app[backends.IMAGES] = daemon.images
    app[backends.DISTRIBUTION] = daemon.distribution
    app[backends.BUILDER] = daemon.builder
    app[backends.NETWORKS] = daemon.networks
    app[backends.VOLUMES] = daemon.volumes
    app[backends.PLUGINS] = daemon.plugins
    app[backends.SYSTEM] = daemon.system
    app[backends.DISK_USAGE] = daemon.disk_usage
    app[backends.AUTH] = daemon.registry
    router = Router(app)
    for module in (system, containers, exec, images, networks, volumes, plugins, build_routes,
                   swarm):
        module.register(router)
    return app
