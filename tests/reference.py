"""HF transformers on the same checkpoint in float32: the reference every output is judged by."""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pagedserve.executor.model_store import convert_default_model


@functools.cache
def hf_model_and_tokenizer():
    path = convert_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def hf_greedy(prompt_token_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by transformers' generate (stops after an end-of-sequence token)."""
    model, _ = hf_model_and_tokenizer()
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_token_ids]),
            attention_mask=torch.ones(1, len(prompt_token_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return output[0, len(prompt_token_ids) :].tolist()


def hf_encode(text: str) -> list[int]:
    _, tokenizer = hf_model_and_tokenizer()
    return tokenizer(text).input_ids


def hf_encode_chat(messages: list[dict[str, str]]) -> list[int]:
    _, tokenizer = hf_model_and_tokenizer()
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


def hf_beams(prompt_token_ids: list[int], num_beams: int, max_new_tokens: int) -> list[list[int]]:
    """transformers' beam search (its defaults), all num_beams results best first, each cut after EOS."""
    model, _ = hf_model_and_tokenizer()
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_token_ids]),
            attention_mask=torch.ones(1, len(prompt_token_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            do_sample=False,
        )
    beams = []
    # The model's own end-of-sequence id, as generate uses it (a GGUF-converted
    # tokenizer's eos_token can name another token).
    eos = model.generation_config.eos_token_id
    for row in output[:, len(prompt_token_ids) :].tolist():
        # Shorter beams are padded with the pad token, which is EOS for this model.
        beams.append(row[: row.index(eos) + 1] if eos in row else row)
    return beams
