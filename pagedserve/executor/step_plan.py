"""What one scheduling step decided: the tokens to run and the block copies to make first."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedserve.executor.request import Sequence


@dataclass
class ScheduledChunk:
    """Tokens [start, start + num_new_tokens) of seq run this step."""

    seq: Sequence
    start: int
    num_new_tokens: int

    @property
    def needs_logits(self) -> bool:
        """The chunk reaches the sequence's last token: the next token is sampled from it."""
        return self.start + self.num_new_tokens == self.seq.num_tokens


@dataclass
class BlockCopies:
    """The copies one Step call asked for, made in the order the block manager keeps
    safe: swap-outs first (their device blocks may be handed out again by this very
    call), then swap-ins, then copy-on-write copies within the device."""

    swap_out_device_block_ids: list[int] = field(default_factory=list)
    swap_out_host_block_ids: list[int] = field(default_factory=list)
    copy_src_block_ids: list[int] = field(default_factory=list)
    copy_dst_block_ids: list[int] = field(default_factory=list)
    swap_in_host_block_ids: list[int] = field(default_factory=list)
    swap_in_device_block_ids: list[int] = field(default_factory=list)

    @classmethod
    def from_response(cls, response) -> BlockCopies:
        """From a blockmgr StepResponse."""
        return cls(
            list(response.swap_out_device_block_ids),
            list(response.swap_out_host_block_ids),
            list(response.copy_src_block_ids),
            list(response.copy_dst_block_ids),
            list(response.swap_in_host_block_ids),
            list(response.swap_in_device_block_ids),
        )

    def __bool__(self) -> bool:
        return bool(
            self.swap_out_device_block_ids or self.copy_src_block_ids or self.swap_in_host_block_ids
        )


@dataclass
class StepPlan:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    # One entry per Step call made for this step, in call order.
    copies: list[BlockCopies] = field(default_factory=list)
    num_preempted: int = 0
