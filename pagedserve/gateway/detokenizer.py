"""Streaming detokenization: token ids in, text deltas out, never splitting a character.

Decoding token by token breaks multi-byte characters (a Chinese character or an
emoji can span several byte-level tokens) and loses leading spaces in
SentencePiece vocabularies. So each step decodes a short window of recent tokens
twice, with and without the new ones, and emits the difference once it no longer
ends in U+FFFD (an incomplete character).

Stop strings are applied to the assembled text: the completion ends before the
first stop string, and while a stop string could still be forming, that tail is
held back instead of being streamed.
"""

from __future__ import annotations

from pagedserve.gateway.tokenizer import Tokenizer

# Prompt tokens decoded before the output so that the first output token's
# leading space and merged characters come out right.
_CONTEXT_TOKENS = 5
_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int]):
        self._tokenizer = tokenizer
        self._token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)

    def add(self, token_ids: list[int]) -> str:
        """Appends tokens; returns the text they complete (may be empty)."""
        self._token_ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end: whatever text is left, even an incomplete character."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        prefix_text = self._tokenizer.decode(
            self._token_ids[self._prefix_offset : self._read_offset]
        )
        full_text = self._tokenizer.decode(self._token_ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or (full_text.endswith(_INCOMPLETE) and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return full_text[len(prefix_text) :]


class CompletionText:
    """The text of one completion as it streams: detokenized, stop strings applied."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], stop_strings: list[str]):
        self._detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self._stop_strings = stop_strings
        self._hold_back_chars = max((len(s) for s in stop_strings), default=1) - 1
        self.text = ""
        self._emitted_chars = 0
        self.stopped = False

    def add(self, token_ids: list[int], final: bool) -> str:
        """Returns the text that may be sent now; sets stopped when a stop string appeared."""
        if self.stopped:
            return ""
        self.text += self._detokenizer.add(token_ids)
        if final:
            self.text += self._detokenizer.flush()
        self._apply_stop_strings()
        if self.stopped or final:
            sendable = len(self.text)
        else:
            sendable = max(self._emitted_chars, len(self.text) - self._hold_back_chars)
        delta = self.text[self._emitted_chars : sendable]
        self._emitted_chars = sendable
        return delta

    def _apply_stop_strings(self) -> None:
        # Only text not yet sent (plus a stop string's length before it) can hold a new match.
        search_from = max(0, self._emitted_chars - self._hold_back_chars)
        first = None
        for stop in self._stop_strings:
            position = self.text.find(stop, search_from)
            if position != -1 and (first is None or position < first):
                first = position
        if first is not None:
            self.text = self.text[:first]
            self.stopped = True
