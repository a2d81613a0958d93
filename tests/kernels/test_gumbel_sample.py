"""Gumbel sampling: the Triton kernel against its torch reference (the same
hashed noise bit for bit, the same tokens), masked tokens never drawn, and the
reference's draws following softmax over many seeds."""

import pytest
import torch
from paged_kv_helpers import DEVICE

from pagedserve.kernels.gumbel_sample import (
    gumbel_sample_reference,
    gumbel_sample_triton,
    hashed_uniforms_reference,
)


def seeds_for(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1 << 31, (rows,), generator=generator, dtype=torch.int32).to(DEVICE)


@pytest.mark.parametrize("rows,vocab_size", [(3, 100), (5, 2048), (4, 5000)])
def test_triton_draws_the_reference_tokens(rows, vocab_size):
    generator = torch.Generator().manual_seed(rows * vocab_size)
    # Two spreads: near-uniform rows (the noise decides) and peaked ones.
    scaled = torch.randn(rows, vocab_size, generator=generator).to(DEVICE)
    scaled[::2] *= 0.05
    scaled[1::2] *= 4.0
    seeds = seeds_for(rows, generator)
    assert torch.equal(gumbel_sample_triton(scaled, seeds), gumbel_sample_reference(scaled, seeds))


def test_masked_tokens_are_never_drawn():
    generator = torch.Generator().manual_seed(1)
    scaled = torch.randn(64, 3000, generator=generator).to(DEVICE)
    allowed = torch.rand(64, 3000, generator=generator).to(DEVICE) < 0.01
    allowed[:, 2999] = True  # the last token, in the last partial block
    scaled = scaled.masked_fill(~allowed, float("-inf"))
    seeds = seeds_for(64, generator)
    for draw in (gumbel_sample_triton(scaled, seeds), gumbel_sample_reference(scaled, seeds)):
        assert allowed.gather(1, draw[:, None]).all()


def test_uniforms_are_uniform_and_keyed_by_seed():
    seeds = torch.tensor([0, 1, 2**31 - 1], dtype=torch.int32, device=DEVICE)
    uniforms = hashed_uniforms_reference(seeds, 100_000)
    assert ((uniforms > 0) & (uniforms < 1)).all()
    assert uniforms.mean(-1).sub(0.5).abs().max() < 0.005  # 100,000 draws: sd 0.0009
    histogram = torch.histc(uniforms[0].cpu(), bins=10, min=0, max=1) / 100_000
    assert histogram.sub(0.1).abs().max() < 0.005
    assert not torch.equal(uniforms[0], uniforms[1])
    assert torch.equal(hashed_uniforms_reference(seeds[1:2], 100_000)[0], uniforms[1])


def test_reference_draws_follow_softmax():
    scaled = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5], device=DEVICE)
    num_draws = 20_000
    seeds = torch.arange(num_draws, dtype=torch.int32, device=DEVICE) * 7919
    draws = gumbel_sample_reference(scaled.expand(num_draws, -1).contiguous(), seeds)
    frequencies = torch.bincount(draws, minlength=5).double().cpu() / num_draws
    assert frequencies.sub(scaled.double().softmax(-1).cpu()).abs().max() < 0.015


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="scaled"):
        gumbel_sample_triton(torch.zeros(2, 3, dtype=torch.float64, device=DEVICE),
                             torch.zeros(2, dtype=torch.int32, device=DEVICE))  # fmt: skip
    with pytest.raises(ValueError, match="seeds"):
        gumbel_sample_triton(torch.zeros(2, 3, device=DEVICE),
                             torch.zeros(3, dtype=torch.int32, device=DEVICE))  # fmt: skip
