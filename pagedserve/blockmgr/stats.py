"""Pool statistics, computed on demand by walking the pool (O(blocks))."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as IntSequence

from pagedserve.blockmgr.allocator import SequenceAllocator
from pagedserve.blockmgr.pool_info import PoolStats
from pagedserve.blockmgr.sequence import Sequence


def filled_slots_by_block(sequences: Iterable[Sequence], block_size_tokens: int) -> dict[int, int]:
    """Tokens held by each referenced device block. Sharers of a block always
    agree on its fill: a shared partly filled block is copied before it grows."""
    filled: dict[int, int] = {}
    for seq in sequences:
        num_tokens = len(seq.token_ids)
        for index, block in enumerate(seq.block_table):
            filled[block.block_id] = min(block_size_tokens, num_tokens - index * block_size_tokens)
    return filled


def consecutive_block_ratio(tables: Iterable[IntSequence[int]]) -> float:
    """Of the neighbouring entries of these block tables (block ids), the share
    whose second block directly follows the first; 0.0 when there are none."""
    num_pairs = num_consecutive = 0
    for table in tables:
        num_pairs += max(0, len(table) - 1)
        num_consecutive += sum(1 for a, b in zip(table, table[1:], strict=False) if b == a + 1)
    return num_consecutive / num_pairs if num_pairs else 0.0


def compute_stats(
    allocator: SequenceAllocator, sequences: list[Sequence], num_executors: int
) -> PoolStats:
    """Statistics of one pool given all its live sequences."""
    pool = allocator.block_pool
    block_size = allocator.block_size_tokens
    used = [block for block in pool.blocks if block.ref_count > 0]
    cached_free = pool.num_cached_free()
    filled = filled_slots_by_block(sequences, block_size)
    slots = len(used) * block_size
    looked_up = allocator.prompt_tokens_looked_up
    return PoolStats(
        total_blocks=pool.num_blocks,
        # Unreferenced blocks without a cache entry: queued, or held for copies.
        free_blocks=pool.num_blocks - len(used) - cached_free,
        used_blocks=len(used),
        cached_blocks=cached_free,
        # Distinct: forks swapped out together share their full blocks' copies.
        swapped_blocks=len(
            {host for seq in sequences if seq.is_swapped for host in seq.host_block_ids}
        ),
        shared_blocks=sum(1 for block in used if block.ref_count > 1),
        logical_blocks=sum(block.ref_count for block in used),
        kv_utilization=sum(filled.values()) / slots if slots else 0.0,
        prefix_cache_hit_rate=allocator.prompt_tokens_hit / looked_up if looked_up else 0.0,
        consecutive_block_ratio=consecutive_block_ratio(
            seq.block_ids() for seq in sequences if not seq.is_swapped
        ),
        num_sequences=len(sequences),
        num_executors=num_executors,
    )
