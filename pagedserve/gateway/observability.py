"""One request's trace span and metrics at the gateway.

The request span is a child of the RPC's server span (which carries the
client's traceparent when it sent one); validation with tokenization and
routing are its child spans, and its context travels to the executor inside
SubmitRequest. The metrics are Prometheus histograms and counters in seconds
and tokens, recorded once per request when it ends.
"""

from __future__ import annotations

import time

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pagedserve.common import metrics
from pagedserve.common.tracing import inject_context, tracer

_tracer = tracer("pagedserve.gateway")

REQUESTS = metrics.counter(
    "pagedserve_gateway_requests_total", "Requests ended, by gRPC status", ("status",)
)
TIME_TO_FIRST_TOKEN = metrics.histogram(
    "pagedserve_gateway_time_to_first_token_seconds", "From arrival to the first generated token"
)
TIME_PER_OUTPUT_TOKEN = metrics.histogram(
    "pagedserve_gateway_time_per_output_token_seconds",
    "Mean time between generated tokens after the first, per request",
)
END_TO_END_LATENCY = metrics.histogram(
    "pagedserve_gateway_e2e_request_latency_seconds", "From arrival to the last response"
)
PROMPT_TOKENS = metrics.counter("pagedserve_gateway_prompt_tokens_total", "Prompt tokens received")
GENERATED_TOKENS = metrics.counter(
    "pagedserve_gateway_generation_tokens_total", "Tokens generated for clients"
)


class RequestRecord:
    """The span and timings of one request, from arrival to its end."""

    def __init__(self) -> None:
        self.span = _tracer.start_span("gateway.request")
        self.context = trace.set_span_in_context(self.span)
        self.arrival_s = time.monotonic()
        self.first_token_s: float | None = None
        self.prompt_tokens = 0
        self.generated_tokens = 0

    def child_span(self, name: str):
        """A span under the request span, as a context manager."""
        return _tracer.start_as_current_span(name, context=self.context)

    def trace_context(self) -> dict[str, str]:
        """The request span's context as W3C headers, for the executor."""
        return inject_context(self.context)

    def add_tokens(self, num_tokens: int) -> None:
        if num_tokens and self.first_token_s is None:
            self.first_token_s = time.monotonic()
            self.span.add_event("first_token")
        self.generated_tokens += num_tokens

    def finish(self, code: grpc.StatusCode, message: str = "") -> None:
        """Records the metrics and ends the span (call once)."""
        end_s = time.monotonic()
        REQUESTS.labels(status=code.name).inc()
        PROMPT_TOKENS.inc(self.prompt_tokens)
        GENERATED_TOKENS.inc(self.generated_tokens)
        END_TO_END_LATENCY.observe(end_s - self.arrival_s)
        if self.first_token_s is not None:
            TIME_TO_FIRST_TOKEN.observe(self.first_token_s - self.arrival_s)
            if self.generated_tokens > 1:
                TIME_PER_OUTPUT_TOKEN.observe(
                    (end_s - self.first_token_s) / (self.generated_tokens - 1)
                )
        self.span.set_attribute("pagedserve.prompt_tokens", self.prompt_tokens)
        self.span.set_attribute("pagedserve.generated_tokens", self.generated_tokens)
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self.span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}"))
        self.span.end()
