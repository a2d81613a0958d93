"""The host swap pool: plain ids on a free list, with reference counts.

A host block's reference count is the number of swapped-out sequences whose
tables name it. Sequences swapped out by one run of consecutive ops share the
host copy of each full device block they shared (the scheduler preempts a
request's forks together), and swapped in together they share its one device
copy again (allocator.py).
No caching: a host block that loses its last reference is free.
"""

from __future__ import annotations

from collections import deque

from pagedserve.blockmgr.journal import Journal


class HostSwapPool:
    """Host blocks for swapped-out sequences."""

    def __init__(self, num_blocks: int, journal: Journal) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        # Swapped-out sequences naming each host block (0: free, deferred or held).
        self._ref_count = [0] * num_blocks
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

    def ref_count(self, host_block_id: int) -> int:
        """How many swapped-out sequences name this host block."""
        return self._ref_count[host_block_id]

    def allocate(self, num_blocks: int) -> list[int] | None:
        """Takes host blocks from the front of the free list, each referenced
        once; None when too few."""
        if num_blocks > len(self._free):
            return None
        free = self._free
        host_block_ids = [free.popleft() for _ in range(num_blocks)]
        for host_block_id in host_block_ids:
            self._ref_count[host_block_id] = 1
        self._journal.record(self._undo_allocate, host_block_ids)
        return host_block_ids

    def share(self, host_block_id: int) -> None:
        """One more swapped-out sequence names this referenced host block."""
        self._ref_count[host_block_id] += 1
        self._journal.record(self._undo_share, host_block_id)

    def release(self, host_block_ids: list[int]) -> None:
        """Drops one reference of each; those left unreferenced go to the back
        of the free list."""
        self._free.extend(self._drop_references(host_block_ids))

    def release_after_step(self, host_block_ids: list[int]) -> None:
        """Drops one reference of each; those left unreferenced are freed when
        the step ends (they are swap-in sources)."""
        self._deferred.extend(self._drop_references(host_block_ids, deferred=True))

    def _drop_references(self, host_block_ids: list[int], deferred: bool = False) -> list[int]:
        ref_count = self._ref_count
        unreferenced = []
        for host_block_id in host_block_ids:
            ref_count[host_block_id] -= 1
            if not ref_count[host_block_id]:
                unreferenced.append(host_block_id)
        self._journal.record(
            self._undo_drop_references, host_block_ids, (len(unreferenced), deferred)
        )
        return unreferenced

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
        for host_block_id in host_block_ids:
            self._ref_count[host_block_id] = 0
        self._free.extendleft(reversed(host_block_ids))

    def _undo_share(self, host_block_id: int, _unused: None) -> None:
        self._ref_count[host_block_id] -= 1

    def _undo_drop_references(self, host_block_ids: list[int], freed: tuple[int, bool]) -> None:
        count, deferred = freed
        place = self._deferred if deferred else self._free
        for _ in range(count):
            place.pop()
        for host_block_id in host_block_ids:
            self._ref_count[host_block_id] += 1
