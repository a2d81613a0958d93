"""Pool statistics, computed on demand from the pool's counts and the live
sequences: O(sequences), but for the consecutive-block ratio, which reads
every block table (O(blocks))."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as IntSequence

from pagedserve.blockmgr.allocator import SequenceAllocator
from pagedserve.blockmgr.pool_info import PoolStats
from pagedserve.blockmgr.sequence import Sequence


def filled_slots(
    sequences: Iterable[Sequence], block_size_tokens: int, num_references: int, num_used: int
) -> int:
    """Tokens held by the distinct referenced device blocks, without visiting them.

    Each sequence's tokens fill its table's blocks; a block referenced r times
    is counted r times, once per sequence. Only a sequence's last block can be
    partly filled, and sharers of a block agree on its fill (a shared partly
    filled block is copied before it grows). So the blocks counted more than
    once are the shared ones, num_references - num_used extra times in all,
    each full except shared partly filled last blocks, taken once each here.
    """
    tokens = 0
    partly_filled_shared: dict[int, tuple[int, int]] = {}  # block id -> (fill, ref count)
    for seq in sequences:
        if not seq.block_table:
            continue  # swapped out (or holding nothing): no device slots
        num_tokens = len(seq.token_ids)
        tokens += num_tokens
        last = seq.block_table[-1]
        fill = num_tokens - (len(seq.block_table) - 1) * block_size_tokens
        if fill < block_size_tokens and last.ref_count > 1:
            partly_filled_shared[last.block_id] = (fill, last.ref_count)
    extra = block_size_tokens * (num_references - num_used)
    extra -= sum(
        (block_size_tokens - fill) * (refs - 1) for fill, refs in partly_filled_shared.values()
    )
    return tokens - extra


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
    used = pool.num_used
    cached_free = pool.num_cached_free()
    filled = filled_slots(sequences, block_size, pool.num_references, used)
    slots = used * block_size
    looked_up = allocator.prompt_tokens_looked_up
    return PoolStats(
        total_blocks=pool.num_blocks,
        # Unreferenced blocks without a cache entry: queued, or held for copies.
        free_blocks=pool.num_blocks - used - cached_free,
        used_blocks=used,
        cached_blocks=cached_free,
        # Distinct: forks swapped out together share their full blocks' copies.
        swapped_blocks=len(
            {host for seq in sequences if seq.is_swapped for host in seq.host_block_ids}
        ),
        shared_blocks=pool.num_shared,
        logical_blocks=pool.num_references,
        kv_utilization=filled / slots if slots else 0.0,
        prefix_cache_hit_rate=allocator.prompt_tokens_hit / looked_up if looked_up else 0.0,
        consecutive_block_ratio=consecutive_block_ratio(
            seq.block_ids() for seq in sequences if not seq.is_swapped
        ),
        num_sequences=len(sequences),
        num_executors=num_executors,
    )
