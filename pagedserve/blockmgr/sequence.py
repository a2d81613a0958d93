"""One sequence's tokens, block table and prefix-hash progress."""

from __future__ import annotations

from pagedserve.blockmgr.block import Block

# (num_computed_tokens, num_hashed_blocks, last_block_hash)
HashState = tuple[int, int, bytes | None]


class Sequence:
    """A live sequence of one executor.

    On the device, `block_table[i]` holds tokens [i * block_size, (i + 1) * block_size).
    Swapped out, `block_table` is empty and `host_block_ids` holds the same
    positions in the host pool; `host_block_ids` is None exactly when the
    sequence is on the device.

    The hash fields track how far the sequence's full computed blocks have been
    offered to the prefix cache: blocks below `num_hashed_blocks` have been
    (registered, or found already cached), the last of them hashing to
    `last_block_hash`, the parent hash of the next block.

    `last_block_maybe_shared` is False only when a partly filled last block
    is the sequence's own (ref count 1); a full last block may be shared
    through the prefix cache whatever the flag says, and is never written.
    Only a fork shares a block that is not full, so a fork sets the flag on
    both sides and an append that leaves the last block the sequence's own
    clears it. The decode step's hot loop reads this flag rather than the
    block before writing into a partly filled one, one memory access fewer
    per sequence.
    """

    # The decode step's hot loop reads the first three: declared first, they
    # share the object's first cache line.
    __slots__ = (
        "token_ids",
        "host_block_ids",
        "last_block_maybe_shared",
        "block_table",
        "seq_id",
        "extra_key",
        "num_computed_tokens",
        "num_hashed_blocks",
        "last_block_hash",
    )

    def __init__(
        self, seq_id: int, token_ids: list[int], extra_key: str, block_table: list[Block]
    ) -> None:
        self.seq_id = seq_id
        self.token_ids = token_ids
        self.extra_key = extra_key
        self.block_table = block_table
        self.host_block_ids: list[int] | None = None
        self.num_computed_tokens = 0
        self.num_hashed_blocks = 0
        self.last_block_hash: bytes | None = None
        self.last_block_maybe_shared = False

    @property
    def is_swapped(self) -> bool:
        """True while the sequence's blocks live in the host swap pool."""
        return self.host_block_ids is not None

    def block_ids(self) -> list[int]:
        """Device block ids of the table, in order (empty when swapped out)."""
        return [block.block_id for block in self.block_table]

    def fork(self, child_seq_id: int) -> Sequence:
        """A copy with the same tokens, table and hash progress (refs not touched)."""
        child = Sequence(child_seq_id, list(self.token_ids), self.extra_key, list(self.block_table))
        child.num_computed_tokens = self.num_computed_tokens
        child.num_hashed_blocks = self.num_hashed_blocks
        child.last_block_hash = self.last_block_hash
        child.last_block_maybe_shared = True
        return child

    def hash_state(self) -> HashState:
        """Computed count and hash progress, to restore on undo."""
        return (self.num_computed_tokens, self.num_hashed_blocks, self.last_block_hash)

    def restore_hash_state(self, state: HashState) -> None:
        """Inverse of hash_state."""
        self.num_computed_tokens, self.num_hashed_blocks, self.last_block_hash = state

    def reset_hash_progress(self) -> None:
        """Forgets registrations (the blocks were replaced, e.g. after a swap-in);
        the next computed op registers the blocks again."""
        self.num_hashed_blocks = 0
        self.last_block_hash = None
