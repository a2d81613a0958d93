"""The models, pools and sequences the executor's tests run: a tiny random
Llama with real margins between its logits, and the real default model."""

from __future__ import annotations

import functools

import torch

from pagedserve.executor.model_config import ModelConfig, load_model_config
from pagedserve.executor.model_loader import load_model
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.model_store import resolve_model_path
from pagedserve.executor.request import Sequence
from pagedserve.executor.step_plan import ScheduledChunk

BLOCK_SIZE = 4
NUM_BLOCKS = 48
TINY = ModelConfig(
    name="tiny",
    model_type="llama",
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_context_tokens=64,
    tie_word_embeddings=False,
    qkv_bias=False,
    qk_norm=False,
    eos_token_ids=(),
    bos_token_id=None,
)


@functools.cache
def tiny_model(device: str = "cpu", config: ModelConfig = TINY):
    model = load_model(config, None, torch.device(device), torch.float32, random_seed=3)
    # Weights of std 0.02 give logits within a hair of each other; larger ones
    # give greedy choices with real margins. Norm weights near 1, not all 1,
    # so that the norms' multiply by them counts.
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return model


@functools.cache
def default_model():
    path = resolve_model_path("default")
    return load_model(load_model_config(path), path, torch.device("cpu"), torch.float32)


def new_pool(config: ModelConfig, device: str = "cpu") -> torch.Tensor:
    """Random values, never zeros: a stray write changes some byte."""
    shape = (config.num_layers, 2, NUM_BLOCKS, BLOCK_SIZE, config.num_kv_heads, config.head_dim)
    return torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(device)


def new_sequences(prompt_lens: list[int], vocab_size: int) -> list[Sequence]:
    """Sequences with disjoint blocks, none of them block 0 (what padding rows read)."""
    sequences, next_block = [], 1
    for index, length in enumerate(prompt_lens):
        prompt = [(11 * position + 5 * index + 1) % vocab_size for position in range(length)]
        seq = Sequence(index, None, 0, prompt)
        num_blocks = 8  # room for the prompt and the decode steps
        seq.block_ids = list(range(next_block, next_block + num_blocks))
        next_block += num_blocks
        sequences.append(seq)
    return sequences


def prefill(runners: list[ModelRunner], sequences: list[Sequence]) -> None:
    """The prompts' K/V into every runner's pool (eager: not decode-only); first tokens."""
    chunks = [ScheduledChunk(seq, 0, seq.num_tokens) for seq in sequences]
    logits = [runner.run(runner.prepare(chunks)) for runner in runners]
    for seq, token in zip(sequences, logits[0].argmax(-1).tolist(), strict=True):
        seq.token_ids.append(token)


def decode_chunks(sequences: list[Sequence]) -> list[ScheduledChunk]:
    return [ScheduledChunk(seq, seq.num_tokens - 1, 1) for seq in sequences]


def written_slots_mask(pool: torch.Tensor, chunks: list[ScheduledChunk]) -> torch.Tensor:
    """True at every pool element the chunks' tokens own: [layers, 2, blocks, block_size, ...]."""
    mask = torch.zeros(pool.shape[2:4], dtype=torch.bool)
    for chunk in chunks:
        for position in range(chunk.start, chunk.start + chunk.num_new_tokens):
            block = chunk.seq.block_ids[position // BLOCK_SIZE]
            mask[block, position % BLOCK_SIZE] = True
    return mask[None, None, :, :, None, None].expand(pool.shape).to(pool.device)
