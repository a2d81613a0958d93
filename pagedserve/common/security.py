"""Token auth and TLS for every listening port and every internal call.

Two tokens: the public one that clients present to the gateway, and the
internal one that services present to each other (gateway -> executor,
executor and pool keeper -> block manager). A public client therefore cannot
call the block manager or an executor. Health checks stay open so that
orchestrators can probe without secrets.

A token travels as `authorization: Bearer <token>` metadata and is compared in
constant time. With a certificate configured a port serves TLS; with a client
CA also configured it requires client certificates (mutual TLS).
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_AUTH_HEADER = "authorization"


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying token (empty when no token is configured)."""
    return ((_AUTH_HEADER, f"Bearer {token}"),) if token else ()


def _presented_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == _AUTH_HEADER and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def _is_authorized(expected: str, handler_call_details) -> bool:
    if handler_call_details.method.startswith(_OPEN_METHOD_PREFIXES):
        return True
    presented = _presented_token(handler_call_details.invocation_metadata)
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _denying_handler(handler: grpc.RpcMethodHandler, is_async: bool) -> grpc.RpcMethodHandler:
    """A handler of the same shape as handler that answers UNAUTHENTICATED."""
    message = "missing or invalid token (authorization: Bearer <token>)"

    # A response-streaming handler must be a generator (what wraps it iterates it).
    if is_async:

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # never reached

    else:

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        def deny_stream(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # never reached

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """For grpc.server: every method but health needs the token."""

    def __init__(self, token: str):
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or _is_authorized(self._token, handler_call_details):
            return handler
        return _denying_handler(handler, is_async=False)


class AioTokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """For grpc.aio.server: every method but health needs the token."""

    def __init__(self, token: str):
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or _is_authorized(self._token, handler_call_details):
            return handler
        return _denying_handler(handler, is_async=True)


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str
) -> grpc.ServerCredentials | None:
    """TLS credentials for a listening port, or None without a certificate.

    With client_ca_file the port requires client certificates signed by that CA.
    Raises FileNotFoundError naming a missing file.
    """
    if not cert_file:
        return None
    pair = (_read(key_file, "key"), _read(cert_file, "certificate"))
    if client_ca_file:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read(client_ca_file, "client CA"), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])


def channel_credentials(
    ca_file: str, client_cert_file: str, client_key_file: str
) -> grpc.ChannelCredentials | None:
    """TLS credentials for calling a TLS port (verifying it with ca_file), or None for plaintext."""
    if not ca_file:
        return None
    certificate = _read(client_cert_file, "client certificate") if client_cert_file else None
    key = _read(client_key_file, "client key") if client_key_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA"), private_key=key, certificate_chain=certificate
    )


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None, options=None
) -> grpc.Channel:
    """A blocking channel to address: TLS with credentials, plaintext without."""
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def wait_channel_ready(channel: grpc.Channel, timeout_s: float) -> None:
    """Blocks until the channel connects; raises grpc.FutureTimeoutError. On a
    timeout the readiness watch is cancelled: left running, its thread polls
    the channel after the caller closes it and dies with "Channel closed"."""
    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        ready.cancel()
        raise


def _read(path: str, what: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"TLS {what} file {path} does not exist")
    return file.read_bytes()


def warn_if_exposed(host: str, token: str, service: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning(
            "%s listens on %s without a token: anyone who can reach it can call it", service, host
        )
