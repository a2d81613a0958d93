"""One client request is one trace across gateway, executor and block manager.

A real OTLP/gRPC trace receiver runs in this process; the stack exports to it.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from pagedserve.v1 import generation_pb2 as pb
from tests.stack import start_stack


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with its service name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        attribute.value.string_value
                        for attribute in resource_spans.resource.attributes
                        if attribute.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self._spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, trace_pb2.Span]]:
        with self._lock:
            return list(self._spans)


@pytest.fixture(scope="module")
def receiver():
    servicer = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.port = port
    yield servicer
    server.stop(0)


@pytest.fixture(scope="module")
def traced_stack(receiver):
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    stack = start_stack("--num-blocks", "128", env=env)
    yield stack
    assert stack.stop() == 0


def _wait_for(receiver: TraceReceiver, trace_id: bytes, done, timeout_s: float = 60.0):
    """The spans of trace_id once done(spans) holds, or when time runs out (the
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [(service, span) for service, span in receiver.spans() if span.trace_id == trace_id]
        if done(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)


def test_one_request_is_one_trace_under_the_clients_span(traced_stack, receiver):
    trace_id = secrets.token_bytes(16)
    client_span_id = secrets.token_bytes(8)
    traceparent = f"00-{trace_id.hex()}-{client_span_id.hex()}-01"
    request = pb.GenerateRequest(
        prompt="The capital of France is", sampling=pb.SamplingParams(max_tokens=4, temperature=0)
    )
    responses = list(
        traced_stack.generation_stub().GenerateStream(
            request, metadata=(("traceparent", traceparent),), timeout=120
        )
    )
    assert responses[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED

    def complete(spans) -> bool:
        names = {span.name for _service, span in spans}
        return {"executor.request", "decode", "gateway.request"} <= names and any(
            service == "pagedserve-blockmgr" for service, _span in spans
        )

    spans = _wait_for(receiver, trace_id, complete)
    by_id = {span.span_id: (service, span) for service, span in spans}
    named = {}
    for service, span in spans:
        named.setdefault((service, span.name), []).append(span)

    assert {service for service, _span in spans} >= {
        "pagedserve-gateway",
        "pagedserve-executor",
        "pagedserve-blockmgr",
    }
    (server_span,) = named[("pagedserve-gateway", "/pagedserve.v1.TextGeneration/GenerateStream")]
    assert server_span.parent_span_id == client_span_id
    (request_span,) = named[("pagedserve-gateway", "gateway.request")]
    assert request_span.parent_span_id == server_span.span_id
    for phase in ("validate", "route"):
        (phase_span,) = named[("pagedserve-gateway", phase)]
        assert phase_span.parent_span_id == request_span.span_id

    (executor_request,) = named[("pagedserve-executor", "executor.request")]
    assert executor_request.parent_span_id == request_span.span_id
    for phase in ("queued", "prefill", "decode"):
        (phase_span,) = named[("pagedserve-executor", phase)]
        assert phase_span.parent_span_id == executor_request.span_id
    (decode,) = named[("pagedserve-executor", "decode")]
    generated = {a.key: a.value.int_value for a in decode.attributes}["pagedserve.generated_tokens"]
    assert generated == sum(len(r.token_ids) for r in responses)

    steps = named[("pagedserve-executor", "executor.step")]
    assert len(steps) >= 4  # one prefill step and a decode step per further token
    assert all(step.parent_span_id == executor_request.span_id for step in steps)
    step_ids = {step.span_id for step in steps}
    blockmgr_steps = named[("pagedserve-blockmgr", "/pagedserve.blockmgr.v1.BlockManager/Step")]
    for server_side in blockmgr_steps:
        client_service, client_side = by_id[server_side.parent_span_id]
        assert client_service == "pagedserve-executor"
        assert client_side.parent_span_id in step_ids


def test_no_health_check_spans(traced_stack, receiver):
    # The launcher polled every service's health at start; none of it is traced.
    names = {span.name for _service, span in receiver.spans()}
    assert names, "no spans were exported at all"
    assert not [name for name in names if "grpc.health" in name]
