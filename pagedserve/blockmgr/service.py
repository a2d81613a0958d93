"""The gRPC edge of the block manager: a thin servicer over the core, the lease
reaper, and `serve` / `main` with health, reflection and graceful stop."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pagedserve.blockmgr import convert, step_codec
from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.errors import BlockManagerError
from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.metrics import PoolStatsCollector, timed
from pagedserve.blockmgr.status_codes import status_for
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.blockmgr.v1 import blockmgr_pb2_grpc as pb_grpc
from pagedserve.common.metrics import REGISTRY, serve_metrics
from pagedserve.common.security import TokenAuthInterceptor, server_credentials, warn_if_exposed
from pagedserve.common.server import bind
from pagedserve.common.tracing import init_tracing, shutdown_tracing

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BlockManager"].full_name
# Health and reflection calls (Watch and ServerReflectionInfo are streams
# that hold a worker while open) run on this many workers.
MAX_WORKERS = 4
STOP_GRACE_S = 5.0

T = TypeVar("T")


class BlockManagerServicer(pb_grpc.BlockManagerServicer):
    """Converts, calls the core under the lock, converts back. Core errors
    become their status code here (see status_codes.py); nothing else does."""

    def __init__(self, manager: BlockManager, lock: threading.Lock) -> None:
        self._manager = manager
        self._lock = lock

    def _call(self, context: grpc.ServicerContext, action: Callable[[], T]) -> T:
        try:
            with self._lock:
                return action()
        except BlockManagerError as error:
            context.abort(status_for(error), str(error))
            raise  # abort raises; this line is for type checkers

    def RegisterPool(self, request, context):
        def action():
            return self._manager.register_pool(convert.pool_info_from_pb(request.pool))

        pool_id = self._call(context, action)
        # A pool's block records live as long as the process: moving them to
        # the permanent generation keeps full collections from walking them,
        # which otherwise shows as multi-millisecond Step latency outliers.
        gc.freeze()
        return pb.RegisterPoolResponse(pool_id=pool_id)

    def ListPools(self, request, context):
        pools = self._call(context, lambda: self._manager.list_pools(request.pool_id))
        return pb.ListPoolsResponse(pools=[convert.pool_info_to_pb(info) for info in pools])

    def RegisterExecutor(self, request, context):
        registration = self._call(
            context,
            lambda: self._manager.register_executor(
                request.pool_id, request.executor_id, request.lease_ms
            ),
        )
        return convert.registration_to_pb(registration)

    def Heartbeat(self, request, context):
        lease_ms = self._call(context, lambda: self._manager.heartbeat(request.executor_id))
        return pb.HeartbeatResponse(lease_ms=lease_ms)

    def UnregisterExecutor(self, request, context):
        freed = self._call(context, lambda: self._manager.unregister_executor(request.executor_id))
        return pb.UnregisterExecutorResponse(freed_sequences=freed)

    def Step(self, request, context):
        # The hot path: no object per op on the way in, none per result on the
        # way out (the response goes back already serialized, see add_servicer).
        tagged = convert.tagged_ops_from_pb(request.ops)
        step = self._call(context, lambda: self._manager.step_tagged(request.executor_id, tagged))
        return step_codec.step_result_to_bytes(step, sparse=request.sparse_results)

    def GetStats(self, request, context):
        stats = self._call(context, lambda: self._manager.get_stats(request.pool_id))
        return convert.stats_to_pb(stats)


_REQUEST_TYPES = {
    "RegisterPool": pb.RegisterPoolRequest,
    "ListPools": pb.ListPoolsRequest,
    "RegisterExecutor": pb.RegisterExecutorRequest,
    "Heartbeat": pb.HeartbeatRequest,
    "UnregisterExecutor": pb.UnregisterExecutorRequest,
    "Step": pb.StepRequest,
    "GetStats": pb.GetStatsRequest,
}
if set(_REQUEST_TYPES) != set(pb.DESCRIPTOR.services_by_name["BlockManager"].methods_by_name):
    raise RuntimeError("service.py does not register every BlockManager RPC of the proto")


def _serialize_response(response: object) -> bytes:
    """Messages are serialized; bytes (a Step response built by hand) pass as they are."""
    return response if type(response) is bytes else response.SerializeToString()


def add_servicer(servicer: BlockManagerServicer, server: grpc.Server) -> futures.ThreadPoolExecutor:
    """Registers the servicer like the generated add_*_to_server does, except:
    - handlers may return an already serialized response;
    - requests are parsed in the handler rather than by gRPC's polling thread
      (measured, a protobuf request deserializer there added about 70 us to
      every call on loopback, parsing in the handler nothing measurable);
    - every BlockManager call runs on one thread of its own. The core is
      single-threaded behind one lock, so more would only queue on it, a
      handler never waits on a client, and one thread taking every call
      measured 0.25 ms p50 for an empty Step against 0.31-0.33 ms with four
      (docs/blockmgr.md). gRPC's per-handler `experimental_thread_pool`
      keeps health and reflection streams off that thread.
    Returns that thread's executor, for the caller to shut down after the server."""
    core_thread = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockmgr-core")
    handlers = {}
    for name, request_type in _REQUEST_TYPES.items():
        behavior = timed(name, _parsing(request_type, getattr(servicer, name)))
        behavior.experimental_thread_pool = core_thread
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            behavior, response_serializer=_serialize_response
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return core_thread


def _parsing(request_type, method: Callable) -> Callable:
    """method, taking the request's bytes; a request that does not parse is INVALID_ARGUMENT."""

    def call(request_bytes: bytes, context: grpc.ServicerContext):
        try:
            request = request_type.FromString(request_bytes)
        except DecodeError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request does not parse: {error}")
        return method(request, context)

    return call


class LeaseReaper(threading.Thread):
    """Expires leases every interval_s, so that an executor that died is freed
    within one interval of its lease passing even if nobody calls."""

    def __init__(self, manager: BlockManager, lock: threading.Lock, interval_s: float) -> None:
        super().__init__(name="blockmgr-lease-reaper", daemon=True)
        self._manager = manager
        self._lock = lock
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            with self._lock:
                expired = self._manager.expire_leases()
            for executor_id in expired:
                logger.warning(
                    "lease of executor %s expired; its sequences were freed", executor_id
                )

    def stop(self) -> None:
        self._stopped.set()


class RunningServer:
    """A started block manager server: its port, and how to stop it."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        reaper: LeaseReaper,
        manager: BlockManager,
        core_thread: futures.ThreadPoolExecutor,
    ) -> None:
        self.server = server
        self.port = port
        self.manager = manager
        self._health = health_servicer
        self._reaper = reaper
        self._core_thread = core_thread

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Reports NOT_SERVING, lets in-flight calls finish for up to grace_s, stops."""
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._reaper.stop()
        self.server.stop(grace_s).wait()
        self._core_thread.shutdown(wait=False)

    def wait(self) -> None:
        """Blocks until the server stops."""
        self.server.wait_for_termination()


def serve(config: BlockManagerConfig, manager: BlockManager | None = None) -> RunningServer:
    """Starts the server (health, reflection, lease reaper) and returns at once.
    Raises OSError when the port cannot be bound."""
    config.validate()
    manager = manager or BlockManager(
        default_lease_ms=config.lease_ms,
        extent_blocks=config.extent_blocks,
        group_extents=config.group_extents,
    )
    lock = threading.Lock()
    interceptors = [TokenAuthInterceptor(config.internal_token)] if config.internal_token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS), interceptors=interceptors
    )
    core_thread = add_servicer(BlockManagerServicer(manager, lock), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    warn_if_exposed(config.host, config.internal_token, "block manager")
    credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    port = bind(server, config.host, config.port, credentials)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # A quarter of the default lease, and at most 0.5 s because executors may
    # ask for shorter leases than the default; a pass is O(executors).
    reaper = LeaseReaper(manager, lock, interval_s=min(0.5, max(0.01, config.lease_ms / 4000.0)))
    reaper.start()
    if config.metrics_port:
        # Once per process: the collector reads this server's manager.
        REGISTRY.register(PoolStatsCollector(manager, lock))
        serve_metrics(config.host, config.metrics_port, "blockmgr")
    logger.info("block manager listening on %s:%d", config.host, port)
    return RunningServer(server, port, health_servicer, reaper, manager, core_thread)


def main(argv: list[str]) -> int:
    """`pagedserve blockmgr [--host H] [--port P] [--lease-ms MS]`: serves until
    SIGTERM or SIGINT. Returns 0 after a clean stop, 2 on a bad configuration."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = BlockManagerConfig.from_argv(argv)
    except ValueError as error:
        logger.error("bad configuration: %s", error)
        return 2
    logger.info("block manager config: %s", config.describe())
    init_tracing("blockmgr")  # before the server exists
    try:
        return _serve_until_signal(config)
    finally:
        shutdown_tracing()


def _serve_until_signal(config: BlockManagerConfig) -> int:
    running = serve(config)
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop_requested.wait(0.5):  # a timed wait keeps signals prompt
        pass
    running.stop()
    logger.info("block manager stopped")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
