"""Chooses the next token of each sequence from its logits.

Greedy rows take the argmax of the raw logits (what HF `generate` does with
do_sample=False). Sampled rows apply temperature, top-k and top-p, then draw
with the exponential race over noise hashed from one seed a token, which the
sequence's own torch.Generator gives, so that a seeded completion gives the
same tokens whatever else shares its batch. Log probabilities are those of the
model's raw distribution (before temperature and truncation).

Every step is batched over the sampled rows (one sort for all rows that use
top-p, one top-k for all that use top-k, one draw): a loop over rows
launched some ten operations per row, which at 64 rows of a 49,152-token
vocabulary took 54-265 ms a step on a 2-core CPU (benchmarks/sampler_bench.py;
docs/gpu.md has the GPU's figures).
"""

from __future__ import annotations

import torch

from pagedserve.executor.request import SamplingOptions


def sample(
    logits: torch.Tensor,  # [num_seqs, vocab] float32
    options: list[SamplingOptions],
    generators: list[torch.Generator | None],  # CPU generators; None for greedy rows
) -> tuple[list[int], list[float]]:
    """Returns the chosen token id and its log probability for each row."""
    logprobs = torch.log_softmax(logits, dim=-1)  # [num_seqs, vocab]
    chosen = torch.argmax(logits, dim=-1)  # [num_seqs]; greedy rows keep this
    rows = [row for row, row_options in enumerate(options) if not row_options.greedy]
    if rows:
        row_index = torch.tensor(rows, device=logits.device)
        chosen[row_index] = _sample_rows(
            logits[row_index], [options[row] for row in rows], [generators[row] for row in rows]
        )
    chosen_logprobs = logprobs.gather(1, chosen[:, None])[:, 0]
    return chosen.tolist(), chosen_logprobs.tolist()


def _sample_rows(
    logits: torch.Tensor,  # [rows, vocab] float32
    options: list[SamplingOptions],  # temperature > 0
    generators: list[torch.Generator],
) -> torch.Tensor:  # [rows] int64
    device = logits.device
    temperatures = torch.tensor([o.temperature for o in options], device=device)
    scaled = logits / temperatures[:, None]
    scaled = _keep_top_k(scaled, [o.top_k for o in options])
    scaled = _keep_top_p(scaled, [o.top_p for o in options])
    probs = scaled.softmax(-1)  # [rows, vocab]
    # The exponential race: argmax of p / E with E ~ Exp(1) draws token i with
    # probability p_i, and is unchanged by scaling p, so a nucleus that gains
    # or loses a token at its edge (last-bit differences in the logits: another
    # batch, another GEMM) does not move the draw, as inverting the cumulative
    # sum did. One seed per row from the row's own generator (on the host: no
    # launch per row); the noise is a hash of (seed, token id).
    seeds = torch.tensor(
        [int(torch.randint(0, 1 << 31, (), generator=g)) for g in generators], dtype=torch.int32
    ).to(device)
    exponentials = _hashed_uniforms(seeds, probs.shape[-1]).log_().neg_()  # [rows, vocab]
    return probs.div_(exponentials).argmax(-1)


# SplitMix's golden-ratio increment and MurmurHash3's 32-bit finalizer
# constants, as signed int32 (torch's int32 products wrap around).
_GOLDEN_32 = 0x9E3779B9 - (1 << 32)
_MIX_1 = 0x85EBCA6B - (1 << 32)
_MIX_2 = 0xC2B2AE35 - (1 << 32)


def _shift_right_into(h: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    """out = logical right shift of int32 h (torch's >> keeps the sign)."""
    torch.bitwise_right_shift(h, bits, out=out)
    return out.bitwise_and_((1 << (32 - bits)) - 1)


def _hashed_uniforms(seeds: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab] float32 in (0, 1): uniform v of row r is a hash of
    (seeds[r], v), so the same on every device and whatever else shares the
    batch. seeds: [rows] int32. In place where it can: a few passes over
    [rows, vocab] int32."""
    token_ids = torch.arange(vocab_size, dtype=torch.int32, device=seeds.device)
    h = seeds[:, None] + token_ids[None, :] * _GOLDEN_32
    shifted = torch.empty_like(h)
    h.bitwise_xor_(_shift_right_into(h, 16, shifted)).mul_(_MIX_1)
    h.bitwise_xor_(_shift_right_into(h, 13, shifted)).mul_(_MIX_2)
    h.bitwise_xor_(_shift_right_into(h, 16, shifted))
    # 24 bits, exact in float32; + 0.5 keeps 0 and 1 out.
    uniforms = _shift_right_into(h, 8, shifted).to(torch.float32)
    return uniforms.add_(0.5).mul_(1.0 / (1 << 24))


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


def make_generator(seed: int) -> torch.Generator:
    """A sequence's generator, on the host: it gives one number per sampled
    token, whatever device the logits are on."""
    return torch.Generator().manual_seed(seed)
