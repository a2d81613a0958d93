"""The gateway's connection to one executor: one Connect stream carrying all its requests.

Submissions and cancellations are written to the stream; the executor answers
with one message per scheduling step, whose events are handed to each request's
queue here. If the stream breaks, every request on it fails with UNAVAILABLE and
the link reconnects in the background.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from pagedserve.common.security import auth_metadata
from pagedserve.common.server import CHANNEL_OPTIONS
from pagedserve.executor.v1 import executor_pb2 as pb
from pagedserve.executor.v1 import executor_pb2_grpc as pb_grpc
from pagedserve.gateway.validation import ResolvedSampling

log = logging.getLogger(__name__)

_RECONNECT_DELAY_S = 1.0


@dataclass
class LinkFailure:
    """Put on a request's queue when its executor stream broke."""

    message: str


def sampling_to_pb(sampling: ResolvedSampling) -> pb.SamplingOptions:
    """The executor applies the model's end-of-sequence ids itself (unless ignore_eos)."""
    return pb.SamplingOptions(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        n=sampling.n,
        beam_width=sampling.beam_width,
        stop_token_ids=sampling.stop_token_ids,
        ignore_eos=sampling.ignore_eos,
        logprobs=sampling.logprobs,
        use_prefix_cache=True,
    )


class ExecutorLink:
    def __init__(
        self,
        address: str,
        token: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.address = address
        self.info: pb.GetInfoResponse | None = None
        self.healthy = False
        self._metadata = auth_metadata(token)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.ExecutorStub(self._channel)
        self._outbox: asyncio.Queue[pb.ConnectRequest | None] = asyncio.Queue()
        self._queues: dict[str, asyncio.Queue] = {}
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def num_active(self) -> int:
        return len(self._queues)

    async def start(self, wait_s: float) -> None:
        """Waits for the executor and opens the stream; raises asyncio.TimeoutError."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout=wait_s)
        self.info = await self._stub.GetInfo(
            pb.GetInfoRequest(), timeout=wait_s, metadata=self._metadata
        )
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        self._closing = True
        self._outbox.put_nowait(None)
        if self._task:
            self._task.cancel()
        await self._channel.close()

    def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: pb.SamplingOptions,
        trace_context: dict[str, str] | None = None,
    ) -> asyncio.Queue:
        """Sends the request; its events (and a LinkFailure if the stream breaks) arrive on the queue."""
        events: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = events
        submit = pb.SubmitRequest(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            sampling=sampling,
            trace_context=trace_context or {},
        )
        self._outbox.put_nowait(pb.ConnectRequest(submit=submit))
        return events

    def cancel(self, request_id: str) -> None:
        if request_id in self._queues:
            self._outbox.put_nowait(
                pb.ConnectRequest(cancel=pb.CancelRequest(request_id=request_id))
            )

    def release(self, request_id: str) -> None:
        """The gateway is done with this request (finished, failed or cancelled)."""
        self._queues.pop(request_id, None)

    async def _requests(self):
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            yield message

    async def _run(self) -> None:
        while not self._closing:
            call = self._stub.Connect(self._requests(), metadata=self._metadata)
            self.healthy = True
            try:
                async for response in call:
                    for event in response.events:
                        events = self._queues.get(event.request_id)
                        if events is not None:
                            events.put_nowait(event)
                reason = "executor closed the stream"
            except grpc.aio.AioRpcError as error:
                reason = (
                    f"executor {self.address} unavailable: {error.details() or error.code().name}"
                )
            self.healthy = False
            if self._closing:
                return
            log.warning("%s; failing %d requests and reconnecting", reason, len(self._queues))
            for events in self._queues.values():
                events.put_nowait(LinkFailure(reason))
            self._queues.clear()
            self._outbox = asyncio.Queue()
            await asyncio.sleep(_RECONNECT_DELAY_S)
