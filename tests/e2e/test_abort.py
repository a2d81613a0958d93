"""Abort and cancellation end a request at once and free its blocks."""

from __future__ import annotations

import threading
import time

import grpc

from pagedserve.v1 import generation_pb2 as pb

LONG_RUN = pb.SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)


def test_abort_rpc_ends_a_running_stream_with_aborted(client, stack):
    request = pb.GenerateRequest(
        request_id="abort-me", prompt="Tell me a long story.", sampling=LONG_RUN
    )
    stream = client.GenerateStream(request, timeout=120)
    first = next(stream)
    assert first.request_id == "abort-me"
    assert client.Abort(pb.AbortRequest(request_id="abort-me")).aborted
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_ABORTED
    assert sum(len(m.token_ids) for m in [first, *rest]) < 400
    assert not client.Abort(pb.AbortRequest(request_id="abort-me")).aborted  # no longer running
    assert stack.wait_no_blocks_held().used_blocks == 0


def test_cancelling_the_call_frees_the_blocks(client, stack):
    stream = client.GenerateStream(
        pb.GenerateRequest(prompt="Tell me a long story.", sampling=LONG_RUN), timeout=120
    )
    next(stream)
    assert stack.pool_stats().used_blocks > 0
    stream.cancel()
    assert stack.wait_no_blocks_held().used_blocks == 0


def test_cancelling_during_prefill_frees_the_blocks(client, stack):
    long_prompt = "word " * 800
    future = client.Generate.future(
        pb.GenerateRequest(prompt=long_prompt, sampling=LONG_RUN), timeout=120
    )
    time.sleep(0.3)  # the 800-token prompt is still being prefilled
    future.cancel()
    # The cancel is taken between steps, so on a loaded machine it waits for the
    # prefill step in progress: allow for that, then nothing may be held.
    assert stack.wait_no_blocks_held(timeout_s=90).used_blocks == 0


def test_deadline_passing_aborts_the_request(client, stack):
    try:
        client.Generate(
            pb.GenerateRequest(prompt="Tell me a long story.", sampling=LONG_RUN), timeout=0.5
        )
        raise AssertionError("a 400-token request finished within 0.5 s on CPU")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stack.wait_no_blocks_held().used_blocks == 0


def test_abort_of_unknown_request_says_false(client):
    assert not client.Abort(pb.AbortRequest(request_id="never-was")).aborted


def test_a_client_id_in_use_is_rejected(client):
    request = pb.GenerateRequest(
        request_id="twice", prompt="Tell me a long story.", sampling=LONG_RUN
    )
    stream = client.GenerateStream(request, timeout=120)
    next(stream)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_code_of(client, request)))
    thread.start()
    thread.join()
    stream.cancel()
    assert errors == [grpc.StatusCode.ALREADY_EXISTS]


def _code_of(client, request):
    try:
        client.Generate(request, timeout=30)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_aborting_parallel_samples_frees_every_sample(client, stack):
    request = pb.GenerateRequest(
        request_id="abort-samples",
        prompt="Tell me a long story.",
        sampling=pb.SamplingParams(n=4, max_tokens=400, temperature=1.0, seed=3, ignore_eos=True),
    )
    stream = client.GenerateStream(request, timeout=120)
    seen = {next(stream).index for _ in range(8)}
    assert stack.pool_stats().num_sequences == 4  # all four samples hold blocks
    assert client.Abort(pb.AbortRequest(request_id="abort-samples")).aborted
    final = {m.index: m.finish_reason for m in stream if m.finish_reason}
    assert final == dict.fromkeys(range(4), pb.FINISH_REASON_ABORTED)
    assert seen <= set(range(4))
    assert stack.wait_no_blocks_held().num_sequences == 0


def test_cancelling_a_beam_search_frees_every_beam(client, stack):
    request = pb.GenerateRequest(
        prompt="Tell me a long story.",
        sampling=pb.SamplingParams(beam_width=4, max_tokens=400, temperature=0, ignore_eos=True),
    )
    future = client.Generate.future(request, timeout=120)
    deadline = time.monotonic() + 60
    while stack.pool_stats().num_sequences < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # beams are forked after the prompt's prefill
    assert stack.pool_stats().num_sequences == 4
    future.cancel()
    assert stack.wait_no_blocks_held().num_sequences == 0
