"""Bad input gets INVALID_ARGUMENT naming the field, and the server keeps serving."""

from __future__ import annotations

import grpc
import pytest

from pagedserve.v1 import generation_pb2 as pb

GOOD_SAMPLING = pb.SamplingParams(max_tokens=4, temperature=0)

BAD_REQUESTS = [
    ("no input", pb.GenerateRequest(sampling=GOOD_SAMPLING), "input"),
    ("empty prompt", pb.GenerateRequest(prompt="", sampling=GOOD_SAMPLING), "prompt"),
    (
        "empty token ids",
        pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[]), sampling=GOOD_SAMPLING),
        "prompt_token_ids",
    ),
    (
        "empty messages",
        pb.GenerateRequest(messages=pb.ChatMessages(), sampling=GOOD_SAMPLING),
        "messages",
    ),
    (
        "bad role",
        pb.GenerateRequest(
            messages=pb.ChatMessages(messages=[pb.ChatMessage(role="robot", content="hi")])
        ),
        "messages.messages[0].role",
    ),
    (
        "max_tokens 0",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=0)),
        "sampling.max_tokens",
    ),
    (
        "over context",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=9000)),
        "sampling.max_tokens",
    ),
    (
        "negative temperature",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=-0.5)),
        "sampling.temperature",
    ),
    (
        "top_p 0",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=0.0)),
        "sampling.top_p",
    ),
    (
        "top_p above 1",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(top_p=1.5)),
        "sampling.top_p",
    ),
    (
        "unknown model",
        pb.GenerateRequest(model="gpt-17", prompt="hi", sampling=GOOD_SAMPLING),
        "model",
    ),
    (
        "token id outside vocab",
        pb.GenerateRequest(prompt_token_ids=pb.TokenIds(ids=[1, 49152]), sampling=GOOD_SAMPLING),
        "prompt_token_ids",
    ),
    (
        "stop token outside vocab",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop_token_ids=[10**6])),
        "sampling.stop_token_ids",
    ),
    (
        "empty stop string",
        pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(stop=[""])),
        "sampling.stop",
    ),
    ("n 0", pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(n=0)), "sampling.n"),
]


@pytest.mark.parametrize(
    "name,request_message,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
@pytest.mark.parametrize("streamed", [False, True], ids=["unary", "stream"])
def test_bad_input_is_invalid_argument_naming_the_field(
    client, name, request_message, field, streamed
):
    with pytest.raises(grpc.RpcError) as raised:
        if streamed:
            list(client.GenerateStream(request_message, timeout=30))
        else:
            client.Generate(request_message, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field), raised.value.details()
    good = client.Generate(pb.GenerateRequest(prompt="hi", sampling=GOOD_SAMPLING), timeout=60)
    assert len(good.completions[0].token_ids) >= 1
