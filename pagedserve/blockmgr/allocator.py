"""Sequence-level block operations of one pool: the paper's verbs.

The allocator turns allocate / append / computed / fork / free / swap into
block-pool calls, records the copies the executor must perform, and logs every
change in the pool's Journal. It assumes its inputs were validated (see
step_ops.py); it only decides whether enough blocks exist, and when they do
not it returns NO_ROOM before changing anything.
"""

from __future__ import annotations

from collections.abc import Iterator

from pagedserve.blockmgr.block import Block
from pagedserve.blockmgr.block_pool import BlockPool
from pagedserve.blockmgr.journal import Journal
from pagedserve.blockmgr.ops import NO_ROOM, OK_EMPTY, OpResult, StepResult
from pagedserve.blockmgr.prefix_hash import ChainHashFn, extra_key_for
from pagedserve.blockmgr.sequence import HashState, Sequence
from pagedserve.blockmgr.swap_pool import HostSwapPool

Sequences = dict[int, Sequence]


class SequenceAllocator:
    """Block tables of every sequence in one pool, over its device and host pools."""

    def __init__(
        self,
        num_blocks: int,
        num_swap_blocks: int,
        block_size_tokens: int,
        model_key: str,
        hash_fn: ChainHashFn,
        extent_blocks: int = 1,
        group_extents: int = 1,
    ) -> None:
        self.journal = Journal()
        self._journal_entries = self.journal.entries  # direct, for the append hot path
        self.block_pool = BlockPool(num_blocks, self.journal, extent_blocks, group_extents)
        self.swap_pool = HostSwapPool(num_swap_blocks, self.journal)
        self.block_size_tokens = block_size_tokens
        # Longest sequence the pool could ever hold: longer is invalid, not short.
        self.max_sequence_tokens = num_blocks * block_size_tokens
        self.model_key = model_key
        self._hash_fn = hash_fn
        self._extra_keys: dict[str, str] = {}
        # Prefix-cache hit statistics, committed with each step.
        self.prompt_tokens_looked_up = 0
        self.prompt_tokens_hit = 0
        # Step-scoped state, replaced by begin_step.
        self._step = StepResult()
        self._copied_into: set[Block] = set()
        # The copies of the current run of consecutive swap-outs (or swap-ins)
        # in the step's ops, which later swaps of the run share: device block
        # id -> its host copy (a full block another sequence still held), and
        # host block id -> its device copy. The run: ("out" or "in", op index).
        self._host_copies: dict[int, int] = {}
        self._device_copies: dict[int, Block] = {}
        self._swap_run: tuple[str, int] | None = None
        self._step_tokens_looked_up = 0
        self._step_tokens_hit = 0

    # ---- step boundary ---------------------------------------------------

    def begin_step(self, step: StepResult) -> None:
        """Starts collecting copies into `step`; every change is logged until commit."""
        self._step = step
        self._copied_into = set()
        self._step_tokens_looked_up = 0
        self._step_tokens_hit = 0

    def release_held(self, held_blocks: list[Block], held_host_block_ids: list[int]) -> None:
        """First change of an executor's step: a new Step shows the executor
        performed the copies of its previous one, so what was held for them is
        free again (journaled like the ops)."""
        self.block_pool.release_held(held_blocks)
        self.swap_pool.release_held(held_host_block_ids)

    def commit(self, held_blocks: list[Block], held_host_block_ids: list[int]) -> None:
        """Makes the step's changes permanent. Blocks at either end of one of
        the step's copies that ended it unreferenced are then held in the
        executor's lists: another executor must not write them before this
        one has performed the copies."""
        self.journal.commit()
        self.prompt_tokens_looked_up += self._step_tokens_looked_up
        self.prompt_tokens_hit += self._step_tokens_hit
        step = self._step
        blocks = self.block_pool.blocks
        # Swap-out sources reversed, so that a sequence's tail is evicted first.
        device_ends = [
            *reversed(step.swap_out_device_block_ids),
            *step.swap_in_device_block_ids,
            *(
                block_id
                for pair in zip(step.copy_src_block_ids, step.copy_dst_block_ids, strict=True)
                for block_id in pair
            ),
        ]
        if device_ends:
            self.block_pool.hold([blocks[block_id] for block_id in device_ends], held_blocks)
        host_ends = [*step.swap_out_host_block_ids, *step.swap_in_host_block_ids]
        if host_ends:
            self.swap_pool.hold(host_ends, held_host_block_ids)
        self._finish_step()

    def rollback(self) -> None:
        """Undoes every change since begin_step."""
        self.journal.rollback()
        self._finish_step()

    def _finish_step(self) -> None:
        self.block_pool.finish_step()
        self.swap_pool.finish_step()
        self._copied_into = set()
        self._host_copies = {}
        self._device_copies = {}
        self._swap_run = None

    # ---- queries -----------------------------------------------------------

    def extra_key(self, cache_salt: str) -> str:
        """Extra hash key of a sequence with this salt (built once per salt)."""
        extra_key = self._extra_keys.get(cache_salt)
        if extra_key is None:
            extra_key = self._extra_keys[cache_salt] = extra_key_for(self.model_key, cache_salt)
        return extra_key

    def was_copied_into(self, seq: Sequence) -> bool:
        """True when a block of `seq` is the destination of a copy in this step."""
        copied_into = self._copied_into
        return any(block in copied_into for block in seq.block_table)

    def match_prefix(
        self, token_ids: list[int], extra_key: str
    ) -> tuple[list[Block], bytes | None]:
        """Cached blocks holding the prompt's leading full blocks, and the hash of
        the last one matched (None when none).

        Never matches the block holding the prompt's last token, so at least one
        token is left for the executor to compute logits from.
        """
        block_size = self.block_size_tokens
        matched: list[Block] = []
        parent_hash: bytes | None = None
        for index in range((len(token_ids) - 1) // block_size):
            block_tokens = tuple(token_ids[index * block_size : (index + 1) * block_size])
            block_hash = self._hash_fn(parent_hash, block_tokens, extra_key)
            block = self.block_pool.lookup(block_hash, parent_hash, block_tokens, extra_key)
            if block is None:
                break
            matched.append(block)
            parent_hash = block_hash
        return matched, parent_hash

    # ---- mutations -----------------------------------------------------------

    def allocate(
        self,
        sequences: Sequences,
        seq_id: int,
        token_ids: list[int],
        cache_salt: str,
        use_prefix_cache: bool,
    ) -> OpResult:
        """Creates a sequence: cached prefix blocks plus fresh ones for the rest.
        Takes ownership of `token_ids` (the caller passes a fresh list).
        Returns NO_ROOM (nothing changed) when the fresh blocks are not available."""
        pool = self.block_pool
        extra_key = self.extra_key(cache_salt)
        matched: list[Block] = []
        last_hash: bytes | None = None
        if use_prefix_cache:
            matched, last_hash = self.match_prefix(token_ids, extra_key)
        num_blocks = -(-len(token_ids) // self.block_size_tokens)
        # Matched blocks that sit in the free queue stop being allocatable once taken.
        num_revived = sum(1 for block in matched if block.ref_count == 0)
        if num_blocks - len(matched) > pool.num_allocatable - num_revived:
            return NO_ROOM
        for block in matched:
            pool.touch(block)
        table = list(matched)
        for _ in range(num_blocks - len(matched)):
            table.append(pool.take(table[-1] if table else None))
        seq = Sequence(seq_id, token_ids, extra_key, table)
        num_cached_tokens = len(matched) * self.block_size_tokens
        seq.num_computed_tokens = num_cached_tokens
        seq.num_hashed_blocks = len(matched)
        seq.last_block_hash = last_hash
        self._add_sequence(sequences, seq)
        if use_prefix_cache:
            self._step_tokens_looked_up += len(token_ids)
            self._step_tokens_hit += num_cached_tokens
        return OpResult(True, tuple(seq.block_ids()), num_cached_tokens=num_cached_tokens)

    def append(self, seq: Sequence, token_ids: list[int]) -> OpResult:
        """Adds tokens, taking new blocks as needed and copying a shared, partly
        filled last block on write. Returns NO_ROOM (nothing changed) when short."""
        pool = self.block_pool
        table = seq.block_table
        num_old_tokens = len(seq.token_ids)
        num_new_blocks = -(-(num_old_tokens + len(token_ids)) // self.block_size_tokens) - len(
            table
        )
        # Only a partly filled block gets written; a full shared block never is.
        copy_last = num_old_tokens % self.block_size_tokens != 0 and table[-1].ref_count > 1
        if num_new_blocks + copy_last > pool.num_allocatable:
            return NO_ROOM
        self._journal_entries.append((self._undo_append, seq, (num_old_tokens, len(table))))
        seq.token_ids.extend(token_ids)
        if not copy_last and not num_new_blocks:
            self._set_last_block_maybe_shared(seq, False)
            return OK_EMPTY
        replaced: tuple[int, ...] = ()
        replaced_ids: tuple[int, ...] = ()
        if copy_last:
            replaced, replaced_ids = self._copy_last_block(seq)
        new_blocks = []
        for _ in range(num_new_blocks):
            new_blocks.append(pool.take(table[-1]))
            table.append(new_blocks[-1])
        # The last block is now a new one, a copy, or was the sequence's own already.
        self._set_last_block_maybe_shared(seq, False)
        return OpResult(True, tuple(block.block_id for block in new_blocks), replaced, replaced_ids)

    def append_token_run(
        self, pairs: Iterator[tuple[Sequence | None, int]], results: list[OpResult]
    ) -> tuple[Sequence | None, int] | None:
        """The decode step's hot loop: takes (sequence, token id) pairs from
        `pairs` and appends each token for as long as the append is one of
        the two common cases of a live device sequence: its partly filled last
        block is its own (no block taken), or its last block is full and a free
        block is at hand (one block taken). Returns the first pair it left
        alone (None when pairs ran out), which cannot be applied without
        validation or a copy; the caller applies it the general way."""
        block_size = self.block_size_tokens
        max_tokens = self.max_sequence_tokens
        pool = self.block_pool
        log = self._journal_entries.append
        in_place: list[Sequence] = []  # one journal entry for a run of these
        for pair in pairs:
            seq, token_id = pair
            if seq is None or seq.host_block_ids is not None:
                break
            tokens = seq.token_ids
            num_tokens = len(tokens)
            if num_tokens >= max_tokens:
                break
            table = seq.block_table
            if num_tokens % block_size:
                if seq.last_block_maybe_shared:
                    break  # perhaps copy-on-write
                tokens.append(token_id)
                in_place.append(seq)
                continue
            if not pool.num_allocatable:
                break
            if in_place:  # keep the journal in order
                log((self._undo_append_run, in_place, None))
                results.extend([OK_EMPTY] * len(in_place))
                in_place = []
            log((self._undo_append, seq, (num_tokens, len(table))))
            tokens.append(token_id)
            block = pool.take(table[-1])
            table.append(block)
            results.append(OpResult(True, (block.block_id,)))
        else:
            pair = None
        if in_place:
            log((self._undo_append_run, in_place, None))
            results.extend([OK_EMPTY] * len(in_place))
        return pair

    def _copy_last_block(self, seq: Sequence) -> tuple[tuple[int], tuple[int]]:
        pool = self.block_pool
        position = len(seq.block_table) - 1
        source = seq.block_table[position]
        target = pool.take(seq.block_table[position - 1] if position else None)
        seq.block_table[position] = target
        self.journal.record(self._undo_replace, seq, (position, source))
        pool.release(source)
        pool.pin(source)
        pool.pin(target)
        self._copied_into.add(target)
        self._step.copy_src_block_ids.append(source.block_id)
        self._step.copy_dst_block_ids.append(target.block_id)
        return (position,), (target.block_id,)

    def computed(self, seq: Sequence, num_computed_tokens: int) -> OpResult:
        """Records computed tokens and registers newly computed full blocks in the
        prefix cache (the first registration of identical content is kept)."""
        self.journal.record(self._undo_hash_state, seq, seq.hash_state())
        seq.num_computed_tokens = num_computed_tokens
        block_size = self.block_size_tokens
        register = self.block_pool.register
        for index in range(seq.num_hashed_blocks, num_computed_tokens // block_size):
            block_tokens = tuple(seq.token_ids[index * block_size : (index + 1) * block_size])
            block_hash = self._hash_fn(seq.last_block_hash, block_tokens, seq.extra_key)
            block = seq.block_table[index]
            # A block that already has an entry was matched or shared through a
            # fork: its content is this prefix. Otherwise register it, unless
            # the hash is taken (then the first registration is kept).
            if block.cache_entry is None:
                register(block, block_hash, seq.last_block_hash, block_tokens, seq.extra_key)
            seq.num_hashed_blocks = index + 1
            seq.last_block_hash = block_hash
        return OK_EMPTY

    def fork(self, sequences: Sequences, parent: Sequence, child_seq_id: int) -> OpResult:
        """Creates a child sharing every block of the parent (never short of blocks)."""
        child = parent.fork(child_seq_id)
        for block in child.block_table:
            self.block_pool.touch(block)
        self._set_last_block_maybe_shared(parent, True)
        self._add_sequence(sequences, child)
        return OpResult(True, tuple(child.block_ids()))

    def free(self, sequences: Sequences, seq: Sequence) -> OpResult:
        """Releases the sequence; its blocks go back tail first, so that the
        sequence's last blocks are evicted before its first (shared-prefix) ones."""
        self._remove_sequence(sequences, seq)
        if seq.host_block_ids is not None:
            self.swap_pool.release(seq.host_block_ids)
        else:
            release = self.block_pool.release
            for block in reversed(seq.block_table):
                release(block)
        return OK_EMPTY

    def swap_out(self, seq: Sequence, op_index: int) -> OpResult:
        """Copies the sequence's blocks to host blocks and releases the device
        blocks. Returns NO_ROOM (nothing changed) when the host pool is short.

        A full block that an earlier swap-out of the same run of consecutive
        swap-outs (_continue_swap_run) shared with this sequence is not copied
        again: both name its one host copy (full blocks are never written, so
        it holds this sequence's keys too). A partly filled last block always
        gets a copy of its own."""
        host_copies = self._continue_swap_run("out", op_index, self._host_copies)
        table = seq.block_table
        num_full = len(seq.token_ids) // self.block_size_tokens
        shared = [
            index < num_full and block.block_id in host_copies for index, block in enumerate(table)
        ]
        fresh = self.swap_pool.allocate(len(table) - sum(shared))
        if fresh is None:
            return NO_ROOM
        fresh_ids = iter(fresh)
        host_block_ids = []
        for index, block in enumerate(table):
            if shared[index]:
                host_block_id = host_copies[block.block_id]
                self.swap_pool.share(host_block_id)
            else:
                host_block_id = next(fresh_ids)
                self._step.swap_out_device_block_ids.append(block.block_id)
                self._step.swap_out_host_block_ids.append(host_block_id)
                if index < num_full and block.ref_count > 1:
                    host_copies[block.block_id] = host_block_id
            host_block_ids.append(host_block_id)
        for block in reversed(table):
            self.block_pool.release(block)
        self.journal.record(self._undo_swap_out, seq, table)
        seq.block_table = []
        seq.host_block_ids = host_block_ids
        return OK_EMPTY

    def swap_in(self, seq: Sequence, op_index: int) -> OpResult:
        """Copies a swapped-out sequence back into fresh device blocks. Returns
        NO_ROOM (nothing changed) when the device pool is short.

        A host block that an earlier swap-in of the same run of consecutive
        swap-ins shared with this sequence is not copied again: both take its
        one device copy."""
        device_copies = self._continue_swap_run("in", op_index, self._device_copies)
        host_block_ids = seq.host_block_ids
        shared = [host_block_id in device_copies for host_block_id in host_block_ids]
        fresh = self.block_pool.allocate(len(host_block_ids) - sum(shared))
        if fresh is None:
            return NO_ROOM
        fresh_blocks = iter(fresh)
        table = []
        for host_block_id, is_shared in zip(host_block_ids, shared, strict=True):
            if is_shared:
                block = device_copies[host_block_id]
                self.block_pool.touch(block)
            else:
                block = next(fresh_blocks)
                self._step.swap_in_host_block_ids.append(host_block_id)
                self._step.swap_in_device_block_ids.append(block.block_id)
                self._copied_into.add(block)
                if self.swap_pool.ref_count(host_block_id) > 1:
                    device_copies[host_block_id] = block
            table.append(block)
        self.swap_pool.release_after_step(host_block_ids)
        self.journal.record(self._undo_swap_in, seq, (host_block_ids, seq.hash_state()))
        seq.block_table = table
        seq.host_block_ids = None
        # Fresh blocks carry no cache entries; the next computed op registers them
        # again, once the executor has copied the KV back.
        seq.reset_hash_progress()
        return OpResult(True, tuple(seq.block_ids()))

    def _continue_swap_run(self, kind: str, op_index: int, copies: dict) -> dict:
        """The copies shared within the run of consecutive swap ops of this
        kind that this op continues, or starts (emptied). The scheduler puts a
        request's swap-outs (or swap-ins) next to each other. Within such a
        run no op frees a sequence, takes a block or writes one, so a copy
        recorded there stays what it was: swap-outs only add references to
        host blocks, swap-ins only to device blocks."""
        if self._swap_run != (kind, op_index - 1):
            copies.clear()
        self._swap_run = (kind, op_index)
        return copies

    def _add_sequence(self, sequences: Sequences, seq: Sequence) -> None:
        sequences[seq.seq_id] = seq
        self.journal.record(self._undo_add_sequence, sequences, seq)

    def _remove_sequence(self, sequences: Sequences, seq: Sequence) -> None:
        del sequences[seq.seq_id]
        self.journal.record(self._undo_remove_sequence, sequences, seq)

    # ---- undo ----------------------------------------------------------------

    def _undo_append(self, seq: Sequence, lengths: tuple[int, int]) -> None:
        num_tokens, num_blocks = lengths
        del seq.token_ids[num_tokens:]
        del seq.block_table[num_blocks:]

    def _set_last_block_maybe_shared(self, seq: Sequence, value: bool) -> None:
        if seq.last_block_maybe_shared is not value:
            self.journal.record(
                self._undo_last_block_maybe_shared, seq, seq.last_block_maybe_shared
            )
            seq.last_block_maybe_shared = value

    @staticmethod
    def _undo_last_block_maybe_shared(seq: Sequence, value: bool) -> None:
        seq.last_block_maybe_shared = value

    @staticmethod
    def _undo_append_run(appended: list[Sequence], _unused: None) -> None:
        for seq in appended:  # each took exactly one token and no block
            del seq.token_ids[-1]

    def _undo_replace(self, seq: Sequence, replaced: tuple[int, Block]) -> None:
        position, block = replaced
        seq.block_table[position] = block

    def _undo_hash_state(self, seq: Sequence, state: HashState) -> None:
        seq.restore_hash_state(state)

    def _undo_swap_out(self, seq: Sequence, table: list[Block]) -> None:
        seq.block_table = table
        seq.host_block_ids = None

    def _undo_swap_in(self, seq: Sequence, swapped: tuple[list[int], HashState]) -> None:
        host_block_ids, state = swapped
        seq.host_block_ids = host_block_ids
        seq.block_table = []
        seq.restore_hash_state(state)

    def _undo_add_sequence(self, sequences: Sequences, seq: Sequence) -> None:
        del sequences[seq.seq_id]

    def _undo_remove_sequence(self, sequences: Sequences, seq: Sequence) -> None:
        sequences[seq.seq_id] = seq
