"""Greedy outputs through gateway -> executor -> block manager equal HF transformers' generate."""

from __future__ import annotations

import concurrent.futures

import pytest

from pagedserve.v1 import generation_pb2 as pb
from tests.reference import hf_encode, hf_encode_chat, hf_greedy

MAX_NEW_TOKENS = 24
LONG_TEXT = (
    "PagedAttention stores the key-value cache of each sequence in fixed-size blocks that need not be "
    "contiguous in memory. A block table maps each sequence's logical blocks to physical blocks, so "
    "memory is allocated on demand and waste is limited to the last block of every sequence. Blocks "
    "can be shared between sequences by reference counting, with copy-on-write when a shared block "
    "is modified. Summarize this in one sentence:"
)


def _token_prompt(length: int) -> list[int]:
    ids = hf_encode(LONG_TEXT)
    assert len(ids) >= length
    return ids[:length]


# (name, request input, prompt token ids per the reference)
def _cases():
    yield "ids-1", {"prompt_token_ids": pb.TokenIds(ids=_token_prompt(1))}, _token_prompt(1)
    for length in (15, 16, 17):
        yield (
            f"ids-{length}",
            {"prompt_token_ids": pb.TokenIds(ids=_token_prompt(length))},
            _token_prompt(length),
        )
    yield "text-long", {"prompt": LONG_TEXT}, hf_encode(LONG_TEXT)
    yield (
        "text-short",
        {"prompt": "The capital of France is"},
        hf_encode("The capital of France is"),
    )
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    yield (
        "chat-1",
        {"messages": pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in chat])},
        hf_encode_chat(chat),
    )
    chat2 = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ]
    yield (
        "chat-2",
        {"messages": pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in chat2])},
        hf_encode_chat(chat2),
    )


CASES = list(_cases())


@pytest.mark.parametrize("name,request_input,prompt_ids", CASES, ids=[c[0] for c in CASES])
def test_greedy_is_token_identical_to_hf(client, name, request_input, prompt_ids):
    request = pb.GenerateRequest(
        sampling=pb.SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0), **request_input
    )
    response = client.Generate(request, timeout=120)
    expected = hf_greedy(prompt_ids, MAX_NEW_TOKENS)
    (completion,) = response.completions
    assert list(completion.token_ids) == expected
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(expected)
    ended_on_eos = len(expected) < MAX_NEW_TOKENS
    expected_reason = pb.FINISH_REASON_STOP if ended_on_eos else pb.FINISH_REASON_LENGTH
    assert completion.finish_reason == expected_reason


def test_long_prompt_over_100_tokens_matches_hf(client):
    ids = hf_encode(LONG_TEXT * 2)
    assert len(ids) > 100
    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=ids),
        sampling=pb.SamplingParams(max_tokens=16, temperature=0),
    )
    assert list(client.Generate(request, timeout=120).completions[0].token_ids) == hf_greedy(
        ids, 16
    )


def test_32_concurrent_requests_match_each_run_alone(client):
    prompts = [hf_encode(LONG_TEXT)[: 3 + (i * 37) % 120] for i in range(32)]

    def run(ids):
        request = pb.GenerateRequest(
            prompt_token_ids=pb.TokenIds(ids=ids),
            sampling=pb.SamplingParams(max_tokens=12, temperature=0),
        )
        return list(client.Generate(request, timeout=300).completions[0].token_ids)

    alone = [run(ids) for ids in prompts]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone
