"""Plain Python types of one Step: the operations and their outcomes.

These mirror the proto messages field for field (see blockmgr.proto for the
semantics of each); the core works only on these, `convert.py` translates.
Results are immutable so that the very common "ok, nothing to report" outcome
can be one shared object instead of a fresh one per op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple


@dataclass(frozen=True, slots=True)
class AllocateOp:
    """A new sequence; its prompt is matched against the prefix cache."""

    kind: ClassVar[str] = "allocate"

    seq_id: int
    token_ids: Sequence[int]
    cache_salt: str = ""
    use_prefix_cache: bool = True


@dataclass(frozen=True, slots=True)
class AppendOp:
    """New tokens of a running sequence."""

    kind: ClassVar[str] = "append"

    seq_id: int
    token_ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class ComputedOp:
    """Tokens whose KV is now written, counted from the start."""

    kind: ClassVar[str] = "computed"

    seq_id: int
    num_computed_tokens: int


@dataclass(frozen=True, slots=True)
class ForkOp:
    """A child sharing all of the parent's blocks."""

    kind: ClassVar[str] = "fork"

    parent_seq_id: int
    child_seq_id: int


@dataclass(frozen=True, slots=True)
class FreeOp:
    """Releases a sequence (device or swapped)."""

    kind: ClassVar[str] = "free"

    seq_id: int


@dataclass(frozen=True, slots=True)
class SwapOutOp:
    """Moves a sequence's blocks to the host swap pool."""

    kind: ClassVar[str] = "swap_out"

    seq_id: int


@dataclass(frozen=True, slots=True)
class SwapInOp:
    """Moves a swapped-out sequence back to device blocks."""

    kind: ClassVar[str] = "swap_in"

    seq_id: int


@dataclass(frozen=True, slots=True)
class AppendBatchOp:
    """One token appended to each of many sequences: exactly the AppendOps
    (seq_ids[i], [token_ids[i]]) in order, packed for the decode step. It
    yields one OpResult per sequence and counts as that many ops in op indices."""

    kind: ClassVar[str] = "append_batch"

    seq_ids: Sequence[int]
    token_ids: Sequence[int]


BlockOp = (
    AllocateOp | AppendOp | ComputedOp | ForkOp | FreeOp | SwapOutOp | SwapInOp | AppendBatchOp
)


class OpResult(NamedTuple):
    """Outcome of one op; `ok` is False only when blocks ran out (nothing changed).
    A NamedTuple rather than a frozen dataclass: as immutable, and several
    times cheaper to build, which matters at one result per op."""

    ok: bool
    new_block_ids: tuple[int, ...] = ()
    replaced_positions: tuple[int, ...] = ()
    replaced_block_ids: tuple[int, ...] = ()
    num_cached_tokens: int = 0


# Shared outcomes: most appends and every computed/free op report nothing else.
OK_EMPTY = OpResult(ok=True)
NO_ROOM = OpResult(ok=False)


@dataclass(slots=True)
class StepResult:
    """Outcome of one Step: per-op results plus the copies the executor must do.

    The executor performs, before its next forward pass and in this order:
    all swap-outs (device -> host), then all swap-ins (host -> device), then
    the copy-on-write copies in list order. The manager never hands out a block
    within a step in a way that this order would read stale data (see
    docs/blockmgr.md, "copy hazards").
    """

    results: list[OpResult] = field(default_factory=list)
    copy_src_block_ids: list[int] = field(default_factory=list)
    copy_dst_block_ids: list[int] = field(default_factory=list)
    swap_out_device_block_ids: list[int] = field(default_factory=list)
    swap_out_host_block_ids: list[int] = field(default_factory=list)
    swap_in_host_block_ids: list[int] = field(default_factory=list)
    swap_in_device_block_ids: list[int] = field(default_factory=list)
    num_free_blocks: int = 0
