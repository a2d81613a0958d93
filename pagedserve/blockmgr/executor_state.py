"""An attached executor: its lease and its sequences."""

from __future__ import annotations

from pagedserve.blockmgr.block import Block
from pagedserve.blockmgr.sequence import Sequence


class ExecutorState:
    """One executor attached to one pool. Sequence ids are private to it."""

    __slots__ = (
        "executor_id",
        "pool_id",
        "lease_ms",
        "lease_deadline_s",
        "sequences",
        "held_blocks",
        "held_host_block_ids",
    )

    def __init__(self, executor_id: str, pool_id: str, lease_ms: int, now_s: float) -> None:
        self.executor_id = executor_id
        self.pool_id = pool_id
        self.lease_ms = lease_ms
        self.lease_deadline_s = now_s + lease_ms / 1000.0
        self.sequences: dict[int, Sequence] = {}
        # Unreferenced blocks that are ends of copies of this executor's last
        # step, kept from other executors until its next step (see BlockPool.hold).
        self.held_blocks: list[Block] = []
        self.held_host_block_ids: list[int] = []

    def renew(self, now_s: float) -> None:
        """Extends the lease by its full length from now."""
        self.lease_deadline_s = now_s + self.lease_ms / 1000.0

    def is_expired(self, now_s: float) -> bool:
        """True once the lease deadline has passed."""
        return now_s > self.lease_deadline_s
