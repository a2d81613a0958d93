"""Streaming deltas, max_tokens, stop strings, stop token ids, ignore_eos and seeded sampling."""

from __future__ import annotations

from pagedserve.v1 import generation_pb2 as pb


def _chat(content: str) -> pb.ChatMessages:
    return pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=content)])


def _stream(client, request):
    return list(client.GenerateStream(request, timeout=120))


def test_stream_deltas_concatenate_to_the_unary_result(client):
    request = pb.GenerateRequest(
        prompt="Once upon a time", sampling=pb.SamplingParams(max_tokens=40, temperature=0)
    )
    unary = client.Generate(request, timeout=120).completions[0]
    messages = _stream(client, request)
    assert "".join(m.text for m in messages) == unary.text
    assert [t for m in messages for t in m.token_ids] == list(unary.token_ids)
    assert messages[-1].finish_reason == unary.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in messages[:-1])
    assert messages[-1].usage.completion_tokens == len(unary.token_ids)
    assert not any(m.HasField("usage") for m in messages[:-1])


def test_multibyte_text_never_breaks_a_character_mid_stream(client):
    # Greedy output of this prompt is Chinese, then emoji whose 4 bytes span several tokens.
    request = pb.GenerateRequest(
        messages=_chat("请用中文回答：你好吗？"),
        sampling=pb.SamplingParams(max_tokens=40, temperature=0),
    )
    messages = _stream(client, request)
    text = "".join(m.text for m in messages)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text  # Chinese
    assert any(ord(ch) > 0xFFFF for ch in text), text  # an emoji, outside the BMP
    # A character cut by max_tokens may end the text as U+FFFD (as HF's decode does),
    # but no delta before the last may hold a broken character.
    assert not any("\ufffd" in m.text for m in messages[:-1])
    # Some token completed no character yet: its text was held back for the next delta.
    assert any(m.token_ids and not m.text for m in messages[:-1])
    assert text == client.Generate(request, timeout=120).completions[0].text


def test_max_tokens_gives_exactly_that_many_tokens(client):
    request = pb.GenerateRequest(
        prompt="Count: 1, 2, 3,",
        sampling=pb.SamplingParams(max_tokens=7, temperature=0, ignore_eos=True),
    )
    completion = client.Generate(request, timeout=120).completions[0]
    assert len(completion.token_ids) == 7
    assert completion.finish_reason == pb.FINISH_REASON_LENGTH


def test_stop_string_ends_the_text_before_it(client):
    base = pb.GenerateRequest(
        prompt="Count: 1, 2, 3,", sampling=pb.SamplingParams(max_tokens=30, temperature=0)
    )
    full = client.Generate(base, timeout=120).completions[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop and stop in full
    request = pb.GenerateRequest()
    request.CopyFrom(base)
    request.sampling.stop.append(stop)
    unary = client.Generate(request, timeout=120).completions[0]
    assert unary.text == full[: full.index(stop)]
    assert unary.finish_reason == pb.FINISH_REASON_STOP
    streamed = _stream(client, request)
    assert "".join(m.text for m in streamed) == unary.text
    assert streamed[-1].finish_reason == pb.FINISH_REASON_STOP


def test_stop_token_id_ends_the_completion_at_that_token(client):
    base = pb.GenerateRequest(
        prompt="Count: 1, 2, 3,",
        sampling=pb.SamplingParams(max_tokens=20, temperature=0, ignore_eos=True),
    )
    full_ids = list(client.Generate(base, timeout=120).completions[0].token_ids)
    stop_id = full_ids[5]
    request = pb.GenerateRequest()
    request.CopyFrom(base)
    request.sampling.stop_token_ids.append(stop_id)
    completion = client.Generate(request, timeout=120).completions[0]
    first = full_ids.index(stop_id)
    assert list(completion.token_ids) == full_ids[: first + 1]
    assert completion.finish_reason == pb.FINISH_REASON_STOP


def test_ignore_eos_generates_past_the_end_of_sequence(client):
    request = pb.GenerateRequest(
        messages=_chat("What is the capital of France?"),
        sampling=pb.SamplingParams(max_tokens=40, temperature=0),
    )
    normal = client.Generate(request, timeout=120).completions[0]
    assert normal.finish_reason == pb.FINISH_REASON_STOP and len(normal.token_ids) < 40
    request.sampling.ignore_eos = True
    forced = client.Generate(request, timeout=120).completions[0]
    assert len(forced.token_ids) == 40 and forced.finish_reason == pb.FINISH_REASON_LENGTH
    assert list(forced.token_ids[: len(normal.token_ids)]) == list(normal.token_ids)


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        request = pb.GenerateRequest(
            prompt="My favourite animal is",
            sampling=pb.SamplingParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=seed),
        )
        return list(client.Generate(request, timeout=120).completions[0].token_ids)

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_logprobs_are_returned_and_sum_to_the_cumulative(client):
    request = pb.GenerateRequest(
        prompt="Hello",
        sampling=pb.SamplingParams(max_tokens=8, temperature=0, logprobs=True, ignore_eos=True),
    )
    completion = client.Generate(request, timeout=120).completions[0]
    assert len(completion.logprobs) == 8
    assert all(lp <= 0 for lp in completion.logprobs)
    assert abs(sum(completion.logprobs) - completion.cumulative_logprob) < 1e-3


def test_list_models_names_the_served_model(client):
    (model,) = client.ListModels(pb.ListModelsRequest()).models
    assert model.name == "SmolLM2-135M-Instruct"
    assert model.vocab_size == 49152 and model.max_context_tokens == 8192
