"""The executor's step loop: schedule, copy, forward, sample, emit; one thread, next to the device.

Requests and cancellations arrive from gRPC threads through a queue and are
taken in between steps, so the scheduler's state is touched by this thread only.
Each step's output goes to each sink (one per gateway stream) as ONE batch.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import grpc
import torch

from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.request import FinishReason, Request, SamplingOptions, Sequence
from pagedserve.executor.sampler import make_generator, sample
from pagedserve.executor.scheduler import Scheduler, StepPlan

log = logging.getLogger(__name__)

# How long the loop sleeps when a step could place nothing (the pool is full of
# other executors' blocks), so it does not spin on the block manager.
_IDLE_BACKOFF_S = 0.005


@dataclass
class SequenceEvent:
    """What one step produced for one completion (plain type; the service converts it)."""

    request_id: str
    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    cumulative_logprob: float = 0.0
    cached_prompt_tokens: int = 0
    error_code: grpc.StatusCode | None = None
    error_message: str = ""


class RequestRejected(ValueError):
    """A request the executor can never serve; carries the gRPC status for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class _Submit:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    sink: object


@dataclass
class _Cancel:
    request_id: str
    sink: object


@dataclass
class _CancelSink:
    sink: object


class Engine:
    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        vocab_size: int,
        max_context_tokens: int,
    ):
        self.scheduler = scheduler
        self.runner = runner
        self.vocab_size = vocab_size
        self.max_context_tokens = max_context_tokens
        self._inbox: queue.Queue = queue.Queue()
        self._requests: dict[tuple[int, str], Request] = {}
        self._seq_ids = itertools.count(1)
        self._arrivals = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.num_steps = 0

    # ---- called from other threads ----

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout_s)

    def submit(
        self, request_id: str, prompt_token_ids: list[int], sampling: SamplingOptions, sink
    ) -> None:
        self._inbox.put(_Submit(request_id, prompt_token_ids, sampling, sink))

    def cancel(self, request_id: str, sink) -> None:
        self._inbox.put(_Cancel(request_id, sink))

    def cancel_sink(self, sink) -> None:
        """The sink's stream closed: abort all of its requests."""
        self._inbox.put(_CancelSink(sink))

    def num_active_requests(self) -> int:
        return len(self._requests)

    # ---- the loop thread ----

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox(block=not self.scheduler.has_work())
            if self._stop.is_set() or not self.scheduler.has_work():
                continue
            try:
                self._step()
            except Exception as error:  # noqa: BLE001 - one bad step must not kill the executor
                log.exception("step failed; failing all active requests")
                self._fail_all(grpc.StatusCode.INTERNAL, f"executor step failed: {error}")

    def _drain_inbox(self, block: bool) -> None:
        try:
            message = self._inbox.get(block=block)
            while True:
                self._handle(message)
                message = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _handle(self, message) -> None:
        if isinstance(message, _Submit):
            self._admit(message)
        elif isinstance(message, _Cancel):
            request = self._requests.get((id(message.sink), message.request_id))
            if request is not None:
                self._end(request, FinishReason.ABORTED)
        elif isinstance(message, _CancelSink):
            for request in [r for r in self._requests.values() if r.sink is message.sink]:
                self._end(request, FinishReason.ABORTED, notify=False)

    def _admit(self, message: _Submit) -> None:
        key = (id(message.sink), message.request_id)
        try:
            self._check(message, key)
        except RequestRejected as rejected:
            event = SequenceEvent(
                message.request_id, 0, error_code=rejected.code, error_message=str(rejected)
            )
            message.sink.deliver([event])
            return
        request = Request(
            message.request_id,
            message.prompt_token_ids,
            message.sampling,
            message.sink,
            next(self._arrivals),
        )
        self._new_sequence(request, 0, message.prompt_token_ids)
        self._requests[key] = request
        self.scheduler.add(request)

    def _check(self, message: _Submit, key) -> None:
        """Raises RequestRejected for a request that can never run here."""
        sampling, prompt = message.sampling, message.prompt_token_ids
        if key in self._requests:
            raise RequestRejected(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {message.request_id!r} is already running",
            )
        if sampling.n != 1 or sampling.beam_width != 1:
            raise RequestRejected(
                grpc.StatusCode.UNIMPLEMENTED,
                "sampling.n and sampling.beam_width above 1 are not served yet",
            )
        if not prompt:
            raise RequestRejected(grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids is empty")
        if max(prompt) >= self.vocab_size:
            raise RequestRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prompt_token_ids: {max(prompt)} is outside the vocabulary of {self.vocab_size}",
            )
        total_tokens = len(prompt) + sampling.max_tokens
        if total_tokens > self.max_context_tokens:
            raise RequestRejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prompt ({len(prompt)} tokens) plus max_tokens ({sampling.max_tokens}) exceeds the model's context of {self.max_context_tokens}",
            )
        if self.scheduler.blocks_needed(total_tokens) > self.scheduler.config.num_blocks:
            raise RequestRejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"prompt plus max_tokens needs {self.scheduler.blocks_needed(total_tokens)} KV blocks; the whole pool has {self.scheduler.config.num_blocks}",
            )

    def _end(self, request: Request, reason: FinishReason, notify: bool = True) -> None:
        self.scheduler.finish_request(request, reason)
        self._requests.pop(request.key, None)
        if notify:
            request.sink.deliver([self._event(request, seq) for seq in request.sequences])

    def _fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for request in list(self._requests.values()):
            self.scheduler.finish_request(request, FinishReason.ABORTED)
            self._requests.pop(request.key, None)
            request.sink.deliver(
                [SequenceEvent(request.request_id, 0, error_code=code, error_message=message)]
            )

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        self.num_steps += 1
        if plan.copy_src_block_ids:
            self.runner.copy_blocks(plan.copy_src_block_ids, plan.copy_dst_block_ids)
        if not plan.chunks:
            time.sleep(_IDLE_BACKOFF_S)
            return
        self._emit(self._forward_and_sample(plan))

    def _forward_and_sample(self, plan: StepPlan) -> list[Sequence]:
        """Runs the step; returns the sequences that got a token."""
        inputs = self.runner.prepare(plan.chunks)
        logits = self.runner.run(inputs)
        for chunk in plan.chunks:
            chunk.seq.num_computed_tokens += chunk.num_new_tokens
        if logits is None:
            return []
        seqs = [chunk.seq for chunk in inputs.sampled_chunks]
        rows = list(range(len(seqs)))
        # Parallel sampling: the first token of every sample comes from the prompt's
        # one prefill; the other samples are forked from it and share its blocks.
        for row, seq in enumerate(list(seqs)):
            if seq.request.sampling.n > len(seq.request.sequences):
                children = self._spawn_samples(seq)
                seqs.extend(children)
                rows.extend([row] * len(children))
        if len(rows) > logits.shape[0]:
            logits = logits[torch.tensor(rows, device=logits.device)]
        with torch.inference_mode():
            token_ids, logprobs = sample(
                logits, [seq.request.sampling for seq in seqs], [seq.generator for seq in seqs]
            )
        for seq, token_id, logprob in zip(seqs, token_ids, logprobs, strict=True):
            self.scheduler.update(seq, token_id, logprob, self.max_context_tokens)
        return seqs

    def _new_sequence(self, request: Request, index: int, token_ids: list[int]) -> Sequence:
        seq = Sequence(next(self._seq_ids), request, index, token_ids)
        seq.num_prompt_tokens = len(request.prompt_token_ids)
        if not request.sampling.greedy:
            seq.generator = make_generator(request.sampling.seed + index, self.runner.device)
        request.sequences.append(seq)
        return seq

    def _spawn_samples(self, parent: Sequence) -> list[Sequence]:
        request = parent.request
        children = []
        for index in range(len(request.sequences), request.sampling.n):
            child = self._new_sequence(request, index, parent.token_ids)
            self.scheduler.fork(parent, child)
            children.append(child)
        return children

    def _emit(self, seqs: list[Sequence]) -> None:
        by_sink: dict[int, tuple[object, list[SequenceEvent]]] = {}
        for seq in seqs:
            if not seq.pending_token_ids:
                continue
            request = seq.request
            by_sink.setdefault(id(request.sink), (request.sink, []))[1].append(
                self._event(request, seq)
            )
            if request.is_finished:
                self._requests.pop(request.key, None)
        for sink, events in by_sink.values():
            sink.deliver(events)

    @staticmethod
    def _event(request: Request, seq: Sequence) -> SequenceEvent:
        event = SequenceEvent(
            request.request_id,
            seq.index,
            token_ids=seq.pending_token_ids,
            logprobs=seq.pending_logprobs if request.sampling.logprobs else [],
            finish_reason=seq.finish_reason,
            cumulative_logprob=seq.cumulative_logprob,
        )
        if not request.announced:
            event.cached_prompt_tokens = request.cached_prompt_tokens
            request.announced = True
        seq.pending_token_ids, seq.pending_logprobs = [], []
        return event
