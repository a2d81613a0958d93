"""Chooses the next token of each sequence from its logits.

Greedy rows take the argmax of the raw logits (what HF `generate` does with
do_sample=False). Sampled rows apply temperature, top-k and top-p, then draw
by the Gumbel-max trick over noise hashed from one seed a step, which the
sequence's own random.Random gives, so that a seeded completion gives the
same tokens whatever else shares its batch. Log probabilities are those of the
model's raw distribution (before temperature and truncation).

Every step is batched over the sampled rows (one top-k for all rows that use
top-k, one nucleus for all that use top-p, one draw): a loop over rows
launched some ten operations a row, which at 64 rows of a 49,152-token
vocabulary took 8-28 ms a step on an H100's host and 62-288 ms on a 2-core
CPU, against 0.7-1.7 and 29-48 ms now (benchmarks/sampler_bench.py, docs/gpu.md).
"""

from __future__ import annotations

import random

import torch

from pagedserve import kernels
from pagedserve.executor.request import SamplingOptions


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    options: list[SamplingOptions],
    generators: list[random.Random | None],  # the sequences' own; None for greedy rows
) -> tuple[list[int], list[float]]:
    """Returns the chosen token id and its log probability for each row."""
    chosen = torch.argmax(logits, dim=-1)  # [num_seqs]; greedy rows keep this
    rows = [row for row, row_options in enumerate(options) if not row_options.greedy]
    if rows:
        row_index = torch.tensor(rows, device=logits.device)
        # index_select: advanced indexing copies rows several times slower on the CPU.
        chosen[row_index] = _sample_rows(
            logits.index_select(0, row_index),
            [options[row] for row in rows],
            [generators[row] for row in rows],
        )
    # log softmax at the chosen tokens only: one pass over the logits, no
    # [num_seqs, vocab] output (on a 2-core CPU, 64 x 49,152: 6.6 ms a step).
    chosen_logprobs = logits.gather(1, chosen[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    # One device-to-host copy (and wait) for both: token ids are exact in float64.
    token_ids, logprobs = torch.stack((chosen.double(), chosen_logprobs.double())).tolist()
    return [int(token_id) for token_id in token_ids], logprobs


def _sample_rows(
    logits: torch.Tensor,  # [rows, vocab] float32
    options: list[SamplingOptions],  # temperature > 0
    generators: list[random.Random],
) -> torch.Tensor:  # [rows] int64
    device = logits.device
    temperatures = torch.tensor([o.temperature for o in options], device=device)
    scaled = logits / temperatures[:, None]
    scaled = _keep_top_k(scaled, [o.top_k for o in options])
    scaled = _keep_top_p(scaled, [o.top_p for o in options])
    # The Gumbel-max trick (kernels.gumbel_sample) depends on no
    # normalization, so a nucleus that gains or loses a token at its edge
    # (last-bit differences in the logits: another batch, another GEMM) does
    # not move the draw, as inverting a cumulative sum did. One seed per row
    # and step from the row's own generator, on the host: 0.04 ms for 256
    # rows, where a torch.Generator's took 0.56.
    seeds = torch.tensor([g.getrandbits(31) for g in generators], dtype=torch.int32).to(device)
    return kernels.gumbel_sample(scaled, seeds)


def _keep_top_k(scaled: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    """Masks with -inf every token below each row's k-th largest (rows with
    top_k 0, or k >= vocab, keep all)."""
    vocab_size = scaled.shape[-1]
    limited = [0 < k < vocab_size for k in top_ks]
    if not any(limited):
        return scaled
    largest_k = max(k for k, on in zip(top_ks, limited, strict=True) if on)
    top_values = torch.topk(scaled, largest_k, dim=-1).values  # [rows, largest_k], descending
    kth_index = torch.tensor(
        [k - 1 if on else 0 for k, on in zip(top_ks, limited, strict=True)], device=scaled.device
    )
    kth = top_values.gather(1, kth_index[:, None])  # [rows, 1]
    kth = kth.masked_fill(~torch.tensor(limited, device=scaled.device)[:, None], float("-inf"))
    return scaled.masked_fill(scaled < kth, float("-inf"))


# Tokens looked at first for top-p: a nucleus within them needs no full sort.
_TOP_P_CANDIDATES = 1024


def _keep_top_p(scaled: torch.Tensor, top_ps: list[float]) -> torch.Tensor:
    """Masks with -inf each row's tokens outside its top-p nucleus: a token goes
    when the more likely tokens before it already reach top_p (the most likely
    always stays). Rows with top_p 1 keep all.

    The nucleus is a prefix of the tokens by probability: when the
    _TOP_P_CANDIDATES most likely tokens of every row reach its top_p, only
    they are ranked (torch.topk); otherwise the whole vocabulary is sorted."""
    if all(p >= 1.0 for p in top_ps):
        return scaled
    probs = scaled.softmax(-1)  # [rows, vocab]
    # top_p >= 1 reads as 2: no cumulative sum reaches it.
    limits = torch.tensor([p if p < 1.0 else 2.0 for p in top_ps], device=scaled.device)
    candidates = min(_TOP_P_CANDIDATES, scaled.shape[-1])
    ranked_probs, order = torch.topk(probs, candidates, dim=-1)  # [rows, candidates], descending
    before = ranked_probs.cumsum(-1) - ranked_probs  # mass of the more likely tokens
    reached = ((before[:, -1] + ranked_probs[:, -1]) >= limits) | (limits > 1.0)
    if candidates < scaled.shape[-1] and not bool(reached.all()):
        ranked_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = ranked_probs.cumsum(-1) - ranked_probs
    keep_ranked = before < limits[:, None]
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_ranked)
    keep |= (limits > 1.0)[:, None]  # past the candidates too
    return scaled.masked_fill(~keep, float("-inf"))


def make_generator(seed: int) -> random.Random:
    """A sequence's generator, on the host: it gives one seed per drawn
    token, whatever device the logits are on."""
    return random.Random(seed)
