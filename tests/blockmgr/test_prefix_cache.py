"""Prefix caching through the manager: hits, the commit rule, the last-block
rule, salts, and collision safety with injected weak hashes."""

from __future__ import annotations

from pagedserve.blockmgr.ops import AllocateOp, AppendOp, ComputedOp, FreeOp
from pagedserve.blockmgr.prefix_hash import chain_hash

from .helpers import free_queue, make_manager, table


def test_only_computed_blocks_are_matched() -> None:
    manager, pool_id, ex, _ = make_manager()
    prompt = list(range(10))
    manager.step(ex, [AllocateOp(1, prompt), ComputedOp(1, 7)])
    # Block 0 (tokens 0-3) is computed, block 1 (4-7) is not yet.
    result = manager.step(ex, [AllocateOp(2, prompt)]).results[0]
    assert result.num_cached_tokens == 4
    assert result.new_block_ids == (0, 3, 4)


def test_allocated_but_uncomputed_blocks_are_never_matched() -> None:
    manager, _, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, list(range(10)))])
    result = manager.step(ex, [AllocateOp(2, list(range(10)))]).results[0]
    assert result.num_cached_tokens == 0
    assert result.new_block_ids == (3, 4, 5)


def test_freed_cached_prefix_is_reused_with_exact_ids() -> None:
    manager, pool_id, ex, _ = make_manager()
    prompt = list(range(10))
    manager.step(ex, [AllocateOp(1, prompt), ComputedOp(1, 10), FreeOp(1)])
    assert free_queue(manager, pool_id) == [3, 4, 5, 6, 7, 2, 1, 0]
    result = manager.step(ex, [AllocateOp(2, prompt + [99])]).results[0]
    assert result.new_block_ids == (0, 1, 3)
    assert result.num_cached_tokens == 8
    assert free_queue(manager, pool_id) == [4, 5, 6, 7, 2]


def test_whole_prompt_cached_still_leaves_the_last_block_to_compute() -> None:
    manager, pool_id, ex, _ = make_manager()
    prompt = list(range(8))  # exactly two full blocks
    manager.step(ex, [AllocateOp(1, prompt), ComputedOp(1, 8)])
    result = manager.step(ex, [AllocateOp(2, prompt)]).results[0]
    assert result.num_cached_tokens == 4
    assert result.new_block_ids == (0, 2)
    # Computing the recomputed block does not displace the first registration.
    manager.step(ex, [ComputedOp(2, 8)])
    index = manager.allocator(pool_id).block_pool.cache_index()
    assert sorted(block.block_id for block in index.values()) == [0, 1]


def test_one_token_prompt_is_never_cached() -> None:
    manager, _, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [5]), ComputedOp(1, 1)])
    assert manager.step(ex, [AllocateOp(2, [5])]).results[0].num_cached_tokens == 0


def test_cache_salt_and_opt_out_prevent_matching() -> None:
    manager, _, ex, _ = make_manager(num_blocks=16)
    prompt = list(range(9))
    manager.step(ex, [AllocateOp(1, prompt, cache_salt="a"), ComputedOp(1, 9)])
    salted = manager.step(ex, [AllocateOp(2, prompt, cache_salt="b")]).results[0]
    opted_out = manager.step(ex, [AllocateOp(3, prompt, "a", use_prefix_cache=False)]).results[0]
    same = manager.step(ex, [FreeOp(2), FreeOp(3), AllocateOp(4, prompt, cache_salt="a")]).results[
        2
    ]
    assert salted.num_cached_tokens == 0
    assert opted_out.num_cached_tokens == 0
    assert same.num_cached_tokens == 8


def test_hit_rate_counts_prompt_tokens() -> None:
    manager, pool_id, ex, _ = make_manager()
    prompt = list(range(10))
    manager.step(ex, [AllocateOp(1, prompt), ComputedOp(1, 10), AllocateOp(2, prompt)])
    assert manager.get_stats(pool_id).prefix_cache_hit_rate == 8 / 20


def test_decode_tokens_get_cached_once_computed() -> None:
    manager, _, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1, 2, 3]), ComputedOp(1, 3)])
    manager.step(ex, [AppendOp(1, [4]), AppendOp(1, [5]), ComputedOp(1, 5)])
    result = manager.step(ex, [AllocateOp(2, [1, 2, 3, 4, 9])]).results[0]
    assert result.num_cached_tokens == 4
    assert result.new_block_ids[0] == table(manager, ex, 1)[0]


def colliding_hash(parent_hash: bytes | None, token_ids: tuple[int, ...], extra_key: str) -> bytes:
    """Every block at the same position with the same parent collides."""
    return chain_hash(parent_hash, (), extra_key)


def test_colliding_hash_never_serves_other_tokens() -> None:
    manager, pool_id, ex, _ = make_manager(hash_fn=colliding_hash)
    manager.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ComputedOp(1, 5)])
    result = manager.step(ex, [AllocateOp(2, [9, 9, 9, 9, 5])]).results[0]
    assert result.num_cached_tokens == 0
    # Same hash, other content: the second registration is refused, not overwritten.
    manager.step(ex, [ComputedOp(2, 5)])
    (cached,) = manager.allocator(pool_id).block_pool.cache_index().values()
    assert cached.cache_entry.token_ids == (1, 2, 3, 4)


def hash_ignoring_parent(
    parent_hash: bytes | None, token_ids: tuple[int, ...], extra_key: str
) -> bytes:
    """Equal blocks collide whatever precedes them."""
    return chain_hash(None, token_ids, extra_key)


def test_parent_chain_is_verified_not_just_the_block() -> None:
    manager, _, ex, _ = make_manager(hash_fn=hash_ignoring_parent)
    # Sequence 1 caches [A][B]; sequence 2 shares block B's tokens after another A.
    manager.step(ex, [AllocateOp(1, [1, 1, 1, 1, 2, 2, 2, 2, 0]), ComputedOp(1, 8)])
    manager.step(ex, [AllocateOp(2, [7, 7, 7, 7, 2, 2, 2, 2, 0]), ComputedOp(2, 8)])
    # A third prompt [A'][B]: [A'] matches sequence 2's first block, [B] must not
    # match sequence 1's B, whose parent is a different block.
    result = manager.step(ex, [AllocateOp(3, [7, 7, 7, 7, 2, 2, 2, 2, 0])]).results[0]
    assert result.num_cached_tokens == 4
