"""A pool too small for the load: requests are preempted and resumed, never dropped or changed."""

from __future__ import annotations

import concurrent.futures
import random
import time

import grpc
import pytest

from pagedserve.executor.v1 import executor_pb2, executor_pb2_grpc
from pagedserve.v1 import generation_pb2 as pb
from tests.reference import hf_encode
from tests.stack import start_stack

NUM_REQUESTS = 32
SMALL_POOL_BLOCKS = 64  # 1,024 token slots for 32 requests of 100 to 260 tokens
MAX_LOAD_RUNS = 3


def _requests(
    text: str, id_prefix: str, count: int, seed: int, prompt_lens: tuple[int, int], sampling
) -> list[pb.GenerateRequest]:
    """count requests whose prompts are random spans of the tokenized text;
    sampling(rng, index) gives each one's SamplingParams."""
    rng = random.Random(seed)
    words = hf_encode(text * 8)
    requests = []
    for index in range(count):
        prompt_len = rng.randint(*prompt_lens)
        start = rng.randint(0, len(words) - prompt_len)
        requests.append(
            pb.GenerateRequest(
                request_id=f"{id_prefix}-{index}",
                prompt_token_ids=pb.TokenIds(ids=words[start : start + prompt_len]),
                sampling=sampling(rng, index),
            )
        )
    return requests


def _workload() -> list[pb.GenerateRequest]:
    return _requests(
        "Paging splits memory into fixed-size pages that are mapped to frames through a table, "
        "so that a process sees contiguous memory while its frames are scattered. ",
        "load", NUM_REQUESTS, 0, (70, 200),
        lambda rng, _: pb.SamplingParams(
            max_tokens=rng.randint(30, 60), temperature=0, ignore_eos=True
        ),
    )  # fmt: skip


def _run_all(client, requests) -> list[list[int]]:
    def run(request):
        return list(client.Generate(request, timeout=600).completions[0].token_ids)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


@pytest.fixture(scope="module")
def unconstrained_outputs(client):
    return _run_all(client, _workload())


def _run_until_preempted(stack, run_load, expected) -> None:
    """Runs the load until one run has preempted a request (MAX_LOAD_RUNS at
    most); every run must give the expected tokens and leave no block held.

    Whether a run drains the pool depends on timing: the scheduler keeps a
    block in reserve for each running sequence, so an append fails only when
    more sequences need a block in one step than are free. Once in eight runs
    here the first run never preempted, and such a run shows nothing."""
    for _ in range(MAX_LOAD_RUNS):
        outputs = run_load()
        stats = stack.wait_no_blocks_held()
        assert outputs == expected
        assert stats.used_blocks == 0 and stats.num_sequences == 0 and stats.swapped_blocks == 0
        if _preemptions(stack):
            break
    assert _preemptions(stack) > 0


def _preemptions(stack) -> int:
    """Requests the stack's executor has preempted so far."""
    executor = executor_pb2_grpc.ExecutorStub(stack.channel(stack.executors[0]))
    return executor.GetInfo(executor_pb2.GetInfoRequest()).num_preemptions_total


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_small_pool_completes_everything_with_the_same_tokens(unconstrained_outputs, mode):
    flags = ["--num-blocks", str(SMALL_POOL_BLOCKS), "--preemption-mode", mode]
    if mode == "swap":
        flags += ["--num-swap-blocks", "512"]
    stack = start_stack(*flags)
    try:
        client = stack.generation_stub()
        _run_until_preempted(stack, lambda: _run_all(client, _workload()), unconstrained_outputs)
        _cancel_while_some_are_preempted(stack, client)
        # A request larger than the whole pool can never run: refused at once.
        too_big = pb.GenerateRequest(
            prompt="hello", sampling=pb.SamplingParams(max_tokens=SMALL_POOL_BLOCKS * 16)
        )
        with pytest.raises(grpc.RpcError) as raised:
            client.Generate(too_big, timeout=30)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        assert stack.stop() == 0


def _cancel_while_some_are_preempted(stack, client) -> None:
    """Cancels the whole load at a moment when a preemption has just happened:
    requests that are running, waiting, preempted or swapped out must all let go."""
    before = _preemptions(stack)
    for _ in range(MAX_LOAD_RUNS):  # a load that never ran the pool dry runs again
        streams = [client.GenerateStream(request, timeout=600) for request in _workload()]
        deadline = time.monotonic() + 300
        while (
            _preemptions(stack) == before
            and not all(stream.done() for stream in streams)
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        if _preemptions(stack) > before:
            break
    assert _preemptions(stack) > before
    for stream in streams:
        stream.cancel()
    stats = stack.wait_no_blocks_held(timeout_s=90)
    assert stats.used_blocks == 0 and stats.num_sequences == 0 and stats.swapped_blocks == 0


def _forked_workload() -> list[pb.GenerateRequest]:
    """Requests of three drawn samples each: the samples share their prompt's
    blocks, then diverge (seeded, so a rerun draws the same tokens)."""
    return _requests(
        "A block table maps each sequence's logical blocks to physical ones, and blocks "
        "shared by several sequences are copied only when one of them writes. ",
        "forks", 8, 1, (90, 140),
        lambda rng, index: pb.SamplingParams(
            max_tokens=rng.randint(24, 40), temperature=0.8, seed=index, n=3, ignore_eos=True
        ),
    )  # fmt: skip


def _run_all_samples(client, requests) -> list[list[list[int]]]:
    def run(request):
        response = client.Generate(request, timeout=600)
        return [list(completion.token_ids) for completion in response.completions]

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(run, requests))


def test_swapped_samples_resume_with_the_same_tokens(client):
    """A request's samples are swapped out and in together, sharing their
    prompt's blocks on the host and again on the device: every sample must
    continue from its own keys and values."""
    expected = _run_all_samples(client, _forked_workload())
    assert all(len({tuple(s) for s in samples}) > 1 for samples in expected)  # they diverged
    stack = start_stack(
        "--num-blocks", "48", "--preemption-mode", "swap", "--num-swap-blocks", "512"
    )
    try:
        client = stack.generation_stub()
        _run_until_preempted(stack, lambda: _run_all_samples(client, _forked_workload()), expected)
    finally:
        assert stack.stop() == 0
