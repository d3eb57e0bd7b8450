"""The CRI's gRPC server on a unix socket, in hbd's event loop (with the
streaming server for exec, attach and port-forward beside it).

Errors are mapped here and only here: an HbdError becomes the gRPC status
its class names (hbd/errors.py), anything else a logged traceback and
INTERNAL. RPCs hbd does not serve answer UNIMPLEMENTED, as the CRI allows.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from hbd.api.cri.gen import runtime_v1_pb2_grpc as rpc
from hbd.api.cri.images import ImageServicer
from hbd.api.cri.runtime import RuntimeServicer
from hbd.errors import HbdError

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamHandler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


async def _abort(name: str, error: Exception,
                 context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """End the call with the error's gRPC status (hbd's errors carry theirs;
    anything else is INTERNAL, and logged)."""
    if isinstance(error, HbdError):
        await context.abort(getattr(grpc.StatusCode, error.grpc_code), error.message)
    log.error("CRI %s failed", name, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error: {error}")


def _guarded(name: str, handler: Handler) -> Handler:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(name, e, context)
    return call


def _guarded_stream(name: str, handler: StreamHandler) -> StreamHandler:
    """The same for a server-streaming RPC: an error ends the stream with its status."""
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                   ) -> AsyncIterator[Any]:
        try:
            async for item in handler(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(name, e, context)
    return call


class _Service:
    """A servicer as the generated code registers it: every RPC of the
    service, served by `impl` when it has it, else UNIMPLEMENTED."""

    def __init__(self, impl: object) -> None:
        self._impl = impl

    def __getattr__(self, name: str) -> Handler | StreamHandler:
        handler = getattr(self._impl, name, None)
        if inspect.isasyncgenfunction(handler):
            return _guarded_stream(name, handler)
        if handler is None:
            async def unimplemented(request: Any,
                                    context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                    f"hbd does not serve {name}")
            return unimplemented
        return _guarded(name, handler)


async def serve(endpoint: str, runtime: RuntimeServicer,
                images: ImageServicer) -> grpc.aio.Server:
    """Listen on unix://PATH; the socket is the operator's alone (0600)."""
    if not endpoint.startswith("unix://"):
        raise HbdError(f"unsupported CRI endpoint {endpoint!r}: use unix:///path")
    path = Path(endpoint[len("unix://"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20),
                                      ("grpc.max_send_message_length", 16 << 20)])
    rpc.add_RuntimeServiceServicer_to_server(_Service(runtime), server)  # type: ignore[no-untyped-call]
    rpc.add_ImageServiceServicer_to_server(_Service(images), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    os.chmod(path, 0o600)
    return server
