"""The host swap pool: plain ids on a free list, no sharing, no caching.

Swapping copies each sequence's blocks separately (a block shared by two forked
sequences gets one host copy per sequence), which keeps host blocks singly
owned: simple and always correct, at the cost of host space for forks.
"""

from __future__ import annotations

from collections import deque

from pagedserve.blockmgr.journal import Journal


class HostSwapPool:
    """Host blocks for swapped-out sequences."""

    def __init__(self, num_blocks: int, journal: Journal) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._journal = journal
        # Step-scoped: host blocks read by this step's swap-ins are released
        # only when the step ends, because the executor performs swap-outs
        # (which write host blocks) before swap-ins.
        self._deferred: list[int] = []

    @property
    def num_free(self) -> int:
        """Host blocks available now."""
        return len(self._free)

    @property
    def num_unavailable(self) -> int:
        """Host blocks not on the free list: in use, deferred or held."""
        return self.num_blocks - len(self._free)

    def allocate(self, num_blocks: int) -> list[int] | None:
        """Takes host blocks from the front of the free list; None when too few."""
        if num_blocks > len(self._free):
            return None
        free = self._free
        host_block_ids = [free.popleft() for _ in range(num_blocks)]
        self._journal.record(self._undo_allocate, host_block_ids)
        return host_block_ids

    def release(self, host_block_ids: list[int]) -> None:
        """Returns host blocks to the back of the free list."""
        self._free.extend(host_block_ids)
        self._journal.record(self._undo_release, len(host_block_ids))

    def release_after_step(self, host_block_ids: list[int]) -> None:
        """Returns host blocks when the step ends (they are swap-in sources)."""
        self._deferred.extend(host_block_ids)
        self._journal.record(self._undo_release_after_step, len(host_block_ids))

    def hold(self, candidates: list[int], held: list[int]) -> None:
        """After a commit: each candidate host block (an end of one of the
        step's swap copies) that ended the step free moves to the executor's
        `held` list, in candidate order, until its next step. Not journaled."""
        deferred = set(self._deferred)
        free = set(self._free)
        for host_block_id in candidates:
            if host_block_id in deferred:
                deferred.discard(host_block_id)
                self._deferred.remove(host_block_id)
            elif host_block_id in free:
                free.discard(host_block_id)
                self._free.remove(host_block_id)
            else:
                continue
            held.append(host_block_id)

    def release_held(self, held: list[int]) -> None:
        """Returns an executor's held host blocks to the free list. Journaled."""
        if not held:
            return
        host_block_ids = list(held)
        self._free.extend(host_block_ids)
        held.clear()
        self._journal.record(self._undo_release_held, held, host_block_ids)

    def _undo_release_held(self, held: list[int], host_block_ids: list[int]) -> None:
        for _ in host_block_ids:
            self._free.pop()
        held[:] = host_block_ids

    def finish_step(self) -> None:
        """Ends the step (after commit or rollback): deferred blocks become free."""
        self._free.extend(self._deferred)
        self._deferred.clear()

    def _undo_allocate(self, host_block_ids: list[int], _unused: None) -> None:
        self._free.extendleft(reversed(host_block_ids))

    def _undo_release(self, count: int, _unused: None) -> None:
        for _ in range(count):
            self._free.pop()

    def _undo_release_after_step(self, count: int, _unused: None) -> None:
        del self._deferred[len(self._deferred) - count :]
