"""Shared fixtures for block manager tests: a manager with a fake clock."""

from __future__ import annotations

from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.pool_info import DeviceKind, PoolInfo


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_pool_info(
    num_blocks: int = 8, block_size_tokens: int = 4, num_swap_blocks: int = 4
) -> PoolInfo:
    return PoolInfo(
        DeviceKind.CPU,
        num_blocks=num_blocks,
        block_size_tokens=block_size_tokens,
        num_swap_blocks=num_swap_blocks,
        dtype="float32",
        layout="layers,kv,blocks,block_size,kv_heads,head_dim",
        shape=(2, 2, num_blocks, block_size_tokens, 1, 8),
        model_key="tiny-model",
    )


def make_manager(
    num_blocks: int = 8, block_size_tokens: int = 4, num_swap_blocks: int = 4, **kwargs
) -> tuple[BlockManager, str, str, FakeClock]:
    """A manager with one pool and one executor attached; returns (manager,
    pool_id, executor_id, clock). Extents of one block (plain least-recently-
    freed order) and groups of one extent unless `extent_blocks` or
    `group_extents` is given: the exact ids in most tests pin that order;
    test_placement.py pins longer extents and groups."""
    clock = FakeClock()
    kwargs.setdefault("extent_blocks", 1)
    kwargs.setdefault("group_extents", 1)
    manager = BlockManager(clock=clock, **kwargs)
    pool_id = manager.register_pool(make_pool_info(num_blocks, block_size_tokens, num_swap_blocks))
    executor_id = manager.register_executor(pool_id).executor_id
    return manager, pool_id, executor_id, clock


def table(manager: BlockManager, executor_id: str, seq_id: int) -> list[int]:
    return manager.sequences(executor_id)[seq_id].block_ids()


def free_queue(manager: BlockManager, pool_id: str) -> list[int]:
    return manager.allocator(pool_id).block_pool.free_block_ids()


def held(manager: BlockManager, executor_id: str) -> list[int]:
    """Blocks held for the executor's copies until its next step."""
    return [block.block_id for block in manager._executors[executor_id].held_blocks]
