"""Plain Python types for pools, executor registrations and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace


class DeviceKind(enum.Enum):
    """Where a pool's memory lives."""

    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """A KV pool as its keeper created it (see PoolInfo in blockmgr.proto)."""

    device_kind: DeviceKind
    num_blocks: int
    block_size_tokens: int
    dtype: str = ""
    layout: str = ""
    shape: tuple[int, ...] = ()
    device_index: int = 0
    num_swap_blocks: int = 0
    device_handle: bytes = b""
    swap_handle: bytes = b""
    model_key: str = ""
    pool_id: str = ""
    executor_ids: tuple[str, ...] = field(default=())

    def with_ids(self, pool_id: str, executor_ids: tuple[str, ...]) -> PoolInfo:
        """A copy carrying the assigned pool id and the executors attached now."""
        return replace(self, pool_id=pool_id, executor_ids=executor_ids)


@dataclass(frozen=True, slots=True)
class ExecutorRegistration:
    """What an executor gets when it attaches."""

    executor_id: str
    lease_ms: int
    pool: PoolInfo


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Block counts and rates of one pool (see GetStatsResponse)."""

    total_blocks: int
    free_blocks: int
    used_blocks: int
    cached_blocks: int
    swapped_blocks: int
    shared_blocks: int
    logical_blocks: int
    kv_utilization: float
    prefix_cache_hit_rate: float
    consecutive_block_ratio: float
    num_sequences: int
    num_executors: int
