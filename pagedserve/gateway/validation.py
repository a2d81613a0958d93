"""Checks a GenerateRequest and resolves it into what the executor needs.

Every rejection is an InvalidRequest whose message starts with the field's
name, so a client in any language can tell what to fix. Nothing here has side
effects: a rejected request leaves no trace.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from pagedserve.gateway.tokenizer import ChatTemplateError, Tokenizer
from pagedserve.v1 import generation_pb2 as pb

DEFAULT_MAX_TOKENS = 16
_CHAT_ROLES = ("system", "user", "assistant", "tool")


class InvalidRequest(ValueError):
    """Bad input; maps to INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Limits:
    model_name: str
    max_context_tokens: int
    vocab_size: int
    max_n: int
    max_beam_width: int
    max_stop_strings: int = 16
    # Longest prompt accepted in tokens; 0: only the context length limits it.
    max_prompt_tokens: int = 0


@dataclass(frozen=True)
class ResolvedSampling:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    n: int
    beam_width: int
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    logprobs: bool


@dataclass(frozen=True)
class ValidatedRequest:
    prompt_token_ids: list[int]
    sampling: ResolvedSampling


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidRequest(message)


def _prompt_token_ids(
    request: pb.GenerateRequest, tokenizer: Tokenizer, limits: Limits
) -> list[int]:
    kind = request.WhichOneof("input")
    _require(kind is not None, "input: set one of prompt, prompt_token_ids or messages")
    if kind == "prompt":
        _require(request.prompt != "", "prompt: must not be empty")
        ids = tokenizer.encode(request.prompt)
    elif kind == "prompt_token_ids":
        ids = list(request.prompt_token_ids.ids)
        _require(len(ids) > 0, "prompt_token_ids: must not be empty")
        for position, token_id in enumerate(ids):
            _require(
                token_id < limits.vocab_size,
                f"prompt_token_ids.ids[{position}]: {token_id} is outside the vocabulary (size {limits.vocab_size})",
            )
    else:
        messages = request.messages.messages
        _require(len(messages) > 0, "messages: must not be empty")
        for position, message in enumerate(messages):
            _require(
                message.role in _CHAT_ROLES,
                f"messages.messages[{position}].role: {message.role!r} is not one of {', '.join(_CHAT_ROLES)}",
            )
        try:
            ids = tokenizer.encode_chat([{"role": m.role, "content": m.content} for m in messages])
        except ChatTemplateError as error:
            raise InvalidRequest(str(error)) from error
    _require(len(ids) > 0, f"{kind}: tokenizes to no tokens")
    return ids


def _sampling(params: pb.SamplingParams, limits: Limits) -> ResolvedSampling:
    max_tokens = params.max_tokens if params.HasField("max_tokens") else DEFAULT_MAX_TOKENS
    _require(max_tokens >= 1, "sampling.max_tokens: must be at least 1")
    temperature = params.temperature if params.HasField("temperature") else 1.0
    _require(
        math.isfinite(temperature) and temperature >= 0,
        f"sampling.temperature: {temperature} must be >= 0",
    )
    top_p = params.top_p if params.HasField("top_p") else 1.0
    _require(math.isfinite(top_p) and 0 < top_p <= 1, f"sampling.top_p: {top_p} must be in (0, 1]")
    n = params.n if params.HasField("n") else 1
    _require(1 <= n <= limits.max_n, f"sampling.n: {n} must be between 1 and {limits.max_n}")
    beam_width = params.beam_width if params.HasField("beam_width") else 1
    _require(
        1 <= beam_width <= limits.max_beam_width,
        f"sampling.beam_width: {beam_width} must be between 1 and {limits.max_beam_width}",
    )
    _require(
        beam_width == 1 or n <= beam_width,
        f"sampling.n: beam search returns at most beam_width ({beam_width}) completions",
    )
    _require(
        len(params.stop) <= limits.max_stop_strings,
        f"sampling.stop: at most {limits.max_stop_strings} strings",
    )
    _require(all(params.stop), "sampling.stop: stop strings must not be empty")
    for position, token_id in enumerate(params.stop_token_ids):
        _require(
            token_id < limits.vocab_size,
            f"sampling.stop_token_ids[{position}]: {token_id} is outside the vocabulary (size {limits.vocab_size})",
        )
    seed = params.seed if params.HasField("seed") else secrets.randbits(63)
    return ResolvedSampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=params.top_k if params.HasField("top_k") else 0,
        seed=seed,
        n=n,
        beam_width=beam_width,
        stop=tuple(params.stop),
        stop_token_ids=tuple(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        logprobs=params.logprobs,
    )


def validate(request: pb.GenerateRequest, tokenizer: Tokenizer, limits: Limits) -> ValidatedRequest:
    """Returns the resolved request; raises InvalidRequest naming the first bad field."""
    _require(
        request.model in ("", "default", limits.model_name),
        f"model: {request.model!r} is not served here (served: {limits.model_name})",
    )
    sampling = _sampling(request.sampling, limits)
    prompt = _prompt_token_ids(request, tokenizer, limits)
    _require(
        not limits.max_prompt_tokens or len(prompt) <= limits.max_prompt_tokens,
        f"prompt: {len(prompt)} tokens exceed the gateway's limit of {limits.max_prompt_tokens} (--max-prompt-tokens)",
    )
    total = len(prompt) + sampling.max_tokens
    _require(
        total <= limits.max_context_tokens,
        f"sampling.max_tokens: prompt ({len(prompt)} tokens) plus max_tokens ({sampling.max_tokens}) "
        f"exceeds the model's context of {limits.max_context_tokens} tokens",
    )
    return ValidatedRequest(prompt, sampling)
