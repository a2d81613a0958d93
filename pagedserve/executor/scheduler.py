"""Iteration-level scheduling: which tokens of which sequences run in the next forward pass.

Every step, requests may join (first come, first served, while blocks and the
token budget allow) and finished ones leave. Running decodes go first (one token
each), then prefill chunks, so a long prompt is spread over several steps
instead of stalling the decodes (chunked prefill).

All block decisions of a step travel in ONE Step call to the block manager, in
this order: computed-progress reports and frees (so freed blocks can be reused
by this same step), forks, appends of running sequences, admissions (new
allocations and swap-ins). Only when an append finds no block does the
scheduler preempt the latest arrived request and make one more call. A
preempted request goes back to the front of the queue, either without blocks
(recompute: its tokens are computed again on resumption; the default) or with
its blocks copied to the host swap pool (swap).
"""

from __future__ import annotations

import bisect
import collections
import logging
from dataclasses import dataclass, field

from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.executor.request import FinishReason, Request, Sequence, SequenceStatus
from pagedserve.executor.step_plan import BlockCopies, ScheduledChunk, StepPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size_tokens: int
    num_blocks: int
    # Blocks kept free when admitting, so running sequences can grow without preemption.
    watermark_blocks: int
    preemption_mode: str = "recompute"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# What the block manager leaves out of a sparse response: ok and nothing else.
_BARE_OK = pb.OpResult(ok=True)


@dataclass
class _Call:
    """One Step call being built, and what to do with each op's result (by result index)."""

    request: pb.StepRequest
    block_size_tokens: int
    num_results: int = 0  # an append_batch op has one result per sequence
    appends: list[tuple[int, Sequence]] = field(default_factory=list)
    forks: list[tuple[int, Sequence]] = field(default_factory=list)
    admissions: list[tuple[int, Request, list[Sequence]]] = field(default_factory=list)
    swap_outs: list[tuple[int, Sequence]] = field(default_factory=list)

    def add_op(self) -> pb.BlockOp:
        """A new op at the end of the call; its result index is num_results - 1."""
        self.num_results += 1
        return self.request.ops.add()

    def add_computed(self, seq: Sequence) -> None:
        """Reports progress when a full block was completed since the last report.

        Full computed blocks are all the block manager does anything with (it
        publishes them to the prefix cache), so a decode step reports for one
        sequence in block_size_tokens rather than for every sequence."""
        block_size = self.block_size_tokens
        if seq.num_computed_tokens // block_size > seq.num_computed_reported // block_size:
            op = self.add_op().computed
            op.seq_id = seq.seq_id
            op.num_computed_tokens = seq.num_computed_tokens
            seq.num_computed_reported = seq.num_computed_tokens

    def add_appends(self, seqs: list[Sequence]) -> None:
        """Appends each sequence's tokens that the block manager does not hold
        yet: one append_batch op for every sequence with one new token (the
        decode step), an append op for each other."""
        one_token: list[Sequence] = []
        for seq in seqs:
            if seq.num_tokens - seq.num_tokens_at_blockmgr == 1:
                one_token.append(seq)
                continue
            self.appends.append((self.num_results, seq))
            op = self.add_op().append
            op.seq_id = seq.seq_id
            op.token_ids.extend(seq.token_ids[seq.num_tokens_at_blockmgr :])
        if not one_token:
            return
        batch = self.request.ops.add().append_batch
        batch.seq_ids.extend([seq.seq_id for seq in one_token])
        batch.token_ids.extend([seq.token_ids[-1] for seq in one_token])
        for seq in one_token:
            self.appends.append((self.num_results, seq))
            self.num_results += 1


def _dense_results(response: pb.StepResponse) -> list[pb.OpResult]:
    """Every op's result, by index: the listed ones, a bare ok for the rest.
    A block manager that predates sparse results answers densely (and
    without num_results)."""
    if not response.result_indices and len(response.results) >= response.num_results:
        return list(response.results)
    results = [_BARE_OK] * response.num_results
    for index, result in zip(response.result_indices, response.results, strict=True):
        results[index] = result
    return results


class Scheduler:
    def __init__(self, config: SchedulerConfig, executor_id: str, step_call):
        """step_call(pb.StepRequest) -> pb.StepResponse reaches the block manager."""
        self.config = config
        self.executor_id = executor_id
        self._step_call = step_call
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []  # in arrival order
        self._released: list[Sequence] = []  # freed at the next call
        self._pending_forks: list[
            tuple[Sequence, Sequence]
        ] = []  # (parent, child), at the next call
        self._free_blocks = config.num_blocks
        self.num_preemptions_total = 0

    # ---- queries ----

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._released or self._pending_forks)

    def num_active_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    def blocks_needed(self, num_tokens: int) -> int:
        return _ceil_div(num_tokens, self.config.block_size_tokens)

    # ---- request lifecycle ----

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def finish_request(self, request: Request, reason: FinishReason) -> None:
        """Ends every unfinished sequence of request (abort, error); blocks go at the next call."""
        for seq in request.sequences:
            if not seq.is_finished:
                self._finish(seq, reason)
        self._drop(request)

    def finish_sequence(self, seq: Sequence, reason: FinishReason) -> None:
        """Ends one sequence (a pruned beam); the request ends with its last sequence."""
        self._finish(seq, reason)
        if seq.request.is_finished:
            self._drop(seq.request)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child (already in parent's request) shares parent's blocks from the next call on."""
        child.status = SequenceStatus.RUNNING
        child.num_computed_tokens = parent.num_computed_tokens
        self._pending_forks.append((parent, child))

    @staticmethod
    def extend_beam(seq: Sequence, token_id: int, cumulative_logprob: float) -> None:
        """A beam goes on with token_id; beam search, not the stop rules, decides when it ends."""
        seq.token_ids.append(token_id)
        seq.cumulative_logprob = cumulative_logprob

    def update(self, seq: Sequence, token_id: int, logprob: float, max_context_tokens: int) -> None:
        """Appends a sampled token and ends the sequence if it should stop."""
        seq.token_ids.append(token_id)
        seq.cumulative_logprob += logprob
        seq.pending_token_ids.append(token_id)
        seq.pending_logprobs.append(logprob)
        options = seq.request.sampling
        if token_id in options.stop_token_ids:
            self._finish(seq, FinishReason.STOP)
        elif seq.num_output_tokens >= options.max_tokens or seq.num_tokens >= max_context_tokens:
            self._finish(seq, FinishReason.LENGTH)
        if seq.request.is_finished:
            self._drop(seq.request)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        holds_blocks = seq.num_tokens_at_blockmgr > 0
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if holds_blocks:
            self._released.append(seq)

    def _drop(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)

    # ---- the step ----

    def schedule(self) -> StepPlan:
        """Decides this step's tokens and makes the block-manager calls they need."""
        plan = StepPlan()
        call = self._new_call()
        self._add_forks(call)
        running = list(self._running_sequences())
        for seq in running:
            call.add_computed(seq)
        call.add_appends([seq for seq in running if seq.num_tokens > seq.num_tokens_at_blockmgr])
        self._add_admissions(call, running)
        failed = self._send(call, plan)
        if failed:
            plan.num_preempted = self._preempt_until_appended(failed, plan)
        plan.chunks = self._plan_chunks()
        return plan

    def _new_call(self) -> _Call:
        """A call that starts with the pending frees (after their final progress report)."""
        request = pb.StepRequest(executor_id=self.executor_id, sparse_results=True)
        call = _Call(request, self.config.block_size_tokens)
        for seq in self._released:
            call.add_computed(seq)
            call.add_op().free.seq_id = seq.seq_id
            seq.forget_blocks()
        self._released.clear()
        return call

    def _send(self, call: _Call, plan: StepPlan) -> list[Sequence]:
        """Makes the call, applies its results; returns the sequences whose append found no block."""
        response = self._step_call(call.request)
        results = _dense_results(response)
        self._free_blocks = response.num_free_blocks
        plan.copies.append(BlockCopies.from_response(response))
        for index, child in call.forks:
            child.block_ids = list(results[index].new_block_ids)
        for index, seq in call.swap_outs:
            if results[index].ok:
                seq.swapped_block_ids, seq.block_ids = seq.block_ids, []
            else:  # no room on the host: fall back to recomputation
                seq.status = SequenceStatus.WAITING
                self._released.append(seq)
        failed = [seq for index, seq in call.appends if not self._apply_append(seq, results[index])]
        not_admitted = [
            request
            for index, request, seqs in call.admissions
            if not self._apply_admission(request, seqs, results[index:])
        ]
        self.waiting.extendleft(reversed(not_admitted))  # still first in line, in their order
        return failed

    def _add_forks(self, call: _Call) -> None:
        # Before any append: a child must not inherit its parent's newest token.
        for parent, child in self._pending_forks:
            if child.is_finished:
                continue  # aborted before it ever held a block
            call.forks.append((call.num_results, child))
            # The child holds what the parent holds now; its own tokens append after.
            child.num_tokens_at_blockmgr = parent.num_tokens_at_blockmgr
            op = call.add_op().fork
            op.parent_seq_id = parent.seq_id
            op.child_seq_id = child.seq_id
        self._pending_forks.clear()

    def _running_sequences(self):
        for running_request in self.running:
            for seq in running_request.sequences:
                if seq.status is SequenceStatus.RUNNING:
                    yield seq

    def _blocks_to_admit(self, seqs: list[Sequence]) -> int:
        """Device blocks an admission takes, its sequences' next tokens included.

        A fresh sequence needs its whole table (prefix-cache hits not counted).
        A request's swapped sequences went out in one run of swap-outs and come
        back in one run of swap-ins: a block they shared is one host copy and
        comes back as one device block. Each then grows by its own blocks, and
        one whose last block is partly filled and shared copies it on its next
        append."""
        needed = 0
        swapped_blocks: collections.Counter[int] = collections.Counter()
        for seq in seqs:
            if seq.status is SequenceStatus.SWAPPED:
                swapped_blocks.update(seq.swapped_block_ids)
            needed += self.blocks_needed(seq.num_tokens) - len(seq.swapped_block_ids)
        block_size = self.config.block_size_tokens
        for seq in seqs:
            last = seq.swapped_block_ids[-1] if seq.swapped_block_ids else None
            if last is not None and seq.num_tokens_at_blockmgr % block_size:
                needed += 1 if swapped_blocks[last] > 1 else 0  # its copy on write
        return needed + len(swapped_blocks)

    def _add_admissions(self, call: _Call, running: list[Sequence]) -> None:
        """running: the sequences running before this call, in arrival order."""
        token_demand = sum(seq.num_tokens - seq.num_computed_tokens for seq in running)
        token_budget = self.config.max_num_batched_tokens - token_demand
        # Each running sequence may need one more block for this step's append.
        free_blocks = self._free_blocks - len(running)
        num_running = len(self.running)
        while (
            self.waiting
            and token_budget > 0
            and num_running + len(call.admissions) < self.config.max_num_seqs
        ):
            candidate = self.waiting[0]
            # Swap-ins first, in one run (they share the blocks they shared), then allocations.
            seqs = [s for s in candidate.sequences if s.status is SequenceStatus.SWAPPED]
            seqs += [s for s in candidate.sequences if s.status is SequenceStatus.WAITING]
            needed = self._blocks_to_admit(seqs)
            if needed + self.config.watermark_blocks > free_blocks and (
                self.running or call.admissions
            ):
                break  # wait for running requests to free blocks
            self.waiting.popleft()
            free_blocks -= needed
            token_budget -= sum(seq.num_tokens - seq.num_computed_tokens for seq in seqs)
            call.admissions.append((call.num_results, candidate, seqs))
            for seq in seqs:
                if seq.status is SequenceStatus.SWAPPED:
                    call.add_op().swap_in.seq_id = seq.seq_id
                    continue
                op = call.add_op().allocate
                op.seq_id = seq.seq_id
                op.token_ids.extend(seq.token_ids)
                op.use_prefix_cache = candidate.sampling.use_prefix_cache

    @staticmethod
    def _apply_append(seq: Sequence, result: pb.OpResult) -> bool:
        if not result.ok:
            return False
        seq.block_ids.extend(result.new_block_ids)
        for position, block_id in zip(
            result.replaced_positions, result.replaced_block_ids, strict=True
        ):
            seq.block_ids[position] = block_id
        seq.num_tokens_at_blockmgr = seq.num_tokens
        return True

    def _apply_admission(self, request: Request, seqs: list[Sequence], results) -> bool:
        """All of the request's sequences get blocks, or none keeps any (they recompute); False if none."""
        results = list(results[: len(seqs)])
        if not all(result.ok for result in results):
            for seq, result in zip(seqs, results, strict=True):
                if not result.ok:
                    continue  # unchanged: still waiting, or still swapped out
                # What the others' failure made useless goes back; this one recomputes.
                seq.num_tokens_at_blockmgr = seq.num_tokens
                self._released.append(seq)
                seq.status = SequenceStatus.WAITING
                seq.block_ids = []
            return False
        for seq, result in zip(seqs, results, strict=True):
            seq.block_ids = list(result.new_block_ids)
            seq.swapped_block_ids = []
            if (
                seq.status is SequenceStatus.WAITING
            ):  # a fresh allocation; a swap-in keeps its progress
                seq.num_tokens_at_blockmgr = seq.num_tokens
                seq.num_computed_tokens = result.num_cached_tokens
                seq.num_computed_reported = result.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
        if not request.announced:
            request.cached_prompt_tokens = results[0].num_cached_tokens
        # Arrival order, so that preemption always picks the latest arrival.
        bisect.insort(self.running, request, key=lambda r: r.arrival_index)
        return True

    def _preempt_until_appended(self, failed: list[Sequence], plan: StepPlan) -> int:
        """Preempts the latest arrivals until every failed append has its blocks."""
        num_preempted = 0
        while failed:
            victim = self.running[-1]
            num_preempted += 1
            failed = [seq for seq in failed if seq.request is not victim]
            call = self._new_call()
            self._preempt(victim, call)
            call.add_appends(failed)
            failed = self._send(call, plan)
        self.num_preemptions_total += num_preempted
        return num_preempted

    def _preempt(self, request: Request, call: _Call) -> None:
        mode = self.config.preemption_mode
        log.info("preempting request %s (%s): KV blocks ran out", request.request_id, mode)
        if request.trace is not None:
            request.trace.preempted(mode)
        self.running.remove(request)
        for seq in request.sequences:
            if seq.status is not SequenceStatus.RUNNING:
                continue
            if mode == "swap" and seq.num_tokens_at_blockmgr:
                seq.status = SequenceStatus.SWAPPED
                call.swap_outs.append((call.num_results, seq))
                call.add_op().swap_out.seq_id = seq.seq_id
            else:
                seq.status = SequenceStatus.WAITING
                call.add_computed(seq)  # computed blocks stay in the prefix cache
                call.add_op().free.seq_id = seq.seq_id
                seq.forget_blocks()
        self.waiting.appendleft(request)

    def _plan_chunks(self) -> list[ScheduledChunk]:
        """Decodes first (one token each), then prefill chunks in arrival order."""
        chunks = []
        token_budget = self.config.max_num_batched_tokens
        prefills = []
        for seq in self._running_sequences():
            # Only tokens that have a slot: a sequence swapped in this step gets the
            # slot for its newest token from the next step's append.
            remaining = seq.num_tokens_at_blockmgr - seq.num_computed_tokens
            if remaining == 1 and token_budget > 0:
                chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, 1))
                token_budget -= 1
            elif remaining > 1:
                prefills.append(seq)
        for seq in prefills:
            num_new = min(seq.num_tokens_at_blockmgr - seq.num_computed_tokens, token_budget)
            if num_new <= 0:
                break
            chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, num_new))
            token_budget -= num_new
        return chunks
