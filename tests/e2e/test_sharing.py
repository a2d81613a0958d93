"""The paper's memory sharing through the public API: parallel samples, beams, prefix caching."""

from __future__ import annotations

import pytest

from pagedserve.executor.v1 import executor_pb2, executor_pb2_grpc
from pagedserve.v1 import generation_pb2 as pb
from tests.reference import hf_beams, hf_encode, hf_greedy

BLOCK_SIZE = 16


def test_parallel_samples_are_reproducible_and_share_the_prompt_blocks(client, stack):
    prompt_ids = hf_encode(
        "Write a short poem about the sea, the wind and the old lighthouse keeper:"
    )
    full_blocks = len(prompt_ids) // BLOCK_SIZE
    assert full_blocks >= 1
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=prompt_ids),
        sampling=pb.SamplingParams(n=4, max_tokens=48, temperature=1.0, seed=42, ignore_eos=True),
    )
    stream = client.GenerateStream(request, timeout=120)
    messages = [next(stream) for _ in range(8)]  # all four samples are decoding now
    stats = stack.pool_stats()
    messages.extend(stream)
    # The prompt's full blocks are held once, by all four samples: ref count 4 each.
    assert stats.shared_blocks == full_blocks
    assert stats.logical_blocks - stats.used_blocks == 3 * full_blocks
    tokens = {i: [t for m in messages if m.index == i for t in m.token_ids] for i in range(4)}
    assert all(len(t) == 48 for t in tokens.values())
    assert len({tuple(t) for t in tokens.values()}) > 1, "four samples came out identical"
    again = client.Generate(request, timeout=120)
    assert {c.index: list(c.token_ids) for c in again.completions} == tokens
    assert again.usage.completion_tokens == 4 * 48


BEAM_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "In a small village at the edge of the forest,",
    "The three most important inventions of the twentieth century are",
    "Question: What is the boiling point of water at sea level? Answer:",
]


@pytest.mark.parametrize("prompt", BEAM_PROMPTS)
def test_beam_search_matches_hf(client, prompt):
    prompt_ids = hf_encode(prompt)
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=prompt_ids),
        sampling=pb.SamplingParams(beam_width=4, n=4, max_tokens=24, temperature=0),
    )
    response = client.Generate(request, timeout=300)
    expected = hf_beams(prompt_ids, num_beams=4, max_new_tokens=24)
    ours = [list(c.token_ids) for c in response.completions]
    assert ours[0] == expected[0]  # the best beam, token for token
    assert sorted(ours) == sorted(expected)  # the same set of top beams
    scores = [c.cumulative_logprob / len(c.token_ids) for c in response.completions]
    assert scores == sorted(scores, reverse=True)


def test_beam_search_best_beam_alone(client):
    prompt_ids = hf_encode(BEAM_PROMPTS[2])
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=prompt_ids),
        sampling=pb.SamplingParams(beam_width=4, max_tokens=24, temperature=0),
    )
    (completion,) = client.Generate(request, timeout=300).completions
    assert list(completion.token_ids) == hf_beams(prompt_ids, 4, 24)[0]


PREFIX = hf_encode(
    "You are a careful assistant. Answer in one short sentence, and never use more words than needed. "
    "Here is some background that every question shares: the museum opens at nine in the morning and "
    "closes at five in the afternoon, it is free on Sundays, children under twelve always enter for "
    "free, guided tours start every hour on the hour, and the cafe on the second floor serves lunch "
    "from noon until three. Photography is allowed everywhere except in the special exhibition, "
    "and bags larger than a shoebox must be left in the free lockers next to the main entrance."
)[:100]


def _greedy(client, prompt_ids, max_tokens=12):
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=prompt_ids),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0),
    )
    return client.Generate(request, timeout=120)


def test_prefix_cache_reuses_whole_blocks_of_a_shared_prefix(client):
    assert len(PREFIX) == 100
    first = _greedy(client, PREFIX + hf_encode(" Question: when does it open?"))
    second_ids = PREFIX + hf_encode(" Question: is it free on Sundays?")
    second = _greedy(client, second_ids)
    assert first.usage.cached_prompt_tokens % BLOCK_SIZE == 0
    assert second.usage.cached_prompt_tokens == (100 // BLOCK_SIZE) * BLOCK_SIZE
    assert list(second.completions[0].token_ids) == hf_greedy(
        second_ids, 12
    )  # as if nothing were cached


def test_prefix_computed_by_one_executor_is_reused_by_the_other(stack):
    prefix = hf_encode("A shared system prompt for the cross-executor cache test. " * 6)[:80]
    results = []
    for index, address in enumerate(stack.executors):
        prompt = prefix + hf_encode(f" Variant {index}: say hello.")
        stub = executor_pb2_grpc.ExecutorStub(stack.channel(address))
        sampling = executor_pb2.SamplingOptions(
            max_tokens=8,
            temperature=0,
            top_p=1,
            n=1,
            beam_width=1,
            eos_token_ids=[2],
            use_prefix_cache=True,
        )
        submit = executor_pb2.SubmitRequest(
            request_id=f"prefix-{index}", prompt_token_ids=prompt, sampling=sampling
        )
        cached, tokens = None, []
        for response in stub.Connect(
            iter([executor_pb2.ConnectRequest(submit=submit)]), timeout=120
        ):
            for event in response.events:
                assert not event.HasField("error"), event.error.message
                cached = event.cached_prompt_tokens if cached is None else cached
                tokens.extend(event.token_ids)
            if response.events and response.events[-1].finish_reason:
                break
        results.append((cached, tokens, prompt))
    (first_cached, _, _), (second_cached, second_tokens, second_prompt) = results
    assert first_cached == 0
    assert second_cached == (80 // BLOCK_SIZE) * BLOCK_SIZE
    assert second_tokens == hf_greedy(second_prompt, 8)
