"""Streaming detokenization with the default model's real tokenizer."""

from __future__ import annotations

import pytest

from pagedserve.executor.model_store import convert_default_model
from pagedserve.gateway.detokenizer import CompletionText, IncrementalDetokenizer
from pagedserve.gateway.tokenizer import Tokenizer

TEXTS = [
    "我爱猫。今天天气很好！",
    "Cats 🐱 and coffee ☕ make a morning 🌅.",
    "naïve café — déjà vu",
    "plain ASCII text with  two spaces",
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(convert_default_model())


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_never_split_a_character(tokenizer, text):
    prompt = tokenizer.encode("Say:")
    output = tokenizer.encode(text)
    assert len(output) > len(text.split())  # multi-token words: the case that breaks naive decoding
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detokenizer.add([token_id]) for token_id in output]
    deltas.append(detokenizer.flush())
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == tokenizer.decode(output)


def test_stop_string_cuts_the_text_and_holds_back_a_possible_start(tokenizer):
    output = tokenizer.encode("alpha beta STOP gamma")
    completion = CompletionText(tokenizer, tokenizer.encode("x"), ["STOP"])
    sent = ""
    for token_id in output:
        sent += completion.add([token_id], final=False)
        assert "STO" not in sent  # never streams what might become the stop string
        if completion.stopped:
            break
    assert completion.stopped
    assert sent == completion.text == "alpha beta "


def test_without_stop_strings_text_streams_as_it_comes(tokenizer):
    output = tokenizer.encode("one two three")
    completion = CompletionText(tokenizer, [], [])
    sent = "".join(completion.add([t], final=False) for t in output)
    sent += completion.add([], final=True)
    assert sent == "one two three" and not completion.stopped
