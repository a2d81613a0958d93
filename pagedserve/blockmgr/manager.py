"""The block manager core: pools, attached executors, leases, and the Step
transaction. Pure Python, single-threaded: the service serializes calls.

Transaction semantics of `step`: ops run in order; each op validates its input
before changing anything; an invalid op raises a typed error after every
earlier op of the call has been undone through the pool's journal, so the
state is exactly as before the call. Running out of blocks is not an error: the
op returns ok=False, changes nothing, and later ops still run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pagedserve.blockmgr.allocator import SequenceAllocator
from pagedserve.blockmgr.errors import InvalidArgumentError, NotFoundError
from pagedserve.blockmgr.executor_state import ExecutorState
from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS, DEFAULT_GROUP_EXTENTS
from pagedserve.blockmgr.ops import BlockOp, FreeOp, StepResult
from pagedserve.blockmgr.pool_info import ExecutorRegistration, PoolInfo, PoolStats
from pagedserve.blockmgr.prefix_hash import ChainHashFn, chain_hash
from pagedserve.blockmgr.sequence import Sequence
from pagedserve.blockmgr.stats import compute_stats
from pagedserve.blockmgr.step_ops import apply_tagged_ops

# A pool's block records are Python objects (~100 bytes each); beyond this a
# registration is a mistake rather than a pool.
MAX_POOL_BLOCKS = 1 << 22
MAX_SWAP_BLOCKS = 1 << 24


@dataclass
class _Pool:
    info: PoolInfo
    allocator: SequenceAllocator
    executor_ids: list[str] = field(default_factory=list)


class BlockManager:
    """Owns the block state of every registered pool."""

    def __init__(
        self,
        default_lease_ms: int = 10_000,
        max_lease_ms: int = 600_000,
        clock: Callable[[], float] = time.monotonic,
        hash_fn: ChainHashFn = chain_hash,
        extent_blocks: int = DEFAULT_EXTENT_BLOCKS,
        group_extents: int = DEFAULT_GROUP_EXTENTS,
    ) -> None:
        self.default_lease_ms = default_lease_ms
        self.extent_blocks = extent_blocks
        self.group_extents = group_extents
        self.max_lease_ms = max_lease_ms
        self._clock = clock
        self._hash_fn = hash_fn
        self._pools: dict[str, _Pool] = {}
        self._executors: dict[str, ExecutorState] = {}
        self._pool_numbers = itertools.count(1)
        self._executor_numbers = itertools.count(1)

    # ---- pools -----------------------------------------------------------------

    def register_pool(self, info: PoolInfo) -> str:
        """Registers a pool and returns its new id. Raises InvalidArgumentError on
        bad geometry (no blocks, zero block size, too many blocks)."""
        _validate_pool(info)
        pool_id = f"pool-{next(self._pool_numbers)}"
        allocator = SequenceAllocator(
            info.num_blocks,
            info.num_swap_blocks,
            info.block_size_tokens,
            info.model_key,
            self._hash_fn,
            self.extent_blocks,
            self.group_extents,
        )
        self._pools[pool_id] = _Pool(info.with_ids(pool_id, ()), allocator)
        return pool_id

    def list_pools(self, pool_id: str = "") -> list[PoolInfo]:
        """All pools, or only `pool_id`. Raises NotFoundError for an unknown id."""
        if pool_id:
            return [self._describe(pool_id, self._pool(pool_id))]
        return [self._describe(pid, pool) for pid, pool in self._pools.items()]

    def can_allocate(self, pool_id: str, num_blocks: int) -> bool:
        """Watermark query: could `num_blocks` blocks be allocated now (free plus
        evictable cached, not counting blocks held for an executor's copies)?
        Raises NotFoundError for an unknown pool."""
        return self._pool(pool_id).allocator.block_pool.can_allocate(num_blocks)

    def num_free_blocks(self, pool_id: str) -> int:
        """Blocks an allocation could take now (free plus evictable cached)."""
        return self._pool(pool_id).allocator.block_pool.num_allocatable

    def get_stats(self, pool_id: str) -> PoolStats:
        """Statistics of one pool. Raises NotFoundError for an unknown pool."""
        pool = self._pool(pool_id)
        sequences = [
            seq for eid in pool.executor_ids for seq in self._executors[eid].sequences.values()
        ]
        return compute_stats(pool.allocator, sequences, len(pool.executor_ids))

    def allocator(self, pool_id: str) -> SequenceAllocator:
        """The pool's allocator, for inspection by tests and benchmarks."""
        return self._pool(pool_id).allocator

    # ---- executors -----------------------------------------------------------

    def register_executor(
        self, pool_id: str, executor_id: str = "", lease_ms: int = 0
    ) -> ExecutorRegistration:
        """Attaches an executor (new id when empty). Re-registering an existing id
        frees everything it held first. Raises NotFoundError for an unknown pool,
        InvalidArgumentError for a lease above the maximum."""
        pool = self._pool(pool_id)
        if lease_ms > self.max_lease_ms:
            raise InvalidArgumentError(
                f"lease_ms: {lease_ms} exceeds the maximum {self.max_lease_ms}"
            )
        if executor_id in self._executors:
            self._drop_executor(self._executors[executor_id])
        if not executor_id:
            executor_id = f"executor-{next(self._executor_numbers)}"
            while executor_id in self._executors:
                executor_id = f"executor-{next(self._executor_numbers)}"
        granted_ms = lease_ms or self.default_lease_ms
        self._executors[executor_id] = ExecutorState(
            executor_id, pool_id, granted_ms, self._clock()
        )
        pool.executor_ids.append(executor_id)
        return ExecutorRegistration(executor_id, granted_ms, self._describe(pool_id, pool))

    def heartbeat(self, executor_id: str) -> int:
        """Renews the lease and returns its length in ms. Raises NotFoundError
        for an unknown or already expired executor."""
        executor = self._live_executor(executor_id)
        executor.renew(self._clock())
        return executor.lease_ms

    def unregister_executor(self, executor_id: str) -> int:
        """Detaches an executor, freeing all its sequences; returns how many.
        Raises NotFoundError for an unknown or expired executor."""
        return self._drop_executor(self._live_executor(executor_id))

    def expire_leases(self, now_s: float | None = None) -> list[str]:
        """Drops every executor whose lease passed before `now_s` (default: the
        clock), freeing its sequences; returns their ids."""
        now_s = self._clock() if now_s is None else now_s
        expired = [e for e in self._executors.values() if e.is_expired(now_s)]
        for executor in expired:
            self._drop_executor(executor)
        return [executor.executor_id for executor in expired]

    def sequences(self, executor_id: str) -> dict[int, Sequence]:
        """The executor's live sequences, for inspection (read-only use; does not
        check the lease, so looking never expires anyone). Raises NotFoundError."""
        executor = self._executors.get(executor_id)
        if executor is None:
            raise NotFoundError(f"executor_id: no executor {executor_id!r}")
        return executor.sequences

    def executor_ids(self) -> list[str]:
        """Ids of attached executors."""
        return list(self._executors)

    # ---- step -------------------------------------------------------------------

    def step(self, executor_id: str, ops: Iterable[BlockOp]) -> StepResult:
        """Applies the ops in order, all or nothing (see the module docstring).

        Raises NotFoundError (unknown executor or sequence), AlreadyExistsError,
        FailedPreconditionError or InvalidArgumentError; the state is then unchanged.
        """
        return self.step_tagged(executor_id, [(_kind_of(op), op) for op in ops])

    def step_tagged(
        self, executor_id: str, tagged_ops: Iterable[tuple[str | None, Any]]
    ) -> StepResult:
        """`step` for (kind, body) pairs, where body is any object with the op's
        fields as attributes (the service passes protobuf sub-messages as they
        are). A kind of None means no op was set: InvalidArgumentError."""
        executor = self._live_executor(executor_id)
        allocator = self._pools[executor.pool_id].allocator
        step = StepResult()
        allocator.begin_step(step)
        try:
            allocator.release_held(executor.held_blocks, executor.held_host_block_ids)
            apply_tagged_ops(allocator, executor.sequences, tagged_ops, step.results)
        except BaseException:
            allocator.rollback()
            raise
        allocator.commit(executor.held_blocks, executor.held_host_block_ids)
        # Held blocks come back at the start of this executor's next step,
        # before its ops, so it can count on them.
        step.num_free_blocks = allocator.block_pool.num_allocatable + len(executor.held_blocks)
        return step

    # ---- internals ------------------------------------------------------------

    def _pool(self, pool_id: str) -> _Pool:
        pool = self._pools.get(pool_id)
        if pool is None:
            raise NotFoundError(f"pool_id: no pool {pool_id!r}")
        return pool

    def _describe(self, pool_id: str, pool: _Pool) -> PoolInfo:
        return pool.info.with_ids(pool_id, tuple(pool.executor_ids))

    def _live_executor(self, executor_id: str) -> ExecutorState:
        executor = self._executors.get(executor_id)
        if executor is None:
            raise NotFoundError(f"executor_id: no executor {executor_id!r}")
        if executor.is_expired(self._clock()):
            # Expiry does not wait for the reaper: a late call sees it at once.
            self._drop_executor(executor)
            raise NotFoundError(f"executor_id: the lease of {executor_id!r} expired")
        return executor

    def _drop_executor(self, executor: ExecutorState) -> int:
        pool = self._pools[executor.pool_id]
        num_sequences = len(executor.sequences)
        self._free_all(pool.allocator, executor)
        del self._executors[executor.executor_id]
        pool.executor_ids.remove(executor.executor_id)
        return num_sequences

    @staticmethod
    def _free_all(allocator: SequenceAllocator, executor: ExecutorState) -> None:
        # Held blocks first, then sequences in seq-id order (dict order would
        # depend on undone frees re-inserting). Nothing is held afterwards: a
        # departed executor performs no more copies.
        allocator.begin_step(StepResult())
        try:
            allocator.release_held(executor.held_blocks, executor.held_host_block_ids)
            frees = [("free", FreeOp(seq_id)) for seq_id in sorted(executor.sequences)]
            apply_tagged_ops(allocator, executor.sequences, frees, [])
        except BaseException:
            allocator.rollback()
            raise
        allocator.commit([], [])


def _kind_of(op: object) -> str | None:
    return getattr(op, "kind", None)


def _validate_pool(info: PoolInfo) -> None:
    if info.num_blocks <= 0 or info.num_blocks > MAX_POOL_BLOCKS:
        raise InvalidArgumentError(
            f"pool.num_blocks: {info.num_blocks} not in 1..{MAX_POOL_BLOCKS}"
        )
    if info.block_size_tokens <= 0:
        raise InvalidArgumentError("pool.block_size_tokens: must be positive")
    if info.num_swap_blocks < 0 or info.num_swap_blocks > MAX_SWAP_BLOCKS:
        raise InvalidArgumentError(
            f"pool.num_swap_blocks: {info.num_swap_blocks} not in 0..{MAX_SWAP_BLOCKS}"
        )
