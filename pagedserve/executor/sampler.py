"""Chooses the next token of each sequence from its logits.

Greedy rows take the argmax of the raw logits (what HF `generate` does with
do_sample=False). Sampled rows apply temperature, top-k and top-p, then draw
from the sequence's own torch.Generator, so a seeded completion gives the same
tokens whatever else shares its batch. Log probabilities are those of the
model's raw distribution (before temperature and truncation).
"""

from __future__ import annotations

import torch

from pagedserve.executor.request import SamplingOptions


def _truncate(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Masks tokens outside top-k and top-p with -inf; logits: [V], already scaled."""
    if options.top_k and options.top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, options.top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p; the first always stays.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    options: list[SamplingOptions],
    generators: list[torch.Generator | None],
) -> tuple[list[int], list[float]]:
    """Returns the chosen token id and its log probability for each row."""
    logprobs = torch.log_softmax(logits, dim=-1)  # [num_seqs, vocab]
    chosen = torch.argmax(logits, dim=-1)  # [num_seqs]; greedy rows keep this
    for row, row_options in enumerate(options):
        if row_options.greedy:
            continue
        scaled = _truncate(logits[row] / row_options.temperature, row_options)
        probs = scaled.softmax(-1)
        chosen[row] = torch.multinomial(probs, 1, generator=generators[row])[0]
    chosen_logprobs = logprobs.gather(1, chosen[:, None])[:, 0]
    return chosen.tolist(), chosen_logprobs.tolist()


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
