"""Tracing and metrics of the executor: one span per request, one per scheduling step.

A request's span starts from the trace context the gateway put in its
SubmitRequest, so it lands in the client's trace. Its phases are recorded as
timestamps on the engine thread and become child spans when it ends: queued
(arrival to first scheduled), prefill (to the first sampled token) and decode
(to the end, with the token counts).

A step serves many requests but a span has one parent: the step span's parent
is the oldest active request (the scheduler serves in arrival order, so it is
almost always in the step) and the step links to every other request it
serves. A lone request thus gets the whole chain, down to the block manager's
Step call, in its own trace.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry import trace

from pagedserve.common import metrics
from pagedserve.common.tracing import extract_context, tracer

_tracer = tracer("pagedserve.executor")

REQUESTS_RUNNING = metrics.gauge(
    "pagedserve_executor_requests_running", "Requests with KV blocks, computing"
)
REQUESTS_WAITING = metrics.gauge(
    "pagedserve_executor_requests_waiting", "Requests queued for KV blocks (new or preempted)"
)
REQUESTS_SWAPPED = metrics.gauge(
    "pagedserve_executor_requests_swapped", "Requests preempted to the host swap pool"
)
PREEMPTIONS = metrics.counter("pagedserve_executor_preemptions_total", "Sequences preempted")
STEP_DURATION = metrics.histogram(
    "pagedserve_executor_step_duration_seconds",
    "One scheduling step: block-manager call, copies, forward, sampling",
)
BLOCKMGR_STEP_LATENCY = metrics.histogram(
    "pagedserve_executor_blockmgr_step_latency_seconds",
    "Round trip of the block manager's Step RPC",
    buckets=metrics.RPC_BUCKETS_S,
)


class RequestTrace:
    """The span of one request and the times of its phases (engine thread only)."""

    __slots__ = ("span", "arrival_ns", "scheduled_ns", "first_token_ns")

    def __init__(self, request_id: str, num_prompt_tokens: int, carrier: Mapping[str, str]):
        self.arrival_ns = time.time_ns()
        self.span = _tracer.start_span(
            "executor.request",
            context=extract_context(carrier),
            start_time=self.arrival_ns,
            attributes={
                "pagedserve.request_id": request_id,
                "pagedserve.prompt_tokens": num_prompt_tokens,
            },
        )
        self.scheduled_ns: int | None = None
        self.first_token_ns: int | None = None

    def scheduled(self) -> None:
        if self.scheduled_ns is None:
            self.scheduled_ns = time.time_ns()

    def first_token(self) -> None:
        if self.first_token_ns is None:
            self.first_token_ns = time.time_ns()

    def preempted(self, mode: str) -> None:
        self.span.add_event("preempted", {"pagedserve.preemption_mode": mode})

    def finish(self, reason: str, num_generated_tokens: int, num_cached_tokens: int) -> None:
        """Records the phases as child spans and ends the request span."""
        end_ns = time.time_ns()
        parent = trace.set_span_in_context(self.span)
        phases = [("queued", self.arrival_ns, self.scheduled_ns)]
        if self.scheduled_ns is not None:
            phases.append(("prefill", self.scheduled_ns, self.first_token_ns or end_ns))
        for name, start_ns, stop_ns in phases:
            if start_ns is not None:
                _tracer.start_span(name, context=parent, start_time=start_ns).end(
                    end_time=stop_ns or end_ns
                )
        if self.first_token_ns is not None:
            decode = _tracer.start_span(
                "decode",
                context=parent,
                start_time=self.first_token_ns,
                attributes={"pagedserve.generated_tokens": num_generated_tokens},
            )
            decode.end(end_time=end_ns)
        self.span.set_attribute("pagedserve.finish_reason", reason)
        self.span.set_attribute("pagedserve.generated_tokens", num_generated_tokens)
        self.span.set_attribute("pagedserve.cached_prompt_tokens", num_cached_tokens)
        self.span.end(end_time=end_ns)


def start_step_span(oldest: RequestTrace | None):
    """The span of one step, as a context manager, under the oldest active request's
    span (a root span when there is none)."""
    context = trace.set_span_in_context(oldest.span) if oldest is not None else None
    return _tracer.start_as_current_span("executor.step", context=context)


def link_step_requests(step_span, parent: RequestTrace | None, served: Iterable[RequestTrace]):
    """Links the step span to every request it served but its parent."""
    for request_trace in served:
        if request_trace is not parent:
            step_span.add_link(request_trace.span.get_span_context())
