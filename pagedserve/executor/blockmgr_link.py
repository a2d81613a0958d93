"""The executor side of the block-manager protocol: the only place it touches blockmgr protos.

The per-step call is built straight into a StepRequest from the scheduler's
decisions (no intermediate op objects on the hot path) and its results are
handed back as the raw response; the scheduler reads only the fields it needs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import grpc

from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.blockmgr.v1 import blockmgr_pb2_grpc as pb_grpc
from pagedserve.common.security import auth_metadata, open_channel, wait_channel_ready
from pagedserve.common.server import CHANNEL_OPTIONS
from pagedserve.executor.kv_pool import POOL_LAYOUT, PoolSpec, dtype_from_name, dtype_name
from pagedserve.executor.request_trace import BLOCKMGR_STEP_LATENCY

log = logging.getLogger(__name__)

_DEVICE_KINDS = {"cpu": pb.DEVICE_KIND_CPU, "cuda": pb.DEVICE_KIND_CUDA}
_DEVICE_NAMES = {value: key for key, value in _DEVICE_KINDS.items()}


class PoolNotFoundError(LookupError):
    """No pool (or not the one asked for) is registered at the block manager."""


class _TokenStub:
    """The block manager's stub with the internal token on every call."""

    def __init__(self, stub: pb_grpc.BlockManagerStub, metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)
        if not self._metadata:
            return method
        return functools.partial(method, metadata=self._metadata)


class BlockManagerLink:
    """A connection to the block manager; thread-safe (gRPC stubs are)."""

    def __init__(
        self,
        address: str,
        timeout_s: float = 10.0,
        token: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = open_channel(address, credentials, CHANNEL_OPTIONS)
        self.stub = _TokenStub(pb_grpc.BlockManagerStub(self._channel), auth_metadata(token))

    def wait_ready(self, timeout_s: float) -> None:
        """Blocks until the block manager answers; raises grpc.FutureTimeoutError."""
        wait_channel_ready(self._channel, timeout_s)

    def close(self) -> None:
        self._channel.close()

    def register_pool(
        self,
        spec: PoolSpec,
        device_kind: str,
        device_index: int,
        handle: bytes,
        model_key: str,
        num_swap_blocks: int = 0,
        swap_handle: bytes = b"",
    ) -> str:
        info = pb.PoolInfo(
            device_kind=_DEVICE_KINDS[device_kind],
            device_index=device_index,
            dtype=dtype_name(spec.dtype),
            layout=POOL_LAYOUT,
            shape=list(spec.shape),
            num_blocks=spec.num_blocks,
            block_size_tokens=spec.block_size_tokens,
            num_swap_blocks=num_swap_blocks,
            device_handle=handle,
            swap_handle=swap_handle,
            model_key=model_key,
        )
        request = pb.RegisterPoolRequest(pool=info)
        return self.stub.RegisterPool(request, timeout=self.timeout_s).pool_id

    def find_pool(self, pool_id: str = "") -> pb.PoolInfo:
        """The pool with pool_id, or the only pool when pool_id is empty."""
        pools = self.stub.ListPools(
            pb.ListPoolsRequest(pool_id=pool_id), timeout=self.timeout_s
        ).pools
        if pool_id:
            pools = [pool for pool in pools if pool.pool_id == pool_id]
        if len(pools) != 1:
            found = ", ".join(pool.pool_id for pool in pools) or "none"
            raise PoolNotFoundError(
                f"expected one KV pool{' ' + pool_id if pool_id else ''} at {self.address}, found {found}"
            )
        return pools[0]

    def register_executor(self, pool_id: str, executor_id: str = "") -> pb.RegisterExecutorResponse:
        request = pb.RegisterExecutorRequest(pool_id=pool_id, executor_id=executor_id)
        return self.stub.RegisterExecutor(request, timeout=self.timeout_s)

    def unregister_executor(self, executor_id: str) -> int:
        """Detaches; returns how many sequences the block manager still held and freed."""
        request = pb.UnregisterExecutorRequest(executor_id=executor_id)
        return self.stub.UnregisterExecutor(request, timeout=self.timeout_s).freed_sequences

    def step(self, request: pb.StepRequest) -> pb.StepResponse:
        started_s = time.perf_counter()
        response = self.stub.Step(request, timeout=self.timeout_s)
        BLOCKMGR_STEP_LATENCY.observe(time.perf_counter() - started_s)
        return response

    def stats(self, pool_id: str) -> pb.GetStatsResponse:
        return self.stub.GetStats(pb.GetStatsRequest(pool_id=pool_id), timeout=self.timeout_s)

    def start_heartbeat(self, executor_id: str, interval_s: float) -> threading.Event:
        """Renews the lease every interval_s in a daemon thread; set the event to stop."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval_s):
                try:
                    self.stub.Heartbeat(
                        pb.HeartbeatRequest(executor_id=executor_id), timeout=self.timeout_s
                    )
                except grpc.RpcError as error:
                    log.warning("lease heartbeat failed: %s", error.details() or error.code())

        threading.Thread(target=beat, name="lease-heartbeat", daemon=True).start()
        return stop


def pool_spec_from_info(info: pb.PoolInfo) -> tuple[str, PoolSpec]:
    """The device kind and spec of a registered pool; raises ValueError for an unknown layout."""
    if info.layout != POOL_LAYOUT:
        raise ValueError(
            f"pool {info.pool_id} has layout {info.layout!r}, expected {POOL_LAYOUT!r}"
        )
    num_layers, _kv, num_blocks, block_size, num_kv_heads, head_dim = info.shape
    spec = PoolSpec(
        num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype_from_name(info.dtype)
    )
    return _DEVICE_NAMES[info.device_kind], spec
