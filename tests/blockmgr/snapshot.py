"""A complete, comparable picture of a manager's block state, for tests that
check that a refused call changed nothing."""

from __future__ import annotations

from typing import Any

from pagedserve.blockmgr.manager import BlockManager


def snapshot(manager: BlockManager) -> dict[str, Any]:
    """Everything observable about pools, executors and sequences."""
    state: dict[str, Any] = {"executors": {}, "pools": {}}
    for info in manager.list_pools():
        allocator = manager.allocator(info.pool_id)
        pool = allocator.block_pool
        state["pools"][info.pool_id] = {
            "executors": info.executor_ids,
            "free_queue": pool.free_block_ids(),
            "ref_counts": [block.ref_count for block in pool.blocks],
            "cache": {
                block_hash: (block.block_id, block.cache_entry.token_ids)
                for block_hash, block in pool.cache_index().items()
            },
            "host_free": list(allocator.swap_pool._free),
            "stats": manager.get_stats(info.pool_id),
        }
    for executor_id in manager.executor_ids():
        state["executors"][executor_id] = {
            seq_id: (
                list(seq.token_ids),
                seq.block_ids(),
                None if seq.host_block_ids is None else list(seq.host_block_ids),
                seq.hash_state(),
            )
            for seq_id, seq in manager.sequences(executor_id).items()
        }
    return state
