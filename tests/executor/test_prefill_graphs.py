"""The padded path of prefill_graphs.py, run eagerly on the CPU (CI has no GPU):
steps with prompt tokens (fresh prompts, a prompt chunked after cached
context, prompts beside decode) give the same logits and tokens as the eager
path, padding writes nothing into the pool, and steps that do not fit run
eagerly. With a GPU, the same checks on captured graphs."""

from __future__ import annotations

import pytest
import torch

from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.prefill_graphs import PrefillGraphs, graph_token_counts
from pagedserve.executor.step_plan import ScheduledChunk
from tests.executor.helpers import (
    BLOCK_SIZE,
    TINY,
    decode_chunks,
    new_pool,
    new_sequences,
    tiny_model,
    written_slots_mask,
)

TOKEN_COUNTS = [8, 16, 32]
MAX_CONTEXT_TOKENS = 32  # 8 blocks: the sequences' tables


def test_graph_token_counts():
    assert graph_token_counts(2048) == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert graph_token_counts(100) == [16, 32, 64, 100]
    assert graph_token_counts(16) == [16]
    assert graph_token_counts(8192)[-2:] == [1024, 2048]


def _fresh(seqs, num_tokens_of_last: int) -> list[ScheduledChunk]:
    """Every prompt whole, the last one's first num_tokens_of_last tokens only."""
    chunks = [ScheduledChunk(seq, 0, seq.num_tokens) for seq in seqs[:-1]]
    return chunks + [ScheduledChunk(seqs[-1], 0, num_tokens_of_last)]


def run_prefill_steps(model, max_num_seqs: int, device="cpu", capture=False) -> None:
    """Three steps through an eager runner and a padded one, side by side,
    each on its own copy of the pool, checked after each step."""
    config = model.config
    eager = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    padded = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    if capture:
        padded.capture_prefill_graphs(TOKEN_COUNTS, max_num_seqs, MAX_CONTEXT_TOKENS)
    else:
        padded.prefill_graphs = PrefillGraphs(
            model, padded.kv_pool, BLOCK_SIZE, TOKEN_COUNTS, max_num_seqs, MAX_CONTEXT_TOKENS
        )
    sequences = {
        runner: new_sequences([3, 9, 4, 13], config.vocab_size) for runner in (eager, padded)
    }
    steps = [
        # 3 + 9 + 4 + 5 = 21 tokens of 4 sequences: padded to 32.
        (lambda seqs: _fresh(seqs, 5), 32),
        # The last prompt's other 8 tokens after its 5 cached, beside 3 decodes: 11, padded to 16.
        (lambda seqs: [ScheduledChunk(seqs[3], 5, 8)] + decode_chunks(seqs[:3]), 16),
        # A decode step beside nothing else is decode-only: not for these graphs.
        (decode_chunks, None),
    ]
    for make_chunks, expected_size in steps:
        chunks = {runner: make_chunks(seqs) for runner, seqs in sequences.items()}
        pool_before = padded.kv_pool.clone()
        eager_logits = eager.run(eager.prepare(chunks[eager]))
        inputs = padded.prepare(chunks[padded])
        assert inputs.graph_size == expected_size
        padded_logits = padded.run(inputs)
        # A GEMM of more rows may round differently, never by more than float32 rounding.
        torch.testing.assert_close(padded_logits, eager_logits, atol=1e-4, rtol=1e-4)
        tokens = eager_logits.argmax(-1).tolist()
        assert padded_logits.argmax(-1).tolist() == tokens
        # Only the real tokens' slots changed, to the eager path's values.
        owned = written_slots_mask(padded.kv_pool, chunks[padded])
        assert torch.equal(padded.kv_pool[~owned], pool_before[~owned])
        torch.testing.assert_close(padded.kv_pool, eager.kv_pool, atol=1e-4, rtol=1e-4)
        for runner_chunks in chunks.values():
            sampled = [chunk.seq for chunk in runner_chunks if chunk.needs_logits]
            for seq, token in zip(sampled, tokens, strict=True):
                seq.token_ids.append(token)


# 8 sequence rows: a padding sequence owns the padding tokens, empty rows after
# it. 4 rows: every row is a real sequence, the padding tokens belong to none.
@pytest.mark.parametrize("max_num_seqs", [8, 4])
def test_padded_prefill_matches_eager(max_num_seqs):
    run_prefill_steps(tiny_model(), max_num_seqs)


def test_steps_that_do_not_fit_run_eagerly():
    model = tiny_model()
    runner = ModelRunner(model, new_pool(TINY), BLOCK_SIZE)
    runner.prefill_graphs = PrefillGraphs(model, runner.kv_pool, BLOCK_SIZE, [8, 16], 2, 32)
    sequences = new_sequences([3, 5, 9], TINY.vocab_size)
    whole = [ScheduledChunk(seq, 0, seq.num_tokens) for seq in sequences]
    assert runner.prepare(whole[:1]).graph_size == 8
    assert runner.prepare(whole[1:]).graph_size == 16  # 14 tokens
    assert runner.prepare(whole).graph_size is None  # 17 tokens, and 3 sequences > 2 rows
    assert runner.prepare(whole[:2]).graph_size == 8  # 8 tokens, 2 sequences: fits
    # A table wider than the static one (32 tokens: 8 blocks).
    sequences[0].block_ids += [40]
    assert runner.prepare(whole[:1]).graph_size is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("max_num_seqs", [8, 4])
def test_captured_prefill_graphs_match_eager_on_cuda(max_num_seqs):
    run_prefill_steps(tiny_model("cuda"), max_num_seqs, device="cuda", capture=True)
