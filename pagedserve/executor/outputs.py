"""What the engine tells the gateway: one SequenceEvent per completion that moved in a step."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from pagedserve.executor.beam_search import BeamSearch
from pagedserve.executor.request import FinishReason, Request, Sequence


@dataclass
class SequenceEvent:
    """New tokens (or the end, or an error) of one completion; a plain type the service converts."""

    request_id: str
    index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    cumulative_logprob: float = 0.0
    cached_prompt_tokens: int = 0
    # Beam search: token_ids is the whole completion, replacing anything sent before.
    replaces_previous: bool = False
    # The request's last event: nothing more follows for request_id.
    request_finished: bool = False
    error_code: grpc.StatusCode | None = None
    error_message: str = ""


def error_event(request_id: str, code: grpc.StatusCode, message: str) -> SequenceEvent:
    return SequenceEvent(
        request_id, 0, request_finished=True, error_code=code, error_message=message
    )


def _announce(request: Request, event: SequenceEvent) -> SequenceEvent:
    """The request's first event carries how much of the prompt came from the prefix cache."""
    if not request.announced:
        event.cached_prompt_tokens = request.cached_prompt_tokens
        request.announced = True
    return event


def sequence_event(request: Request, seq: Sequence) -> SequenceEvent:
    """Takes seq's tokens not yet sent."""
    event = SequenceEvent(
        request.request_id,
        seq.index,
        token_ids=seq.pending_token_ids,
        logprobs=seq.pending_logprobs if request.sampling.logprobs else [],
        finish_reason=seq.finish_reason,
        cumulative_logprob=seq.cumulative_logprob,
    )
    seq.pending_token_ids, seq.pending_logprobs = [], []
    return _announce(request, event)


def beam_events(request: Request, search: BeamSearch) -> list[SequenceEvent]:
    """The best n hypotheses of a finished beam search, best first."""
    events = []
    for index, hypothesis in enumerate(search.finished[: request.sampling.n]):
        last = hypothesis.output_token_ids[-1]
        reason = FinishReason.STOP if last in search.stop_token_ids else FinishReason.LENGTH
        event = SequenceEvent(
            request.request_id,
            index,
            token_ids=list(hypothesis.output_token_ids),
            finish_reason=reason,
            cumulative_logprob=hypothesis.cumulative_logprob,
            replaces_previous=True,
        )
        events.append(_announce(request, event))
    events[-1].request_finished = True
    return events


def aborted_events(request: Request) -> list[SequenceEvent]:
    """Ends every completion of an aborted request (beams: one event per promised completion)."""
    if request.beam_search is not None:
        return [
            _announce(
                request,
                SequenceEvent(request.request_id, index, finish_reason=FinishReason.ABORTED),
            )
            for index in range(request.sampling.n)
        ]
    events = [sequence_event(request, seq) for seq in request.sequences]
    # Samples not forked yet still end, so the client sees all n completions close.
    for index in range(len(request.sequences), request.sampling.n):
        events.append(SequenceEvent(request.request_id, index, finish_reason=FinishReason.ABORTED))
    return events
