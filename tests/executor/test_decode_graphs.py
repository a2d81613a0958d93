"""The padded decode path of decode_graphs.py, run eagerly on the CPU (CI has no
GPU): the same logits and tokens as the eager path for the real rows, no write
into the pool for padding rows, eager fallback for batches that do not fit.
With a GPU, the same checks on captured graphs."""

from __future__ import annotations

import pytest
import torch

from pagedserve.executor.decode_graphs import DecodeGraphs, graph_batch_sizes
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.step_plan import ScheduledChunk
from tests.executor.helpers import (
    BLOCK_SIZE,
    TINY,
    decode_chunks,
    default_model,
    new_pool,
    new_sequences,
    prefill,
    tiny_model,
    written_slots_mask,
)


def run_decode_steps(model, batch_sizes, prompt_lens, num_steps, device="cpu", capture=False):
    """Decode steps through an eager runner and a padded one, side by side,
    each on its own copy of the pool; checks every step; returns the tokens."""
    config = model.config
    eager = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    padded = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    graphs = DecodeGraphs(model, padded.kv_pool, BLOCK_SIZE, batch_sizes, config.max_context_tokens)
    if capture:
        graphs.capture()
    padded.decode_graphs = graphs
    sequences = new_sequences(prompt_lens, config.vocab_size)
    prefill([eager, padded], sequences)
    expected_size = graphs.padded_size(len(sequences), len(sequences), 8)
    assert expected_size > len(sequences), "the test wants padding rows"
    for _ in range(num_steps):
        chunks = decode_chunks(sequences)
        pool_before = padded.kv_pool.clone()
        eager_logits = eager.run(eager.prepare(chunks))
        inputs = padded.prepare(chunks)
        assert inputs.graph_size == expected_size
        padded_logits = padded.run(inputs)
        assert padded_logits.shape == eager_logits.shape == (len(sequences), config.vocab_size)
        # A GEMM of more rows may round differently (seen on the CPU: 3e-5 on
        # logits of the default model), never by more than float32 rounding.
        torch.testing.assert_close(padded_logits, eager_logits, atol=1e-4, rtol=1e-4)
        tokens = eager_logits.argmax(-1).tolist()
        assert padded_logits.argmax(-1).tolist() == tokens
        # Only the real tokens' slots changed, to the eager path's values:
        # the padding rows wrote nowhere (bit for bit).
        owned = written_slots_mask(padded.kv_pool, chunks)
        assert torch.equal(padded.kv_pool[~owned], pool_before[~owned])
        torch.testing.assert_close(padded.kv_pool, eager.kv_pool, atol=1e-4, rtol=1e-4)
        for seq, token in zip(sequences, tokens, strict=True):
            seq.token_ids.append(token)
    return [seq.output_token_ids() for seq in sequences]


def test_graph_batch_sizes():
    assert graph_batch_sizes(256) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256]
    assert graph_batch_sizes(50) == [1, 2, 4, 8, 16, 24, 32, 48, 50]
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(4096)[-2:] == [480, 512]


def test_padded_decode_matches_eager_tiny_model():
    # 5 sequences run at 8, three padding rows.
    tokens = run_decode_steps(tiny_model(), [2, 8], [3, 9, 4, 13, 6], num_steps=6)
    assert len({tuple(t) for t in tokens}) > 1, "degenerate model: every sequence alike"


def test_padded_decode_matches_eager_default_model():
    """The real default model, greedy: the same tokens with the padded path."""
    run_decode_steps(default_model(), [4], [5, 17, 9], num_steps=4)


def test_batches_that_do_not_fit_run_eagerly():
    model = tiny_model()
    runner = ModelRunner(model, new_pool(TINY), BLOCK_SIZE)
    runner.decode_graphs = DecodeGraphs(model, runner.kv_pool, BLOCK_SIZE, [1, 2], 64)
    sequences = new_sequences([3, 5, 2], TINY.vocab_size)
    prefill_inputs = runner.prepare([ScheduledChunk(seq, 0, seq.num_tokens) for seq in sequences])
    assert prefill_inputs.graph_size is None
    runner.run(prefill_inputs)
    for seq in sequences:
        seq.token_ids.append(1)
    # Three sequences, graphs of at most two.
    assert runner.prepare(decode_chunks(sequences)).graph_size is None
    assert runner.prepare(decode_chunks(sequences[:2])).graph_size == 2
    # A table wider than the static one (16 tokens: 4 blocks); these have 8.
    runner.decode_graphs = DecodeGraphs(model, runner.kv_pool, BLOCK_SIZE, [4], 16)
    assert runner.prepare(decode_chunks(sequences[:1])).graph_size is None


def run_width_steps(model, device="cpu", capture=False) -> None:
    """Decode steps of two sequences through graphs whose size the kernel
    splits, one variant per table width: a step replays the narrowest width
    that holds its tables, with the eager path's logits."""
    config = model.config
    eager = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    padded = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    # Wide enough that the kernel splits two sequences' keys at several
    # widths on the CPU's 4 pretend multiprocessors and on an H100's 132.
    max_context_tokens = 1 << 16
    graphs = DecodeGraphs(model, padded.kv_pool, BLOCK_SIZE, [2], max_context_tokens)
    if capture:
        graphs.capture()
    padded.decode_graphs = graphs
    widths = [variant.table_width for variant in graphs.variants[2]]
    assert len(widths) >= 2 and widths[-1] == max_context_tokens // BLOCK_SIZE
    sequences = new_sequences([5, 11], config.vocab_size)
    prefill([eager, padded], sequences)
    for width in widths[:2]:
        if width > widths[0]:
            # Entries past a sequence's tokens are never read: they only make
            # its table wider than the narrower variant's.
            sequences[0].block_ids += [0] * (width - len(sequences[0].block_ids))
        chunks = decode_chunks(sequences)
        eager_logits = eager.run(eager.prepare(chunks))
        inputs = padded.prepare(chunks)
        assert inputs.graph_variant.table_width == width
        assert inputs.batch.block_tables.shape[1] == width
        torch.testing.assert_close(padded.run(inputs), eager_logits, atol=1e-4, rtol=1e-4)
        for seq, token in zip(sequences, eager_logits.argmax(-1).tolist(), strict=True):
            seq.token_ids.append(token)


def test_decode_steps_take_the_narrowest_width_that_holds_them():
    run_width_steps(tiny_model())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_widths_match_eager_on_cuda():
    run_width_steps(tiny_model("cuda"), device="cuda", capture=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_graphs_match_eager_on_cuda():
    tokens = run_decode_steps(
        tiny_model("cuda"), [1, 2, 4, 8], [3, 9, 4, 13, 6], num_steps=4, device="cuda", capture=True
    )
    assert all(len(t) == 5 for t in tokens)
