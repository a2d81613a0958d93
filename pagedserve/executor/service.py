"""`pagedserve executor`: the Executor gRPC service around the engine.

Start-up: find the KV pool at the block manager, attach to it, load the model,
take a lease, start the step loop, warm up (warm_up.py), capture the decode
graphs on CUDA (decode_graphs.py), then listen. Protobufs are converted here
and nowhere else in the executor.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import torch

from pagedserve.common.config import ConfigError
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
from pagedserve.executor.blockmgr_link import (
    BlockManagerLink,
    PoolNotFoundError,
    pool_spec_from_info,
)
from pagedserve.executor.config import ExecutorConfig
from pagedserve.executor.decode_graphs import graph_batch_sizes
from pagedserve.executor.engine import Engine
from pagedserve.executor.kv_pool import attach_pool
from pagedserve.executor.model_config import load_model_config
from pagedserve.executor.model_loader import load_model
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.model_store import resolve_model_path
from pagedserve.executor.outputs import SequenceEvent, error_event
from pagedserve.executor.prefill_graphs import graph_token_counts
from pagedserve.executor.request import FinishReason, SamplingOptions
from pagedserve.executor.scheduler import Scheduler, SchedulerConfig
from pagedserve.executor.v1 import executor_pb2 as pb
from pagedserve.executor.v1 import executor_pb2_grpc as pb_grpc
from pagedserve.executor.warm_up import warm_up
from pagedserve.kernels._backend import use_triton
from pagedserve.v1 import generation_pb2 as public_pb

SERVICE_NAME = "pagedserve.executor.v1.Executor"
# Compiling every kernel variant the warm-up meets, on a cold Triton cache.
WARM_UP_TIMEOUT_S = 600.0
# How long capture waits for the engine to settle after the warm-up (its last
# step frees the warm-up's blocks; an idle engine launches nothing).
_IDLE_WAIT_S = 10.0
_FINISH_TO_PB = {
    None: public_pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: public_pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: public_pb.FINISH_REASON_LENGTH,
    FinishReason.ABORTED: public_pb.FINISH_REASON_ABORTED,
}


def sampling_from_pb(
    options: pb.SamplingOptions, model_eos_token_ids: tuple[int, ...]
) -> SamplingOptions:
    stop_ids = set(options.stop_token_ids)
    if not options.ignore_eos:
        stop_ids.update(model_eos_token_ids)
        stop_ids.update(options.eos_token_ids)
    return SamplingOptions(
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        n=options.n or 1,
        beam_width=options.beam_width or 1,
        stop_token_ids=frozenset(stop_ids),
        logprobs=options.logprobs,
        use_prefix_cache=options.use_prefix_cache,
    )


def event_to_pb(event: SequenceEvent) -> pb.RequestEvent:
    message = pb.RequestEvent(
        request_id=event.request_id,
        index=event.index,
        token_ids=event.token_ids,
        logprobs=event.logprobs,
        finish_reason=_FINISH_TO_PB[event.finish_reason],
        cumulative_logprob=event.cumulative_logprob,
        cached_prompt_tokens=event.cached_prompt_tokens,
        replaces_previous=event.replaces_previous,
        request_finished=event.request_finished,
    )
    if event.error_code is not None:
        message.error.code = event.error_code.value[0]
        message.error.message = event.error_message
    return message


class StreamSink:
    """Receives the engine's per-step batches on its thread and queues them for one stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.queue: asyncio.Queue[pb.ConnectResponse | None] = asyncio.Queue()
        # Requests submitted on this stream and not finished (touched on the event loop only).
        self.num_open = 0

    def deliver(self, events: list[SequenceEvent]) -> None:
        response = pb.ConnectResponse(events=[event_to_pb(e) for e in events])
        self._loop.call_soon_threadsafe(self.queue.put_nowait, response)


class ExecutorServicer(pb_grpc.ExecutorServicer):
    def __init__(self, engine: Engine, info: pb.GetInfoResponse):
        self.engine = engine
        self.info = info
        self.accepting = True

    async def Connect(self, request_iterator, context):
        sink = StreamSink(asyncio.get_running_loop())
        reader = asyncio.ensure_future(self._read(request_iterator, sink))
        try:
            # After the gateway half-closes, its open requests still run to the end.
            while not (reader.done() and sink.num_open == 0):
                next_batch = asyncio.ensure_future(sink.queue.get())
                waiting_on = [next_batch] if reader.done() else [next_batch, reader]
                done, _ = await asyncio.wait(waiting_on, return_when=asyncio.FIRST_COMPLETED)
                if next_batch not in done:
                    next_batch.cancel()
                    continue
                response = next_batch.result()
                sink.num_open -= sum(1 for event in response.events if event.request_finished)
                yield response
            reader.result()  # surfaces an error of the request stream
        finally:
            reader.cancel()
            self.engine.cancel_sink(sink)

    async def _read(self, request_iterator, sink: StreamSink) -> None:
        async for message in request_iterator:
            if message.HasField("submit"):
                submit = message.submit
                sink.num_open += 1
                if not self.accepting:
                    refusal = error_event(
                        submit.request_id, grpc.StatusCode.UNAVAILABLE, "executor is shutting down"
                    )
                    sink.deliver([refusal])
                    continue
                self.engine.submit(
                    submit.request_id,
                    list(submit.prompt_token_ids),
                    sampling_from_pb(submit.sampling, tuple(self.info.eos_token_ids)),
                    sink,
                    dict(submit.trace_context),
                )
            elif message.HasField("cancel"):
                self.engine.cancel(message.cancel.request_id, sink)

    async def GetInfo(self, request, context):
        info = pb.GetInfoResponse()
        info.CopyFrom(self.info)
        info.num_active_requests = self.engine.num_active_requests()
        info.num_preemptions_total = self.engine.scheduler.num_preemptions_total
        return info


def _find_pool(link: BlockManagerLink, pool_id: str, wait_s: float, log):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return link.find_pool(pool_id)
        except PoolNotFoundError:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for a KV pool to be registered at %s", link.address)
            time.sleep(0.5)


def build_engine(config: ExecutorConfig, link: BlockManagerLink, log):
    """Attaches to the pool, loads the model, registers; returns (engine, info, executor_id)."""
    pool_info = _find_pool(link, config.pool_id, config.startup_wait_s, log)
    device_kind, spec = pool_spec_from_info(pool_info)
    device = (
        torch.device(device_kind, pool_info.device_index)
        if device_kind == "cuda"
        else torch.device("cpu")
    )
    model_path = resolve_model_path(config.model)
    model_config = load_model_config(model_path)
    expected = (model_config.num_layers, model_config.num_kv_heads, model_config.head_dim)
    if (spec.num_layers, spec.num_kv_heads, spec.head_dim) != expected:
        raise ConfigError(
            f"--model {model_path}: KV shape {expected} does not match pool {pool_info.pool_id} {tuple(pool_info.shape)}"
        )
    dtype = spec.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
    kv_pool = attach_pool(device_kind, pool_info.device_handle, spec)
    swap_pool = None
    if pool_info.num_swap_blocks:
        swap_spec = spec.with_num_blocks(pool_info.num_swap_blocks)
        swap_pool = attach_pool("cpu", pool_info.swap_handle, swap_spec)
    elif config.preemption_mode == "swap":
        raise ConfigError(
            f"--preemption-mode swap: pool {pool_info.pool_id} has no swap blocks (kvpool --num-swap-blocks)"
        )
    model = load_model(model_config, model_path, device, dtype)
    registered = link.register_executor(pool_info.pool_id, config.executor_id)
    scheduler = Scheduler(
        SchedulerConfig(
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            block_size_tokens=spec.block_size_tokens,
            num_blocks=spec.num_blocks,
            watermark_blocks=max(1, spec.num_blocks // 100),
            preemption_mode=config.preemption_mode,
        ),
        registered.executor_id,
        link.step,
    )
    runner = ModelRunner(model, kv_pool, spec.block_size_tokens, swap_pool)
    engine = Engine(scheduler, runner, model_config.vocab_size, model_config.max_context_tokens)
    info = pb.GetInfoResponse(
        model_name=model_config.name,
        max_context_tokens=model_config.max_context_tokens,
        vocab_size=model_config.vocab_size,
        device=str(device),
        block_size_tokens=spec.block_size_tokens,
        num_blocks=spec.num_blocks,
        executor_id=registered.executor_id,
        pool_id=pool_info.pool_id,
        eos_token_ids=model_config.eos_token_ids,
    )
    log.info(
        "executor %s: model %s on %s (%s), pool %s: %d blocks of %d tokens",
        registered.executor_id,
        model_config.name,
        device,
        dtype,
        pool_info.pool_id,
        spec.num_blocks,
        spec.block_size_tokens,
    )
    return engine, info, registered


def capture_cuda_graphs(
    engine: Engine, max_num_seqs: int, max_num_batched_tokens: int, log
) -> None:
    """Captures the engine runner's decode and prefill graphs (CUDA with the
    Triton kernels; elsewhere logs that steps stay eager) once the engine is
    idle. Raises RuntimeError when it stays busy, and what capture raises: a
    failed capture fails the start."""
    runner = engine.runner
    if runner.device.type != "cuda" or not use_triton(runner.kv_pool):
        log.info("cuda graphs: off on %s, steps run eagerly", runner.device)
        return
    deadline = time.monotonic() + _IDLE_WAIT_S
    while not engine.is_idle():
        if time.monotonic() > deadline:
            # Capturing beside a step the engine thread launches would fail
            # or record that step's work into a graph.
            raise RuntimeError(f"cuda graphs: the engine was still busy after {_IDLE_WAIT_S} s")
        time.sleep(0.01)
    context = engine.max_context_tokens
    decode = runner.capture_decode_graphs(graph_batch_sizes(max_num_seqs), context)
    prefill = runner.capture_prefill_graphs(
        graph_token_counts(max_num_batched_tokens), max_num_seqs, context
    )
    for name, report, unit in (("decode", decode, "batch sizes"), ("prefill", prefill, "tokens")):
        log.info(
            "cuda graphs: %s captured for %s %s (%d graphs) in %.2f s; graph memory %.1f MiB",
            name,
            unit,
            ",".join(map(str, report.sizes)),
            report.num_graphs,
            report.seconds,
            report.memory_bytes / 2**20,
        )


async def _serve(config: ExecutorConfig, log) -> None:
    link = BlockManagerLink(
        config.blockmgr, token=config.internal_token, credentials=config.channel_credentials()
    )
    link.wait_ready(timeout_s=config.startup_wait_s)
    engine, info, registered = build_engine(config, link, log)
    stop_heartbeat = link.start_heartbeat(registered.executor_id, registered.lease_ms / 3000)
    engine.start()
    if config.warm_up:
        warm_up(engine, WARM_UP_TIMEOUT_S)
    if config.cuda_graphs:
        capture_cuda_graphs(engine, config.max_num_seqs, config.max_num_batched_tokens, log)
    servicer = ExecutorServicer(engine, info)
    server = aio_server(config.internal_token)
    pb_grpc.add_ExecutorServicer_to_server(servicer, server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    warn_if_exposed(config.host, config.internal_token, "executor")
    port = bind(server, config.host, config.port, config.server_credentials())
    serve_metrics(config.host, config.metrics_port, "executor")
    await server.start()
    log.info("executor listening on %s:%d", config.host, port)

    async def drain() -> None:
        servicer.accepting = False
        set_not_serving(health, [SERVICE_NAME])
        deadline = time.monotonic() + config.shutdown_grace_s
        while not engine.is_idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    try:
        await serve_until_signal(server, drain, grace_s=1.0)
    finally:
        engine.stop()
        stop_heartbeat.set()
        try:
            freed = link.unregister_executor(registered.executor_id)
            if freed:
                log.warning(
                    "%d sequences still held KV blocks at exit; the block manager freed them", freed
                )
        except grpc.RpcError as error:
            log.warning("could not unregister from the block manager: %s", error.details())
        link.close()


def main(argv: list[str] | None = None) -> int:
    return run_service("executor", ExecutorConfig, argv, __doc__.splitlines()[0], _serve)
