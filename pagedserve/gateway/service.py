"""`pagedserve gateway`: the public pagedserve.v1.TextGeneration service.

Per request: validate and tokenize, route to the least loaded executor, then
turn its per-step token events into text deltas (streamed) or one response.
A request that ends early for any reason (client cancel, deadline, Abort,
error) is cancelled at its executor, which frees its blocks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from dataclasses import dataclass

import grpc

from pagedserve.common.metrics import serve_metrics
from pagedserve.common.security import warn_if_exposed
from pagedserve.common.server import (
    add_health_and_reflection,
    aio_server,
    bind,
    serve_until_signal,
    set_not_serving,
)
from pagedserve.common.service_main import run_service
from pagedserve.executor.model_store import resolve_model_path
from pagedserve.gateway.config import GatewayConfig
from pagedserve.gateway.detokenizer import CompletionText
from pagedserve.gateway.executor_link import ExecutorLink, LinkFailure, sampling_to_pb
from pagedserve.gateway.observability import RequestRecord
from pagedserve.gateway.router import NoExecutorError, Router
from pagedserve.gateway.tokenizer import Tokenizer
from pagedserve.gateway.validation import InvalidRequest, Limits, ValidatedRequest, validate
from pagedserve.v1 import generation_pb2 as pb
from pagedserve.v1 import generation_pb2_grpc as pb_grpc

SERVICE_NAME = "pagedserve.v1.TextGeneration"


class RequestFailed(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


@dataclass
class _Completion:
    text: CompletionText
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: int = pb.FINISH_REASON_UNSPECIFIED
    cumulative_logprob: float = 0.0


@dataclass
class _Delta:
    """What one executor event adds to one completion."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    completion: _Completion
    # Set on the request's last delta.
    usage: pb.Usage | None


class TextGenerationServicer(pb_grpc.TextGenerationServicer):
    def __init__(
        self,
        config: GatewayConfig,
        tokenizer: Tokenizer,
        router: Router,
        limits: Limits,
        eos_token_ids: tuple[int, ...],
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.router = router
        self.limits = limits
        # The model's end-of-sequence ids, from its executors: the tokenizer's own
        # eos_token can disagree (a GGUF conversion may set it to another token).
        self._in_flight_by_peer: collections.Counter[str] = collections.Counter()
        self.eos_token_ids = eos_token_ids
        self.accepting = True
        self._active: dict[str, tuple[ExecutorLink, str]] = {}

    # ---- RPCs ----

    async def Generate(self, request, context):
        completions: dict[int, _Completion] = {}
        response = pb.GenerateResponse()
        async for delta in self._generate(request, context):
            response.request_id = delta.request_id
            completions[delta.index] = delta.completion
            if delta.usage is not None:
                response.usage.CopyFrom(delta.usage)
        for index in sorted(completions):
            completion = completions[index]
            response.completions.add(
                index=index,
                text=completion.text.text,
                token_ids=completion.token_ids,
                finish_reason=completion.finish_reason,
                cumulative_logprob=completion.cumulative_logprob,
                logprobs=completion.logprobs,
            )
        return response

    async def GenerateStream(self, request, context):
        async for delta in self._generate(request, context):
            message = pb.GenerateStreamResponse(
                request_id=delta.request_id,
                index=delta.index,
                text=delta.text,
                token_ids=delta.token_ids,
                finish_reason=delta.completion.finish_reason,
                logprobs=delta.logprobs,
            )
            if delta.usage is not None:
                message.usage.CopyFrom(delta.usage)
            yield message

    async def Abort(self, request, context):
        entry = self._active.get(request.request_id)
        if entry is None:
            return pb.AbortResponse(aborted=False)
        link, internal_id = entry
        link.cancel(internal_id)
        return pb.AbortResponse(aborted=True)

    async def ListModels(self, request, context):
        model = pb.ModelInfo(
            name=self.limits.model_name,
            max_context_tokens=self.limits.max_context_tokens,
            vocab_size=self.limits.vocab_size,
        )
        return pb.ListModelsResponse(models=[model])

    # ---- one request ----

    async def _generate(self, request: pb.GenerateRequest, context):
        record = RequestRecord()
        code, message = grpc.StatusCode.CANCELLED, "the client went away"
        try:
            with self._connection_slot(context.peer()):
                async for delta in self._run(request, record):
                    record.add_tokens(len(delta.token_ids))
                    yield delta
            code, message = grpc.StatusCode.OK, ""
        except RequestFailed as error:
            code, message = error.code, str(error)
            await context.abort(error.code, message)
        finally:
            record.finish(code, message)

    @contextlib.contextmanager
    def _connection_slot(self, peer: str):
        """Counts a request against its client connection; raises RequestFailed past the limit."""
        limit = self.config.max_requests_per_connection
        if limit and self._in_flight_by_peer[peer] >= limit:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{limit} requests of this connection are already in flight "
                "(--max-requests-per-connection); retry later or open another connection",
            )
        self._in_flight_by_peer[peer] += 1
        try:
            yield
        finally:
            self._in_flight_by_peer[peer] -= 1
            if not self._in_flight_by_peer[peer]:
                del self._in_flight_by_peer[peer]

    def _admit(self, request: pb.GenerateRequest, record: RequestRecord):
        """Checks, validates and routes; returns (request_id, validated, link) or raises RequestFailed."""
        if not self.accepting:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down")
        limit = self.config.max_queued_requests
        if limit and len(self._active) >= limit:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{limit} requests are already in flight (--max-queued-requests); retry later",
            )
        request_id = request.request_id or uuid.uuid4().hex
        record.span.set_attribute("pagedserve.request_id", request_id)
        if request_id in self._active:
            raise RequestFailed(
                grpc.StatusCode.ALREADY_EXISTS, f"request_id: {request_id!r} is already running"
            )
        try:
            with record.child_span("validate") as span:  # tokenization included
                validated = validate(request, self.tokenizer, self.limits)
                span.set_attribute("pagedserve.prompt_tokens", len(validated.prompt_token_ids))
            record.prompt_tokens = len(validated.prompt_token_ids)
            with record.child_span("route") as span:
                link = self.router.pick()
                span.set_attribute("pagedserve.executor", link.address)
        except InvalidRequest as error:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except NoExecutorError as error:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        return request_id, validated, link

    async def _run(self, request: pb.GenerateRequest, record: RequestRecord):
        request_id, validated, link = self._admit(request, record)
        # Executor-side ids are unique per link even when clients reuse theirs later.
        internal_id = f"{request_id}:{uuid.uuid4().hex[:8]}"
        self._active[request_id] = (link, internal_id)
        events = link.submit(
            internal_id,
            validated.prompt_token_ids,
            sampling_to_pb(validated.sampling),
            trace_context=record.trace_context(),
        )
        finished = False
        try:
            async for item in self._stream(request_id, validated, events):
                yield item
            finished = True
        except RequestFailed:
            finished = True
            raise
        finally:
            if not finished:
                link.cancel(internal_id)  # client went away or deadline passed: free the blocks
            link.release(internal_id)
            self._active.pop(request_id, None)

    async def _stream(self, request_id: str, validated: ValidatedRequest, events: asyncio.Queue):
        sampling = validated.sampling
        stop_ids = set(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stop_ids.update(self.eos_token_ids)
        completions: dict[int, _Completion] = {}
        cached_prompt_tokens = 0
        num_open = sampling.n
        while num_open:
            event = await events.get()
            if isinstance(event, LinkFailure):
                raise RequestFailed(grpc.StatusCode.UNAVAILABLE, event.message)
            if event.HasField("error"):
                raise RequestFailed(
                    _STATUS_BY_CODE.get(event.error.code, grpc.StatusCode.INTERNAL),
                    event.error.message,
                )
            cached_prompt_tokens = max(cached_prompt_tokens, event.cached_prompt_tokens)
            completion = completions.get(event.index)
            if completion is None or event.replaces_previous:
                completion = _Completion(
                    CompletionText(self.tokenizer, validated.prompt_token_ids, list(sampling.stop)),
                    [],
                    [],
                )
                completions[event.index] = completion
            delta_ids = list(event.token_ids)
            completion.token_ids.extend(delta_ids)
            completion.logprobs.extend(event.logprobs)
            completion.cumulative_logprob = event.cumulative_logprob
            final = event.finish_reason != pb.FINISH_REASON_UNSPECIFIED
            text_ids = delta_ids
            if (
                final
                and event.finish_reason == pb.FINISH_REASON_STOP
                and delta_ids
                and delta_ids[-1] in stop_ids
            ):
                text_ids = delta_ids[:-1]  # a stop token ends the text; it is not part of it
            delta_text = completion.text.add(text_ids, final)
            if completion.text.stopped and not final:
                final = True  # a stop string: end here and let the executor free the blocks
                completion.finish_reason = pb.FINISH_REASON_STOP
                self._cancel_completion(request_id)
            elif final:
                completion.finish_reason = event.finish_reason
            if final:
                num_open -= 1
            usage = None
            if not num_open:
                usage = pb.Usage(
                    prompt_tokens=len(validated.prompt_token_ids),
                    completion_tokens=sum(len(c.token_ids) for c in completions.values()),
                    cached_prompt_tokens=cached_prompt_tokens,
                )
            yield _Delta(
                request_id,
                event.index,
                delta_text,
                delta_ids,
                list(event.logprobs),
                completion,
                usage,
            )

    def _cancel_completion(self, request_id: str) -> None:
        entry = self._active.get(request_id)
        if entry is not None:
            link, internal_id = entry
            link.cancel(internal_id)


async def _serve(config: GatewayConfig, log) -> None:
    model_path = resolve_model_path(config.model)
    tokenizer = Tokenizer(model_path)
    executor_credentials = config.channel_credentials()
    links = [
        ExecutorLink(address, config.internal_token, executor_credentials)
        for address in config.executor_addresses()
    ]
    for link in links:
        await link.start(wait_s=config.startup_wait_s)
        log.info(
            "executor %s: model %s on %s", link.address, link.info.model_name, link.info.device
        )
    info = links[0].info
    limits = Limits(
        model_name=info.model_name,
        max_context_tokens=info.max_context_tokens,
        vocab_size=info.vocab_size,
        max_n=config.max_n,
        max_beam_width=config.max_beam_width,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    servicer = TextGenerationServicer(
        config, tokenizer, Router(links), limits, tuple(info.eos_token_ids)
    )
    server = aio_server(config.public_token)
    pb_grpc.add_TextGenerationServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    warn_if_exposed(config.host, config.public_token, "gateway")
    port = bind(server, config.host, config.port, config.server_credentials())
    serve_metrics(config.host, config.metrics_port, "gateway")
    await server.start()
    log.info(
        "gateway listening on %s:%d, model %s, %d executor(s)",
        config.host,
        port,
        info.model_name,
        len(links),
    )

    async def drain() -> None:
        servicer.accepting = False
        set_not_serving(health, [SERVICE_NAME])
        deadline = time.monotonic() + config.shutdown_grace_s
        while servicer._active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    try:
        await serve_until_signal(server, drain, grace_s=1.0)
    finally:
        for link in links:
            await link.close()


def main(argv: list[str] | None = None) -> int:
    return run_service("gateway", GatewayConfig, argv, __doc__.splitlines()[0], _serve)
