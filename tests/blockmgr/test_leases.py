"""Pool registry, executor registration and lease expiry with an injected clock."""

from __future__ import annotations

import pytest

from pagedserve.blockmgr.errors import InvalidArgumentError, NotFoundError
from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.ops import AllocateOp, ComputedOp, FreeOp
from pagedserve.blockmgr.pool_info import DeviceKind, PoolInfo

from .helpers import FakeClock, make_manager, make_pool_info


def test_lease_expiry_frees_everything_and_drops_the_executor() -> None:
    manager, pool_id, ex, clock = make_manager()
    manager.step(ex, [AllocateOp(1, list(range(9))), ComputedOp(1, 8), AllocateOp(2, [1])])
    clock.now_s += 9.0
    assert manager.expire_leases() == []
    assert manager.heartbeat(ex) == 10_000
    clock.now_s += 9.9
    assert manager.expire_leases() == []
    clock.now_s += 0.2
    assert manager.expire_leases() == [ex]
    stats = manager.get_stats(pool_id)
    assert (stats.used_blocks, stats.num_sequences, stats.num_executors) == (0, 0, 0)
    assert stats.cached_blocks == 2  # computed blocks stay findable
    with pytest.raises(NotFoundError):
        manager.heartbeat(ex)


def test_expired_lease_is_seen_by_the_next_call_before_the_reaper() -> None:
    manager, pool_id, ex, clock = make_manager()
    manager.step(ex, [AllocateOp(1, [1])])
    clock.now_s += 11
    with pytest.raises(NotFoundError, match="expired"):
        manager.step(ex, [FreeOp(1)])
    assert manager.get_stats(pool_id).used_blocks == 0


def test_expire_leases_accepts_an_explicit_time() -> None:
    manager, _, ex, clock = make_manager()
    assert manager.expire_leases(clock.now_s + 5) == []
    assert manager.expire_leases(clock.now_s + 10.5) == [ex]


def test_unregister_and_reregister_start_afresh() -> None:
    manager, pool_id, ex, _ = make_manager()
    manager.step(ex, [AllocateOp(1, [1]), AllocateOp(2, [2])])
    again = manager.register_executor(pool_id, executor_id=ex, lease_ms=500)
    assert again.executor_id == ex and again.lease_ms == 500
    assert manager.sequences(ex) == {}
    assert manager.get_stats(pool_id).used_blocks == 0
    manager.step(ex, [AllocateOp(1, [1])])
    assert manager.unregister_executor(ex) == 1
    with pytest.raises(NotFoundError):
        manager.unregister_executor(ex)


def test_register_pool_validates_and_lists() -> None:
    manager = BlockManager(clock=FakeClock())
    with pytest.raises(InvalidArgumentError, match="num_blocks"):
        manager.register_pool(PoolInfo(DeviceKind.CPU, num_blocks=0, block_size_tokens=4))
    with pytest.raises(InvalidArgumentError, match="block_size_tokens"):
        manager.register_pool(PoolInfo(DeviceKind.CPU, num_blocks=4, block_size_tokens=0))
    first = manager.register_pool(make_pool_info())
    second = manager.register_pool(make_pool_info(num_blocks=16))
    assert first != second
    assert [p.pool_id for p in manager.list_pools()] == [first, second]
    ex = manager.register_executor(second).executor_id
    (listed,) = manager.list_pools(second)
    assert listed.executor_ids == (ex,) and listed.num_blocks == 16
    with pytest.raises(NotFoundError):
        manager.list_pools("pool-404")
    with pytest.raises(NotFoundError):
        manager.register_executor("pool-404")
    with pytest.raises(InvalidArgumentError, match="lease_ms"):
        manager.register_executor(first, lease_ms=10**9)


def test_can_allocate_watermark() -> None:
    manager, pool_id, ex, _ = make_manager(num_blocks=4)
    assert manager.can_allocate(pool_id, 4)
    manager.step(ex, [AllocateOp(1, list(range(12)))])
    assert manager.can_allocate(pool_id, 1) and not manager.can_allocate(pool_id, 2)
    assert manager.num_free_blocks(pool_id) == 1
