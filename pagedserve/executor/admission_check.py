"""Requests the executor can never serve are refused at once, with the status the client gets."""

from __future__ import annotations

import grpc

from pagedserve.executor.request import SamplingOptions


class RequestRejected(ValueError):
    """A request that can never run here; carries the gRPC status for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def check_request(
    prompt_token_ids: list[int],
    sampling: SamplingOptions,
    vocab_size: int,
    max_context_tokens: int,
    block_size_tokens: int,
    num_blocks: int,
) -> None:
    """Raises RequestRejected naming the field; returns None when the request can run."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if not prompt_token_ids:
        raise RequestRejected(invalid, "prompt_token_ids: must not be empty")
    if max(prompt_token_ids) >= vocab_size:
        raise RequestRejected(
            invalid,
            f"prompt_token_ids: {max(prompt_token_ids)} is outside the vocabulary of {vocab_size}",
        )
    if sampling.max_tokens < 1:
        raise RequestRejected(invalid, "sampling.max_tokens: must be at least 1")
    if sampling.n < 1 or sampling.beam_width < 1:
        raise RequestRejected(invalid, "sampling.n and sampling.beam_width: must be at least 1")
    if sampling.beam_width > 1 and sampling.n > sampling.beam_width:
        raise RequestRejected(
            invalid,
            f"sampling.n: beam search returns at most beam_width ({sampling.beam_width}) completions",
        )
    if sampling.beam_width == 1 and sampling.temperature < 0:
        raise RequestRejected(invalid, "sampling.temperature: must be >= 0")
    total_tokens = len(prompt_token_ids) + sampling.max_tokens
    if total_tokens > max_context_tokens:
        raise RequestRejected(
            invalid,
            f"sampling.max_tokens: prompt ({len(prompt_token_ids)} tokens) plus max_tokens "
            f"({sampling.max_tokens}) exceeds the model's context of {max_context_tokens} tokens",
        )
    blocks_needed = -(-total_tokens // block_size_tokens)
    if blocks_needed > num_blocks:
        raise RequestRejected(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"prompt plus max_tokens needs {blocks_needed} KV blocks; the whole pool has {num_blocks}",
        )
