"""Text <-> token ids for the gateway, from the model folder's own tokenizer files."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer


class ChatTemplateError(ValueError):
    """The model has no chat template, or rendering the messages failed."""


class Tokenizer:
    def __init__(self, model_path: Path):
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.vocab_size = len(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, with the special tokens the model adds (e.g. BOS)."""
        return list(self._tokenizer(text).input_ids)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Renders messages with the chat template plus the assistant's generation prompt."""
        if not self._tokenizer.chat_template:
            raise ChatTemplateError(
                "messages: this model has no chat template; send prompt instead"
            )
        try:
            text = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as error:  # noqa: BLE001 - template errors are the caller's input
            raise ChatTemplateError(f"messages: the chat template failed: {error}") from error
        return list(self._tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=True)
