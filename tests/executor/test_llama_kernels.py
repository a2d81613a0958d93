"""The model's forward with every op on its Triton kernel, as on CUDA (without
a GPU, through Triton's interpreter), against the same forward on the torch
references, as on the CPU: the layer ops (norms with the residual add fused,
rotary embedding, SiLU-and-mul) and attention, over fresh prompts, a prompt
chunked after cached context, and decode steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.prefill_graphs import PrefillGraphs
from pagedserve.executor.step_plan import ScheduledChunk
from pagedserve.kernels import decode_rows
from tests.executor.helpers import (
    BLOCK_SIZE,
    TINY,
    decode_chunks,
    new_pool,
    new_sequences,
    tiny_model,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Qwen3's variant: a bias on q, k and v, and an RMSNorm over each head of q and k.
TINY_QK_NORM = dataclasses.replace(TINY, name="tiny-qk-norm", qkv_bias=True, qk_norm=True)


@pytest.mark.parametrize("config", [TINY, TINY_QK_NORM], ids=["llama", "qk-norm"])
def test_triton_forward_matches_the_references(config, monkeypatch):
    model = tiny_model(DEVICE, config)
    paths = {  # PAGEDSERVE_KERNELS -> a runner on its own pool, its own sequences
        kernels: (
            ModelRunner(model, new_pool(config, DEVICE), BLOCK_SIZE),
            new_sequences([3, 9, 4, 13], config.vocab_size),
        )
        for kernels in ("torch", "triton")
    }

    def step(make_chunks) -> list[int]:
        """One step on both paths: the same pools, logits and greedy tokens."""
        logits, tokens = {}, []
        for kernels, (runner, sequences) in paths.items():
            monkeypatch.setenv("PAGEDSERVE_KERNELS", kernels)
            chunks = make_chunks(sequences)
            logits[kernels] = runner.run(runner.prepare(chunks))
            tokens = logits[kernels].argmax(-1).tolist()
            sampled = [chunk.seq for chunk in chunks if chunk.needs_logits]
            for seq, token in zip(sampled, tokens, strict=True):
                seq.token_ids.append(token)
        torch.testing.assert_close(paths["triton"][0].kv_pool, paths["torch"][0].kv_pool)
        torch.testing.assert_close(logits["triton"], logits["torch"], atol=1e-4, rtol=1e-4)
        assert logits["triton"].argmax(-1).tolist() == tokens
        return tokens

    # Fresh prompts, the last one's first 8 tokens only; then its other 5
    # after those 8 cached, beside decode; then decode.
    step(lambda seqs: [ScheduledChunk(seq, 0, seq.num_tokens) for seq in seqs[:3]]
         + [ScheduledChunk(seqs[3], 0, 8)])  # fmt: skip
    step(lambda seqs: [ScheduledChunk(seqs[3], 8, 5)] + decode_chunks(seqs[:3]))
    outputs = [step(decode_chunks) for _ in range(3)]
    assert len({token for tokens in outputs for token in tokens}) > 1, "degenerate model"


def test_split_decode_rows_match_the_references(monkeypatch):
    """A decode row beside a prompt chunk, split into parts by the host's plan
    (parts of 4 positions here, so that the tiny model's short contexts
    split), through an eager runner and through the prefill graphs' static
    buffers (replayed without capture on the CPU), against the references."""
    monkeypatch.setattr(decode_rows, "_MIN_PARTITION_TOKENS", 4)
    monkeypatch.setattr(decode_rows, "_PART_GRANULE", 4)
    model = tiny_model(DEVICE)
    runners = {
        name: ModelRunner(model, new_pool(TINY, DEVICE), BLOCK_SIZE)
        for name in ("torch", "triton", "triton graphs")
    }
    graphs = runners["triton graphs"]
    graphs.prefill_graphs = PrefillGraphs(model, graphs.kv_pool, BLOCK_SIZE, [16, 32], 8, 32)
    sequences = {name: new_sequences([13, 9], TINY.vocab_size) for name in runners}
    steps = [
        lambda seqs: [ScheduledChunk(seqs[0], 0, 13), ScheduledChunk(seqs[1], 0, 5)],
        # The first one's decode (14 positions) beside the other's last 4 prompt tokens.
        lambda seqs: decode_chunks(seqs[:1]) + [ScheduledChunk(seqs[1], 5, 4)],
    ]
    for make_chunks in steps:
        logits = {}
        for name, runner in runners.items():
            monkeypatch.setenv("PAGEDSERVE_KERNELS", name.split()[0])
            inputs = runner.prepare(make_chunks(sequences[name]))
            logits[name] = runner.run(inputs)
            for seq, token in zip(
                [chunk.seq for chunk in make_chunks(sequences[name]) if chunk.needs_logits],
                logits[name].argmax(-1).tolist(),
                strict=True,
            ):
                seq.token_ids.append(token)
            if name != "torch" and make_chunks is steps[-1]:
                assert inputs.batch.decode_split[0].item() == 4, "the decode row was not split"
        for name in ("triton", "triton graphs"):
            torch.testing.assert_close(logits[name], logits["torch"], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(runners[name].kv_pool, runners["torch"].kv_pool)
