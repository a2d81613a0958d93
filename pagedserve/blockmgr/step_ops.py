"""Validation of each Step op, then dispatch to the allocator.

Ops arrive tagged with their kind ("append", ...) and a body that has the
op's fields as attributes: a dataclass from ops.py, or, at the service edge,
the protobuf sub-message itself, whose field names are the same. This saves
building an object per op on the hot path.

Each applier checks everything that can make its op invalid *before* the op
changes anything, raises a typed error naming the op's index and field, and
otherwise appends the op's result. The op index is the number of results so
far, so an append batch counts as one op per sequence. The manager undoes the
earlier ops of the step when one raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pagedserve.blockmgr.allocator import SequenceAllocator, Sequences
from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    op_error,
)
from pagedserve.blockmgr.ops import OpResult
from pagedserve.blockmgr.sequence import Sequence

Results = list[OpResult]


def _live(sequences: Sequences, op_index: int, field: str, seq_id: int) -> Sequence:
    seq = sequences.get(seq_id)
    if seq is None:
        raise op_error(NotFoundError, op_index, f"{field}: no live sequence {seq_id}")
    return seq


def _on_device(sequences: Sequences, op_index: int, field: str, seq_id: int) -> Sequence:
    seq = _live(sequences, op_index, field, seq_id)
    if seq.host_block_ids is not None:
        raise op_error(
            FailedPreconditionError, op_index, f"{field}: sequence {seq_id} is swapped out"
        )
    return seq


def _check_new_tokens(
    allocator: SequenceAllocator, op_index: int, field: str, num_old_tokens: int, token_ids: Any
) -> None:
    if not token_ids:
        raise op_error(InvalidArgumentError, op_index, f"{field}: no tokens")
    limit = allocator.max_sequence_tokens
    if num_old_tokens + len(token_ids) > limit:
        raise op_error(
            InvalidArgumentError,
            op_index,
            f"{field}: {num_old_tokens + len(token_ids)} tokens exceed the pool's {limit} token slots",
        )


def apply_allocate(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Allocate: NOT an error when short of blocks (NO_ROOM)."""
    op_index = len(results)
    if op.seq_id in sequences:
        raise op_error(
            AlreadyExistsError, op_index, f"allocate.seq_id: sequence {op.seq_id} is live"
        )
    _check_new_tokens(allocator, op_index, "allocate.token_ids", 0, op.token_ids)
    results.append(
        allocator.allocate(
            sequences, op.seq_id, list(op.token_ids), op.cache_salt, op.use_prefix_cache
        )
    )


def _append_one(
    allocator: SequenceAllocator,
    sequences: Sequences,
    results: Results,
    seq_id: int,
    token_ids: Any,
    field: str,
) -> None:
    # The hot path of a decode step: checks inline, errors built only on failure.
    seq = sequences.get(seq_id)
    if (
        seq is None
        or seq.host_block_ids is not None
        or not token_ids
        or len(seq.token_ids) + len(token_ids) > allocator.max_sequence_tokens
    ):
        op_index = len(results)
        seq = _on_device(sequences, op_index, f"{field}.seq_id", seq_id)
        _check_new_tokens(allocator, op_index, f"{field}.token_ids", len(seq.token_ids), token_ids)
    results.append(allocator.append(seq, token_ids))


def apply_append(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Append to a device-resident sequence."""
    _append_one(allocator, sequences, results, op.seq_id, op.token_ids, "append")


def apply_append_batch(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """One token to each sequence, as that many AppendOps."""
    # Plain lists: indexing a protobuf repeated field costs several times more.
    seq_ids = list(op.seq_ids)
    token_ids = list(op.token_ids)
    if len(seq_ids) != len(token_ids):
        raise op_error(
            InvalidArgumentError,
            len(results),
            f"append_batch: {len(seq_ids)} seq_ids but {len(token_ids)} token_ids",
        )
    first_result = len(results)
    pairs = zip(map(sequences.get, seq_ids), token_ids, strict=True)  # lengths checked above
    while (left := allocator.append_token_run(pairs, results)) is not None:
        seq_id = seq_ids[len(results) - first_result]
        _append_one(allocator, sequences, results, seq_id, [left[1]], "append_batch")


def apply_computed(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Computed count must stay within the sequence and never go backwards."""
    op_index = len(results)
    seq = _on_device(sequences, op_index, "computed.seq_id", op.seq_id)
    count = op.num_computed_tokens
    if count > len(seq.token_ids):
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"computed.num_computed_tokens: {count} exceeds the sequence's {len(seq.token_ids)} tokens",
        )
    if count < seq.num_computed_tokens:
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"computed.num_computed_tokens: {count} is below the {seq.num_computed_tokens} already computed",
        )
    results.append(allocator.computed(seq, count))


def apply_fork(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """The child id must be new; the parent live and on the device."""
    op_index = len(results)
    parent = _on_device(sequences, op_index, "fork.parent_seq_id", op.parent_seq_id)
    if op.child_seq_id in sequences:
        raise op_error(
            AlreadyExistsError, op_index, f"fork.child_seq_id: sequence {op.child_seq_id} is live"
        )
    results.append(allocator.fork(sequences, parent, op.child_seq_id))


def apply_free(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Free a live sequence (device or swapped); a second free is NOT_FOUND."""
    seq = _live(sequences, len(results), "free.seq_id", op.seq_id)
    results.append(allocator.free(sequences, seq))


def apply_swap_out(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Swap out a device sequence none of whose blocks this step already wrote by a copy."""
    op_index = len(results)
    seq = _on_device(sequences, op_index, "swap_out.seq_id", op.seq_id)
    if allocator.was_copied_into(seq):
        # The executor performs swap-outs before the other copies of a step, so
        # the swap-out would read the block before this step's copy fills it.
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"swap_out.seq_id: sequence {op.seq_id} holds a block copied into earlier in this step",
        )
    results.append(allocator.swap_out(seq, len(results)))


def apply_swap_in(
    allocator: SequenceAllocator, sequences: Sequences, results: Results, op: Any
) -> None:
    """Swap in a swapped-out sequence."""
    op_index = len(results)
    seq = _live(sequences, op_index, "swap_in.seq_id", op.seq_id)
    if seq.host_block_ids is None:
        raise op_error(
            FailedPreconditionError,
            op_index,
            f"swap_in.seq_id: sequence {op.seq_id} is not swapped out",
        )
    results.append(allocator.swap_in(seq, len(results)))


OpApplier = Callable[[SequenceAllocator, Sequences, Results, Any], None]

APPLIERS: dict[str, OpApplier] = {
    "allocate": apply_allocate,
    "append": apply_append,
    "append_batch": apply_append_batch,
    "computed": apply_computed,
    "fork": apply_fork,
    "free": apply_free,
    "swap_out": apply_swap_out,
    "swap_in": apply_swap_in,
}


def apply_tagged_ops(
    allocator: SequenceAllocator, sequences: Sequences, tagged_ops: Any, results: Results
) -> None:
    """Applies (kind, body) pairs in order, appending to `results`. Raises
    InvalidArgumentError for a kind that is unknown or None (no op set)."""
    appliers = APPLIERS
    for kind, body in tagged_ops:
        applier = appliers.get(kind)
        if applier is None:
            raise op_error(InvalidArgumentError, len(results), f"no operation set ({kind!r})")
        applier(allocator, sequences, results, body)
