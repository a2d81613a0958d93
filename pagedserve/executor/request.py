"""A request and its sequences as the executor's scheduler sees them.

A request owns one sequence per completion. A sequence carries its tokens (prompt
then output), how many of them have their KV in the pool, and its block table,
which mirrors the block manager's: the executor never allocates, it applies the
block ids it is given.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedserve.executor.beam_search import BeamSearch
    from pagedserve.executor.request_trace import RequestTrace


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORTED = "aborted"


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # no blocks yet (new, or preempted by recomputation)
    RUNNING = "running"  # has blocks; computes this step or the next
    SWAPPED = "swapped"  # preempted by swapping: its blocks are in the host swap pool
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    n: int = 1
    beam_width: int = 1
    # Ids that end a completion (the model's end-of-sequence ids included unless ignore_eos).
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False
    use_prefix_cache: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sequence:
    """One completion's tokens, KV progress and block table."""

    __slots__ = (
        "seq_id",
        "request",
        "index",
        "token_ids",
        "num_prompt_tokens",
        "num_computed_tokens",
        "num_tokens_at_blockmgr",
        "num_computed_reported",
        "block_ids",
        "swapped_block_ids",
        "status",
        "finish_reason",
        "cumulative_logprob",
        "generator",
        "pending_token_ids",
        "pending_logprobs",
    )

    def __init__(self, seq_id: int, request: Request, index: int, prompt_token_ids: list[int]):
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # Tokens whose K and V are written in the pool.
        self.num_computed_tokens = 0
        # Tokens the block manager holds slots for (0: it does not know this sequence).
        self.num_tokens_at_blockmgr = 0
        # The computed count last reported to the block manager (publishes prefix blocks).
        self.num_computed_reported = 0
        self.block_ids: list[int] = []
        # While swapped out: the device blocks it held. Forks swapped out in one
        # run share the host copies of the blocks they shared, and a run of
        # swap-ins shares them again (the scheduler's admission counts them once).
        self.swapped_block_ids: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        self.cumulative_logprob = 0.0
        self.generator: random.Random | None = None  # drawn tokens' seeds (sampler.py)
        # Output not yet sent to the gateway.
        self.pending_token_ids: list[int] = []
        self.pending_logprobs: list[float] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    def forget_blocks(self) -> None:
        """After a free: the block manager no longer holds anything of this sequence."""
        self.block_ids = []
        self.swapped_block_ids = []
        self.num_tokens_at_blockmgr = 0
        self.num_computed_tokens = 0
        self.num_computed_reported = 0

    def __repr__(self) -> str:
        return f"Sequence({self.seq_id}, {self.status.value}, tokens={self.num_tokens}, computed={self.num_computed_tokens})"


@dataclass(eq=False)
class Request:
    """A client request inside the executor; sink receives its events."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    sink: object
    arrival_index: int
    sequences: list[Sequence] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    # Whether the first event (which carries cached_prompt_tokens) was sent.
    announced: bool = False
    # Set when sampling.beam_width > 1: the search's state; its beams are `sequences`.
    beam_search: BeamSearch | None = None
    # Its span and phase times (request_trace.RequestTrace); None in unit tests.
    trace: RequestTrace | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (id(self.sink), self.request_id)

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.sequences)
