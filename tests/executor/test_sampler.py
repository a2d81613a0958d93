"""The batched sampler against the definitions it implements: greedy rows take
the argmax, sampled rows follow softmax(logits / temperature) restricted to
top-k and to the top-p nucleus (frequencies over many draws against the
distribution computed in float64), the nucleus mask equals a whole-vocabulary
sort's, a seeded row draws the same tokens whatever shares its batch, and log
probabilities are the raw distribution's."""

from __future__ import annotations

import pytest
import torch

from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.sampler import _keep_top_p, make_generator, sample


def options(temperature=1.0, top_p=1.0, top_k=0, seed=0) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
    )


def expected_distribution(logits: torch.Tensor, o: SamplingOptions) -> torch.Tensor:
    """[vocab] float64: the definition, token by token."""
    scaled = logits.double() / o.temperature
    if o.top_k:
        kth = scaled.sort(descending=True).values[o.top_k - 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(-1)
    if o.top_p < 1.0:
        ranked, order = probs.sort(descending=True)
        before = ranked.cumsum(-1) - ranked
        kept = order[before < o.top_p]
        nucleus = torch.zeros_like(probs)
        nucleus[kept] = probs[kept]
        probs = nucleus / nucleus.sum()
    return probs


@pytest.mark.parametrize(
    "o",
    [options(0.7), options(1.3, top_k=5), options(1.0, top_p=0.8), options(0.9, 0.9, 6)],
    ids=["temperature", "top-k", "top-p", "top-k-and-top-p"],
)
def test_frequencies_follow_the_distribution(o):
    logits = torch.tensor([2.0, 1.5, 1.4, 0.3, 0.0, -0.5, -1.0, 1.0, 0.8, -2.0, 0.1, 0.5])
    num_draws = 20000
    batch = logits.expand(num_draws, -1).contiguous()
    generators = [make_generator(seed) for seed in range(num_draws)]
    tokens, _ = sample(batch, [o] * num_draws, generators)
    frequencies = torch.bincount(torch.tensor(tokens), minlength=len(logits)).double() / num_draws
    expected = expected_distribution(logits, o)
    assert frequencies[expected == 0].sum() == 0, "a token outside top-k / top-p was drawn"
    # 20,000 draws: a frequency's standard deviation is at most 0.0036.
    assert (frequencies - expected).abs().max() < 0.015


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * 3
    row_options = [options(0.0), options(1.0), options(0.0), options(0.8, top_k=1),
                   options(1.0, top_p=1e-6), options(0.0)]  # fmt: skip
    generators = [None if o.greedy else make_generator(7) for o in row_options]
    tokens, logprobs = sample(logits, row_options, generators)
    argmax = logits.argmax(-1).tolist()
    # Greedy rows, top-k 1 and a nucleus of one token: the argmax.
    for row in (0, 2, 3, 4, 5):
        assert tokens[row] == argmax[row]
    raw = torch.log_softmax(logits, -1)
    assert logprobs == pytest.approx([raw[row, t].item() for row, t in enumerate(tokens)])


def test_the_triton_draw_gives_the_references_tokens(monkeypatch):
    """The sampler with its draw on the Triton kernel (as on CUDA; here
    through Triton's interpreter) and on the torch reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = (torch.randn(6, 3000, generator=torch.Generator().manual_seed(5)) * 2).to(device)
    row_options = [options(0.8), options(1.0, top_p=0.9), options(0.0), options(0.7, 0.95, 40),
                   options(1.5), options(1.0, top_k=5)]  # fmt: skip
    draws = {}
    for path in ("torch", "triton"):
        monkeypatch.setenv("PAGEDSERVE_KERNELS", path)
        generators = [
            None if o.greedy else make_generator(row) for row, o in enumerate(row_options)
        ]
        draws[path] = sample(logits, row_options, generators)[0]
    assert draws["triton"] == draws["torch"]


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch():
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(2))
    mine = options(0.9, top_p=0.9, top_k=40, seed=11)
    alone_generator, batched_generator = make_generator(11), make_generator(11)
    others = [options(1.2), options(0.0), options(0.7, top_k=3), options(1.0, top_p=0.5)]
    alone, batched = [], []
    for step in range(20):
        step_logits = logits.roll(step, dims=-1)
        alone += sample(step_logits[:1], [mine], [alone_generator])[0]
        other_generators = [None if o.greedy else make_generator(step) for o in others]
        tokens, _ = sample(step_logits, [mine, *others], [batched_generator, *other_generators])
        batched.append(tokens[0])
    assert alone == batched
    assert len(set(alone)) > 1


@pytest.mark.parametrize("spread", [1.0, 8.0], ids=["flat", "peaked"])
def test_nucleus_mask_equals_a_whole_sort(spread, monkeypatch):
    """2,048 tokens: a flat row's nucleus runs past the first candidates (the
    whole vocabulary is sorted then); peaked rows' lie within them, and no
    sort runs."""
    generator = torch.Generator().manual_seed(3)
    scaled = torch.randn(4, 2048, generator=generator) * spread
    top_ps = [0.9, 0.5, 1.0, 0.99]
    probs = scaled.softmax(-1)
    expected = []
    for row, top_p in enumerate(top_ps):
        ranked, order = probs[row].sort(descending=True)
        before = ranked.cumsum(-1) - ranked
        keep = torch.zeros(2048, dtype=torch.bool)
        keep[order[before < (top_p if top_p < 1.0 else 2.0)]] = True
        expected.append(keep)
    if spread > 1.0:

        def no_sort(*args, **kwargs):
            raise AssertionError("sorted the whole vocabulary")

        monkeypatch.setattr(torch, "sort", no_sort)
    masked = _keep_top_p(scaled, top_ps)
    for row, keep in enumerate(expected):
        assert torch.equal(torch.isfinite(masked[row]), keep)
