"""The executor's step loop: schedule, copy, forward, sample, emit; one thread, next to the device.

Requests and cancellations arrive from gRPC threads through a queue and are
taken in between steps, so the scheduler's state is touched by this thread only.
Each step's output goes to each sink (one per gateway stream) as ONE batch.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import grpc
import torch

from pagedserve.executor.admission_check import RequestRejected, check_request
from pagedserve.executor.beam_search import BeamSearch
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.outputs import (
    SequenceEvent,
    aborted_events,
    beam_events,
    error_event,
    sequence_event,
)
from pagedserve.executor.request import (
    FinishReason,
    Request,
    SamplingOptions,
    Sequence,
    SequenceStatus,
)
from pagedserve.executor.request_trace import (
    PREEMPTIONS,
    REQUESTS_RUNNING,
    REQUESTS_SWAPPED,
    REQUESTS_WAITING,
    STEP_DURATION,
    RequestTrace,
    link_step_requests,
    start_step_span,
)
from pagedserve.executor.sampler import make_generator, sample
from pagedserve.executor.scheduler import Scheduler
from pagedserve.executor.step_plan import StepPlan

log = logging.getLogger(__name__)

# How long the loop sleeps when a step could place nothing (the pool is full of
# other executors' blocks), so it does not spin on the block manager.
_IDLE_BACKOFF_S = 0.005
_FAILURE_BACKOFF_S = 0.5


@dataclass
class _Submit:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    sink: object
    trace_context: dict[str, str]


@dataclass
class _Cancel:
    request_id: str
    sink: object


@dataclass
class _CancelSink:
    sink: object


class Engine:
    def __init__(
        self, scheduler: Scheduler, runner: ModelRunner, vocab_size: int, max_context_tokens: int
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
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingOptions,
        sink,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        """sink.deliver(list[SequenceEvent]) is called from the engine thread, once per step at
        most. trace_context: the W3C headers of the request's caller span (may be empty)."""
        self._inbox.put(_Submit(request_id, prompt_token_ids, sampling, sink, trace_context or {}))

    def cancel(self, request_id: str, sink) -> None:
        self._inbox.put(_Cancel(request_id, sink))

    def cancel_sink(self, sink) -> None:
        """The sink's stream closed: abort all of its requests."""
        self._inbox.put(_CancelSink(sink))

    def num_active_requests(self) -> int:
        return len(self._requests)

    def is_idle(self) -> bool:
        """No request left and nothing owed to the block manager: a finished request's
        blocks are freed by the step after it, so no active request alone is not enough."""
        return not self._requests and not self.scheduler.has_work()

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
                # The frees of the failed requests go out with the next step; if the
                # block manager is unreachable, retry at a pace that does not flood the log.
                self._stop.wait(_FAILURE_BACKOFF_S)

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
                self._abort(request, notify=True)
        elif isinstance(message, _CancelSink):
            for request in [r for r in self._requests.values() if r.sink is message.sink]:
                self._abort(request, notify=False)

    def _admit(self, message: _Submit) -> None:
        key = (id(message.sink), message.request_id)
        config = self.scheduler.config
        try:
            if key in self._requests:
                raise RequestRejected(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"request_id: {message.request_id!r} is already running",
                )
            check_request(
                message.prompt_token_ids,
                message.sampling,
                self.vocab_size,
                self.max_context_tokens,
                config.block_size_tokens,
                config.num_blocks,
            )
        except RequestRejected as rejected:
            message.sink.deliver([error_event(message.request_id, rejected.code, str(rejected))])
            return
        sampling = message.sampling
        request = Request(
            message.request_id,
            message.prompt_token_ids,
            sampling,
            message.sink,
            next(self._arrivals),
        )
        request.trace = RequestTrace(
            message.request_id, len(message.prompt_token_ids), message.trace_context
        )
        if sampling.beam_width > 1:
            request.beam_search = BeamSearch(
                sampling.beam_width,
                len(message.prompt_token_ids),
                sampling.max_tokens,
                sampling.stop_token_ids,
            )
        self._new_sequence(request, 0, message.prompt_token_ids)
        self._requests[key] = request
        self.scheduler.add(request)

    def _abort(self, request: Request, notify: bool) -> None:
        self.scheduler.finish_request(request, FinishReason.ABORTED)
        self._retire(request, FinishReason.ABORTED)
        if notify:
            request.sink.deliver(aborted_events(request))

    def _fail_all(self, code: grpc.StatusCode, message: str) -> None:
        for request in list(self._requests.values()):
            self.scheduler.finish_request(request, FinishReason.ABORTED)
            self._retire(request, FinishReason.ABORTED)
            request.sink.deliver([error_event(request.request_id, code, message)])

    def _retire(self, request: Request, reason: FinishReason | None) -> None:
        """The request is done at this executor: forget it and end its span."""
        self._requests.pop(request.key, None)
        if request.trace is not None:
            request.trace.finish(
                reason.value if reason else "unknown",
                sum(seq.num_output_tokens for seq in request.sequences),
                request.cached_prompt_tokens,
            )
            request.trace = None

    def _step(self) -> None:
        started_s = time.perf_counter()
        num_preemptions_before = self.scheduler.num_preemptions_total
        oldest = next((r.trace for r in self._requests.values() if r.trace is not None), None)
        with start_step_span(oldest) as step_span:
            plan = self.scheduler.schedule()
            self.num_steps += 1
            served = {id(chunk.seq.request): chunk.seq.request for chunk in plan.chunks}
            for request in served.values():
                if request.trace is not None:
                    request.trace.scheduled()
            link_step_requests(
                step_span, oldest, (r.trace for r in served.values() if r.trace is not None)
            )
            step_span.set_attribute("pagedserve.num_requests", len(served))
            for copies in plan.copies:
                if copies:
                    self.runner.apply_copies(copies)
            if plan.chunks:
                events = self._forward_and_sample(plan)
                self._mark_first_tokens(plan)
                self._deliver(events)
        self._record_step_metrics(started_s, num_preemptions_before)
        if not plan.chunks:
            time.sleep(_IDLE_BACKOFF_S)

    @staticmethod
    def _mark_first_tokens(plan: StepPlan) -> None:
        for chunk in plan.chunks:
            seq = chunk.seq
            if seq.request.trace is not None and seq.num_output_tokens > 0:
                seq.request.trace.first_token()

    def _record_step_metrics(self, started_s: float, num_preemptions_before: int) -> None:
        STEP_DURATION.observe(time.perf_counter() - started_s)
        PREEMPTIONS.inc(self.scheduler.num_preemptions_total - num_preemptions_before)
        scheduler = self.scheduler
        num_swapped = sum(
            1
            for request in scheduler.waiting
            if any(seq.status is SequenceStatus.SWAPPED for seq in request.sequences)
        )
        REQUESTS_RUNNING.set(len(scheduler.running))
        REQUESTS_SWAPPED.set(num_swapped)
        REQUESTS_WAITING.set(len(scheduler.waiting) - num_swapped)

    def _forward_and_sample(self, plan: StepPlan) -> list[tuple[Request, SequenceEvent]]:
        """Runs the step and returns its events."""
        inputs = self.runner.prepare(plan.chunks)
        logits = self.runner.run(inputs)  # [num_sampled, vocab]
        for chunk in plan.chunks:
            chunk.seq.num_computed_tokens += chunk.num_new_tokens
        if logits is None:
            return []
        sampled = [chunk.seq for chunk in inputs.sampled_chunks]
        beam_rows: dict[Request, list[int]] = collections.defaultdict(list)
        rows, seqs = [], []
        for row, seq in enumerate(sampled):
            if seq.request.beam_search is not None:
                beam_rows[seq.request].append(row)
                continue
            rows.append(row)
            seqs.append(seq)
            # Parallel sampling: every sample's first token comes from the prompt's one
            # prefill; the other samples are forked from it and share its blocks.
            if seq.request.sampling.n > len(seq.request.sequences):
                children = self._spawn_samples(seq)
                seqs.extend(children)
                rows.extend([row] * len(children))
        events = self._sample_independent(logits, rows, seqs)
        for request, request_rows in beam_rows.items():
            events.extend(
                self._advance_beam_search(
                    request, [sampled[r] for r in request_rows], logits[request_rows]
                )
            )
        return events

    def _sample_independent(self, logits: torch.Tensor, rows: list[int], seqs: list[Sequence]):
        if not seqs:
            return []
        if rows != list(range(logits.shape[0])):  # forks share their parent's row
            # index_select: advanced indexing copies rows several times slower on the CPU.
            logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        token_ids, logprobs = sample(
            logits,
            [seq.request.sampling for seq in seqs],
            [seq.generator for seq in seqs],
        )
        for seq, token_id, logprob in zip(seqs, token_ids, logprobs, strict=True):
            self.scheduler.update(seq, token_id, logprob, self.max_context_tokens)
        events = []
        last_event_of: dict[Request, SequenceEvent] = {}
        for seq in seqs:
            event = sequence_event(seq.request, seq)
            events.append((seq.request, event))
            last_event_of[seq.request] = event
        for request, event in last_event_of.items():
            if request.is_finished:
                event.request_finished = True
                self._retire(request, request.sequences[0].finish_reason)
        return events

    def _advance_beam_search(self, request: Request, beams: list[Sequence], logits: torch.Tensor):
        """One beam-search step: beams continue, fork or end; events only when the search is done."""
        search = request.beam_search
        continuations = search.step(beams, torch.log_softmax(logits, dim=-1))
        by_parent: dict[int, list] = collections.defaultdict(list)
        for continuation in continuations:
            by_parent[continuation.parent.seq_id].append(continuation)
        for beam in beams:
            mine = by_parent.get(beam.seq_id, [])
            if not mine:
                self.scheduler.finish_sequence(
                    beam, FinishReason.STOP
                )  # pruned (or the search ended)
                continue
            for continuation in mine[1:]:
                child = self._new_sequence(request, len(request.sequences), beam.token_ids)
                self.scheduler.fork(beam, child)
                self.scheduler.extend_beam(
                    child, continuation.token_id, continuation.cumulative_logprob
                )
            self.scheduler.extend_beam(beam, mine[0].token_id, mine[0].cumulative_logprob)
        if not search.done:
            return []
        self._retire(request, FinishReason.STOP)
        return [(request, event) for event in beam_events(request, search)]

    def _new_sequence(self, request: Request, index: int, token_ids: list[int]) -> Sequence:
        seq = Sequence(next(self._seq_ids), request, index, token_ids)
        seq.num_prompt_tokens = len(request.prompt_token_ids)
        if not request.sampling.greedy and request.beam_search is None:
            seq.generator = make_generator(request.sampling.seed + index)
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

    @staticmethod
    def _deliver(events: list[tuple[Request, SequenceEvent]]) -> None:
        """One batch per sink for the whole step."""
        by_sink: dict[int, tuple[object, list[SequenceEvent]]] = {}
        for request, event in events:
            by_sink.setdefault(id(request.sink), (request.sink, []))[1].append(event)
        for sink, sink_events in by_sink.values():
            sink.deliver(sink_events)
