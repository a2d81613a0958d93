"""A typed Python client of the block manager, for executors and tools.

Every method returns plain Python types (see ops.py and pool_info.py). A call
the block manager refuses raises the same typed error the core raised
(NotFoundError, AlreadyExistsError, FailedPreconditionError,
InvalidArgumentError); transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, ...)
propagate as grpc.RpcError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from pagedserve.blockmgr import convert, step_codec
from pagedserve.blockmgr.ops import BlockOp, StepResult
from pagedserve.blockmgr.pool_info import ExecutorRegistration, PoolInfo, PoolStats
from pagedserve.blockmgr.status_codes import error_for
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.blockmgr.v1 import blockmgr_pb2_grpc as pb_grpc

T = TypeVar("T")
STEP_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BlockManager"].full_name
DEFAULT_TIMEOUT_S = 5.0


class BlockManagerClient:
    """Wraps a BlockManager stub; usable as a context manager (closes its channel)."""

    def __init__(self, target: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.BlockManagerStub(self._channel)
        # Step without a response deserializer: the raw bytes allow a fast path
        # when every result is a bare ok (see step_codec.step_result_from_bytes).
        self._step_raw = self._channel.unary_unary(
            f"/{STEP_SERVICE_NAME}/Step",
            request_serializer=pb.StepRequest.SerializeToString,
            response_deserializer=None,
        )
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BlockManagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            typed = error_for(error.code(), error.details() or "")
            if typed is None:
                raise
            raise typed from error

    def register_pool(self, info: PoolInfo) -> str:
        """Registers a pool; returns its id."""
        request = pb.RegisterPoolRequest(pool=convert.pool_info_to_pb(info))
        return self._call(self._stub.RegisterPool, request).pool_id

    def list_pools(self, pool_id: str = "") -> list[PoolInfo]:
        """All pools, or the one named; NotFoundError for an unknown id."""
        response = self._call(self._stub.ListPools, pb.ListPoolsRequest(pool_id=pool_id))
        return [convert.pool_info_from_pb(message) for message in response.pools]

    def register_executor(
        self, pool_id: str, executor_id: str = "", lease_ms: int = 0
    ) -> ExecutorRegistration:
        """Attaches to a pool; an empty id lets the block manager choose one."""
        request = pb.RegisterExecutorRequest(
            pool_id=pool_id, executor_id=executor_id, lease_ms=lease_ms
        )
        return convert.registration_from_pb(self._call(self._stub.RegisterExecutor, request))

    def heartbeat(self, executor_id: str) -> int:
        """Renews the lease; returns its length in ms. NotFoundError once expired."""
        request = pb.HeartbeatRequest(executor_id=executor_id)
        return self._call(self._stub.Heartbeat, request).lease_ms

    def unregister_executor(self, executor_id: str) -> int:
        """Detaches; returns how many sequences were freed."""
        request = pb.UnregisterExecutorRequest(executor_id=executor_id)
        return self._call(self._stub.UnregisterExecutor, request).freed_sequences

    def step(self, executor_id: str, ops: Sequence[BlockOp]) -> StepResult:
        """Applies the ops all or nothing; see BlockManager.step for the errors."""
        request = convert.step_request_to_pb(executor_id, ops, sparse_results=True)
        return step_codec.step_result_from_bytes(self._call(self._step_raw, request))

    def get_stats(self, pool_id: str) -> PoolStats:
        """Block counts and rates of one pool."""
        request = pb.GetStatsRequest(pool_id=pool_id)
        return convert.stats_from_pb(self._call(self._stub.GetStats, request))
