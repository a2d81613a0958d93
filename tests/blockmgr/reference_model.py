"""A deliberately plain model of one pool's block state, for the property test.

Written separately from the implementation and as simply as possible: lists
for queues (O(n) removal is fine here), a dict from the *full* token prefix to
the block caching it instead of chained hashes, and all-or-nothing steps by
working on a deep copy. It predicts exact block ids, results and errors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

ERROR_NOT_FOUND = "not_found"
ERROR_EXISTS = "already_exists"
ERROR_PRECONDITION = "failed_precondition"
ERROR_INVALID = "invalid_argument"


class ModelError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class ModelSeq:
    tokens: list[int]
    salt: str
    table: list[int]
    host: list[int] | None = None
    computed: int = 0
    offered: int = 0  # full blocks already offered to the cache


@dataclass
class ModelExecutor:
    deadline_s: float
    lease_s: float
    seqs: dict[int, ModelSeq] = field(default_factory=dict)
    # Unreferenced ends of the last step's copies, kept from other executors.
    held: list[int] = field(default_factory=list)
    held_host: list[int] = field(default_factory=list)


@dataclass
class ModelStep:
    results: list[tuple] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    swap_outs: list[tuple[int, int]] = field(default_factory=list)
    swap_ins: list[tuple[int, int]] = field(default_factory=list)


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


class ModelPool:
    def __init__(
        self, num_blocks: int, block_size: int, num_swap: int, extent: int = 1, group: int = 1
    ) -> None:
        self.n = num_blocks
        self.bs = block_size
        self.extent = extent
        self.group = group if extent > 1 else 1  # extents a run may grow through
        self.ref = [0] * num_blocks
        self.free = list(range(num_blocks))
        # Extents whose every block is in `free`, in the order they got there.
        self.free_extents = list(range(ceil_div(num_blocks, extent)))
        # Open groups' leading extents (it and the next wholly free), in the
        # order they opened.
        num_extents = len(self.free_extents)
        self.open_groups = [
            leading
            for leading in range(0, num_extents, group)
            if self.group > 1 and leading + 1 < num_extents
        ]
        self.content: dict[int, tuple] = {}  # block -> (salt, full prefix tokens)
        self.cache: dict[tuple, int] = {}  # (salt, full prefix tokens) -> block
        self.host_free = list(range(num_swap))
        self.host_ref: dict[int, int] = {}  # host block -> swapped sequences naming it
        self.executors: dict[str, ModelExecutor] = {}
        self.looked_up = 0
        self.hit = 0
        # Step-scoped.
        self.pinned: set[int] = set()
        self.deferred: list[int] = []
        self.host_deferred: list[int] = []
        self.written: set[int] = set()
        # Copies shared within a run of consecutive swap-outs (or swap-ins).
        self.host_copies: dict[int, int] = {}  # full block swapped out, still shared -> host
        self.device_copies: dict[int, int] = {}  # shared host block swapped in -> device
        self.swap_run: tuple[str, int] | None = None  # ("out" or "in", op index)

    # ---- blocks --------------------------------------------------------

    def leads_open_group(self, extent: int) -> bool:
        """Its group is open: it leads the group, and it and the next extent
        are wholly free."""
        return (
            self.group > 1
            and extent % self.group == 0
            and extent + 1 in self.free_extents
            and extent in self.free_extents
        )

    def group_opened_by(self, extent: int) -> int | None:
        """The open group's leading extent that wholly free `extent` holds
        open: itself, or the one before it; else None."""
        if extent % self.group == 0 and self.leads_open_group(extent):
            return extent
        if extent % self.group == 1 and self.leads_open_group(extent - 1):
            return extent - 1
        return None

    def take(self, after: int | None = None) -> int:
        """Placement: the block after `after` if free and in the same extent,
        or the first of a wholly free extent in the same group; else, after
        `after`, the first block of the group open the longest, and for a new
        sequence the first block of the oldest wholly free extent that does
        not lead an open group; else of the oldest; else the LRU head."""
        following = None if after is None else after + 1
        outside = [extent for extent in self.free_extents if not self.leads_open_group(extent)]
        if following in self.free and (
            following % self.extent
            or (
                following // self.extent % self.group
                and following // self.extent in self.free_extents
            )
        ):
            block = following
        elif after is not None and self.open_groups:
            block = self.open_groups[0] * self.extent
        elif after is None and outside:
            block = outside[0] * self.extent
        elif self.free_extents:
            block = self.free_extents[0] * self.extent
        else:
            block = self.free[0]
        self.unfree(block)
        if block in self.content:
            del self.cache[self.content.pop(block)]
        self.ref[block] = 1
        return block

    def take_run(self, count: int, after: int | None = None) -> list[int]:
        blocks = []
        for _ in range(count):
            after = self.take(after)
            blocks.append(after)
        return blocks

    def add_free(self, blocks: list[int]) -> None:
        for block in blocks:
            self.free.append(block)
            extent = block // self.extent
            members = range(extent * self.extent, min(self.n, (extent + 1) * self.extent))
            if all(member in self.free for member in members):
                self.free_extents.append(extent)
                opened = self.group_opened_by(extent)
                if opened is not None:
                    self.open_groups.append(opened)

    def unfree(self, block: int) -> None:
        self.free.remove(block)
        extent = block // self.extent
        if extent in self.free_extents:
            closed = self.group_opened_by(extent)
            if closed is not None:
                self.open_groups.remove(closed)
            self.free_extents.remove(extent)

    def release(self, block: int) -> None:
        self.ref[block] -= 1
        if self.ref[block] == 0:
            if block in self.pinned:
                self.deferred.append(block)
            else:
                self.add_free([block])

    # ---- executors -------------------------------------------------------

    def live(self, executor_id: str, now_s: float) -> ModelExecutor:
        executor = self.executors.get(executor_id)
        if executor is None:
            raise ModelError(ERROR_NOT_FOUND)
        if now_s > executor.deadline_s:
            self.drop(executor_id)
            raise ModelError(ERROR_NOT_FOUND)
        return executor

    def drop(self, executor_id: str) -> None:
        executor = self.executors.pop(executor_id)
        self.add_free(executor.held)
        self.host_free += executor.held_host
        for seq_id in sorted(executor.seqs):
            self.op_free(executor.seqs, seq_id)
        self.end_step()

    def register(self, executor_id: str, now_s: float, lease_s: float) -> None:
        if executor_id in self.executors:
            self.drop(executor_id)
        self.executors[executor_id] = ModelExecutor(now_s + lease_s, lease_s)

    def expire(self, now_s: float) -> list[str]:
        expired = [eid for eid, e in self.executors.items() if now_s > e.deadline_s]
        for executor_id in expired:
            self.drop(executor_id)
        return expired

    # ---- step ---------------------------------------------------------------

    def step(self, executor_id: str, now_s: float, ops: list[tuple]) -> ModelStep:
        """Applies ops all or nothing; raises ModelError (state untouched) on bad input."""
        self.live(executor_id, now_s)
        trial = copy.deepcopy(self)
        executor = trial.executors[executor_id]
        trial.add_free(executor.held)
        trial.host_free += executor.held_host
        executor.held, executor.held_host = [], []
        out = ModelStep()
        for op in ops:
            out.results.append(getattr(trial, "op_" + op[0])(executor.seqs, *op[1:], out=out))
        trial.hold(executor, out)
        trial.end_step()
        self.__dict__.update(trial.__dict__)
        return out

    def hold(self, executor: ModelExecutor, out: ModelStep) -> None:
        """Copy ends that ended the step unreferenced wait for the executor's next step."""
        ends = [d for d, _ in reversed(out.swap_outs)] + [d for _, d in out.swap_ins]
        ends += [block for pair in out.copies for block in pair]
        for block in ends:
            if self.ref[block] or block in executor.held:
                continue
            if block in self.deferred:
                self.deferred.remove(block)
                executor.held.append(block)
            elif block in self.free:
                self.unfree(block)
                executor.held.append(block)
        for host in [h for _, h in out.swap_outs] + [h for h, _ in out.swap_ins]:
            for place in (self.host_deferred, self.host_free):
                if host in place:
                    place.remove(host)
                    executor.held_host.append(host)
                    break

    def end_step(self) -> None:
        self.add_free(self.deferred)
        self.host_free.extend(self.host_deferred)
        self.deferred, self.host_deferred = [], []
        self.pinned, self.written = set(), set()
        self.host_copies, self.device_copies, self.swap_run = {}, {}, None

    def _seq(self, seqs: dict[int, ModelSeq], seq_id: int, on_device: bool = True) -> ModelSeq:
        if seq_id not in seqs:
            raise ModelError(ERROR_NOT_FOUND)
        if on_device and seqs[seq_id].host is not None:
            raise ModelError(ERROR_PRECONDITION)
        return seqs[seq_id]

    def _check_tokens(self, old: int, tokens: list[int]) -> None:
        if not tokens or old + len(tokens) > self.n * self.bs:
            raise ModelError(ERROR_INVALID)

    def op_allocate(self, seqs, seq_id, tokens, salt, use_cache, out=None):
        if seq_id in seqs:
            raise ModelError(ERROR_EXISTS)
        self._check_tokens(0, tokens)
        matched = []
        if use_cache:
            for i in range((len(tokens) - 1) // self.bs):
                block = self.cache.get((salt, tuple(tokens[: (i + 1) * self.bs])))
                if block is None:
                    break
                matched.append(block)
        fresh = ceil_div(len(tokens), self.bs) - len(matched)
        if fresh > len(self.free) - sum(1 for b in matched if self.ref[b] == 0):
            return (False, (), (), (), 0)
        for block in matched:
            if self.ref[block] == 0:
                holders = [e.held for e in self.executors.values() if block in e.held]
                if holders:
                    holders[0].remove(block)
                else:
                    self.unfree(block)
            self.ref[block] += 1
        table = matched + self.take_run(fresh, matched[-1] if matched else None)
        cached = len(matched) * self.bs
        seqs[seq_id] = ModelSeq(list(tokens), salt, table, computed=cached, offered=len(matched))
        if use_cache:
            self.looked_up += len(tokens)
            self.hit += cached
        return (True, tuple(table), (), (), cached)

    def op_append(self, seqs, seq_id, tokens, out=None):
        seq = self._seq(seqs, seq_id)
        self._check_tokens(len(seq.tokens), tokens)
        old = len(seq.tokens)
        needed = ceil_div(old + len(tokens), self.bs) - len(seq.table)
        cow = old % self.bs != 0 and self.ref[seq.table[-1]] > 1
        if needed + cow > len(self.free):
            return (False, (), (), (), 0)
        seq.tokens += tokens
        replaced_pos, replaced_ids = (), ()
        if cow:
            src = seq.table[-1]
            dst = self.take(seq.table[-2] if len(seq.table) > 1 else None)
            seq.table[-1] = dst
            self.pinned |= {src, dst}
            self.written.add(dst)
            self.release(src)
            out.copies.append((src, dst))
            replaced_pos, replaced_ids = (len(seq.table) - 1,), (dst,)
        new = self.take_run(needed, seq.table[-1])
        seq.table += new
        return (True, tuple(new), replaced_pos, replaced_ids, 0)

    def op_computed(self, seqs, seq_id, count, out=None):
        seq = self._seq(seqs, seq_id)
        if count > len(seq.tokens) or count < seq.computed:
            raise ModelError(ERROR_PRECONDITION)
        seq.computed = count
        for i in range(seq.offered, count // self.bs):
            key = (seq.salt, tuple(seq.tokens[: (i + 1) * self.bs]))
            block = seq.table[i]
            if block not in self.content and key not in self.cache:
                self.content[block] = key
                self.cache[key] = block
            seq.offered = i + 1
        return (True, (), (), (), 0)

    def op_fork(self, seqs, parent_id, child_id, out=None):
        parent = self._seq(seqs, parent_id)
        if child_id in seqs:
            raise ModelError(ERROR_EXISTS)
        child = copy.deepcopy(parent)
        seqs[child_id] = child
        for block in child.table:
            if self.ref[block] == 0:
                self.unfree(block)
            self.ref[block] += 1
        return (True, tuple(child.table), (), (), 0)

    def op_free(self, seqs, seq_id, out=None):
        seq = self._seq(seqs, seq_id, on_device=False)
        del seqs[seq_id]
        if seq.host is not None:
            for host in seq.host:
                self.host_ref[host] -= 1
                if not self.host_ref[host]:
                    self.host_free.append(host)
        else:
            for block in reversed(seq.table):
                self.release(block)
        return (True, (), (), (), 0)

    def op_swap_out(self, seqs, seq_id, out=None):
        """Full blocks copied out earlier in this run of swap-outs, still
        shared then: that copy."""
        seq = self._seq(seqs, seq_id)
        if any(block in self.written for block in seq.table):
            raise ModelError(ERROR_PRECONDITION)
        if self.swap_run != ("out", len(out.results) - 1):
            self.host_copies = {}
        self.swap_run = ("out", len(out.results))
        full = len(seq.tokens) // self.bs
        reuse = [i < full and b in self.host_copies for i, b in enumerate(seq.table)]
        if len(seq.table) - sum(reuse) > len(self.host_free):
            return (False, (), (), (), 0)
        hosts = []
        for i, block in enumerate(seq.table):
            if reuse[i]:
                host = self.host_copies[block]
                self.host_ref[host] += 1
            else:
                host = self.host_free.pop(0)
                self.host_ref[host] = 1
                out.swap_outs.append((block, host))
                if i < full and self.ref[block] > 1:
                    self.host_copies[block] = host
            hosts.append(host)
        for block in reversed(seq.table):
            self.release(block)
        seq.table, seq.host = [], hosts
        return (True, (), (), (), 0)

    def op_swap_in(self, seqs, seq_id, out=None):
        """Host blocks copied in earlier in this run of swap-ins: that device
        block, shared."""
        seq = self._seq(seqs, seq_id, on_device=False)
        if seq.host is None:
            raise ModelError(ERROR_PRECONDITION)
        if self.swap_run != ("in", len(out.results) - 1):
            self.device_copies = {}
        self.swap_run = ("in", len(out.results))
        reuse = [host in self.device_copies for host in seq.host]
        if len(seq.host) - sum(reuse) > len(self.free):
            return (False, (), (), (), 0)
        fresh = iter(self.take_run(len(seq.host) - sum(reuse)))
        blocks = []
        for host, reused in zip(seq.host, reuse, strict=True):
            if reused:
                block = self.device_copies[host]
                self.ref[block] += 1
            else:
                block = next(fresh)
                out.swap_ins.append((host, block))
                self.written.add(block)
                if self.host_ref[host] > 1:
                    self.device_copies[host] = block
            blocks.append(block)
        for host in seq.host:
            self.host_ref[host] -= 1
            if not self.host_ref[host]:
                self.host_deferred.append(host)
        seq.table, seq.host, seq.offered = blocks, None, 0
        return (True, tuple(blocks), (), (), 0)

    # ---- observations -------------------------------------------------------

    def all_seqs(self) -> list[ModelSeq]:
        return [seq for e in self.executors.values() for seq in e.seqs.values()]

    def counts(self) -> dict[str, int]:
        used = [b for b in range(self.n) if self.ref[b] > 0]
        cached = sum(1 for b in self.content if self.ref[b] == 0)
        return {
            "free": self.n - len(used) - cached,
            "used": len(used),
            "cached": cached,
            "shared": sum(1 for b in used if self.ref[b] > 1),
            "logical": sum(self.ref),
        }
