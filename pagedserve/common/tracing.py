"""OpenTelemetry tracing for every process, one trace per client request across services.

Each process calls init_tracing() at start, before it creates any gRPC server
or channel: the gRPC instrumentation then puts a span on every RPC (health
checks excluded) and carries the W3C trace context in gRPC metadata. Spans are
exported through OTLP when the standard OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. Otherwise tracing is off: no
instrumentation and OpenTelemetry's no-op tracer, so that no RPC pays for
spans nobody receives (a span per call costs tens of microseconds, a real
share of the block manager's per-step call).

The executor's Connect stream carries many requests, so the gateway also puts
each request's trace context in its SubmitRequest (inject_context), and the
executor starts that request's spans from it (extract_context).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
    GrpcInstrumentorClient,
    GrpcInstrumentorServer,
    filters,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

_provider: TracerProvider | None = None


def tracing_enabled() -> bool:
    """Whether an OTLP endpoint for traces is configured (the standard variables)."""
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def init_tracing(service: str) -> TracerProvider | None:
    """Sets up the tracer provider for `pagedserve-<service>` and instruments gRPC
    (once per process); does nothing and returns None when tracing is off."""
    global _provider  # one provider per process is OpenTelemetry's own model
    if _provider is not None:
        return _provider
    if not tracing_enabled():
        log.info("tracing off (set OTEL_EXPORTER_OTLP_ENDPOINT to export spans)")
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"pagedserve-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    not_health = filters.negate(filters.health_check())
    for instrumentor in (
        GrpcInstrumentorServer,
        GrpcAioInstrumentorServer,
        GrpcInstrumentorClient,
        GrpcAioInstrumentorClient,
    ):
        instrumentor(filter_=not_health).instrument(tracer_provider=provider)
    _provider = provider
    return provider


def shutdown_tracing() -> None:
    """Flushes spans not yet exported (call at exit)."""
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_context(context=None) -> dict[str, str]:
    """The trace context (the current one when None) as W3C headers (traceparent, tracestate)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(carrier) -> object:
    """A context to start spans under, from headers made by inject_context()."""
    return propagate.extract(dict(carrier))
