"""gRPC server plumbing shared by the services: health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

# Large enough for a 128k-token prompt as token ids plus its text.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def add_health_and_reflection(server, service_names: Iterable[str]) -> health.HealthServicer:
    """Registers grpc.health.v1 (all services SERVING) and server reflection."""
    names = list(service_names)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in [*names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return health_servicer


def set_not_serving(health_servicer: health.HealthServicer, service_names: Iterable[str]) -> None:
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def aio_server(token: str) -> grpc.aio.Server:
    """An asyncio server that requires token on every RPC but health (no token: open)."""
    from pagedserve.common.security import AioTokenAuthInterceptor

    interceptors = [AioTokenAuthInterceptor(token)] if token else []
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)


def bind(server, host: str, port: int, credentials: grpc.ServerCredentials | None = None) -> int:
    """Binds host:port (port 0 picks a free one), with TLS when credentials are given;
    returns the bound port, raises OSError when it cannot listen. (Listening beyond
    loopback without a token is warned about by security.warn_if_exposed.)"""
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return bound


async def serve_until_signal(server: grpc.aio.Server, on_stop, grace_s: float) -> None:
    """Waits for SIGTERM/SIGINT, then calls on_stop() and stops with a grace period."""
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    server_done = asyncio.ensure_future(server.wait_for_termination())
    stop_wait = asyncio.ensure_future(stop_event.wait())
    await asyncio.wait([server_done, stop_wait], return_when=asyncio.FIRST_COMPLETED)
    if stop_event.is_set():
        log.info("stopping: finishing in-flight calls (grace %.1f s)", grace_s)
        result = on_stop()
        if asyncio.iscoroutine(result):
            await result
        await server.stop(grace_s)
    server_done.cancel()
