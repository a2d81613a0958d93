"""The padded path of prefill_graphs.py, run eagerly on the CPU (CI has no GPU):
steps with prompt tokens (fresh prompts, a prompt chunked after cached
context, prompts beside decode) give the same logits and tokens as the eager
path, padding writes nothing into the pool, and steps that do not fit run
eagerly. With a GPU, the same checks on captured graphs."""

from __future__ import annotations

import pytest
import torch

from pagedserve import kernels
from pagedserve.executor.model_runner import ModelInputs, ModelRunner
from pagedserve.executor.prefill_graphs import PrefillGraphs, graph_token_counts
from pagedserve.executor.step_graphs import GraphVariant
from pagedserve.executor.step_plan import ScheduledChunk
from pagedserve.kernels.prefill_options import prefill_config
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
# From this capacity on, the prefill kernel takes its long-sequence tiles (bf16).
_LONG_TABLE_TOKENS = 4096


def test_graph_token_counts():
    assert graph_token_counts(2048) == [16, 32, 64, 128, 256, 512, 1024, 2048]
    assert graph_token_counts(100) == [16, 32, 64, 100]
    assert graph_token_counts(16) == [16]
    assert graph_token_counts(8192)[-2:] == [1024, 2048]


def _fresh(seqs, num_tokens_of_last: int) -> list[ScheduledChunk]:
    """Every prompt whole, the last one's first num_tokens_of_last tokens only."""
    chunks = [ScheduledChunk(seq, 0, seq.num_tokens) for seq in seqs[:-1]]
    return chunks + [ScheduledChunk(seqs[-1], 0, num_tokens_of_last)]


def run_side_by_side(eager: ModelRunner, padded: ModelRunner, chunks: dict) -> ModelInputs:
    """One step through an eager runner and a padded one, each on its own
    copy of the pool (chunks: runner -> its chunks), checked; the sampled
    tokens appended to both runners' sequences. Returns the padded inputs."""
    pool_before = padded.kv_pool.clone()
    eager_logits = eager.run(eager.prepare(chunks[eager]))
    inputs = padded.prepare(chunks[padded])
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
    return inputs


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
        assert run_side_by_side(eager, padded, chunks).graph_size == expected_size


def run_variant_steps(model, device="cpu", capture=False) -> None:
    """Steps that take each variant of a size, through an eager runner and a
    padded one, checked: fresh prompts, then steps with cached context at a
    narrow table and at a wide one. The widths are given: this model's
    attention (float32) makes one choice at every width, and which choice a
    width gets is the kernels' test (test_table_widths_give_...)."""
    config = model.config
    narrow, wide = 8, 12
    eager = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    padded = ModelRunner(model, new_pool(config, device), BLOCK_SIZE)
    graphs = PrefillGraphs(
        model, padded.kv_pool, BLOCK_SIZE, TOKEN_COUNTS, 8, wide * BLOCK_SIZE, [narrow, wide]
    )
    if capture:
        graphs.capture()
    padded.prefill_graphs = graphs
    sequences = {
        runner: new_sequences([3, 9, 4, 13], config.vocab_size) for runner in (eager, padded)
    }

    def widened(seqs):
        # Table entries past a sequence's tokens are never read: they only
        # make the step's tables wider than the narrow variant's.
        seqs[0].block_ids += [0] * (narrow + 1 - len(seqs[0].block_ids))
        return [ScheduledChunk(seqs[3], 9, 4)] + decode_chunks(seqs[:3])

    steps = [
        # Fresh prompts: the attention without the block-table path.
        (lambda seqs: _fresh(seqs, 5), narrow, False),
        # A chunk after cached context, beside decodes: the narrow table.
        (lambda seqs: [ScheduledChunk(seqs[3], 5, 4)] + decode_chunks(seqs[:3]), narrow, True),
        # One table wider than the narrow variant's: the wide one.
        (widened, wide, True),
    ]
    for make_chunks, width, cached_context in steps:
        chunks = {runner: make_chunks(seqs) for runner, seqs in sequences.items()}
        inputs = run_side_by_side(eager, padded, chunks)
        assert inputs.graph_variant == GraphVariant(width, cached_context)
        assert inputs.batch.block_tables.shape[1] == width
        assert inputs.batch.cached_context == cached_context


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


def test_steps_take_the_first_variant_that_holds_them():
    run_variant_steps(tiny_model())


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_table_widths_give_each_table_its_own_launch_options(block_size, dtype):
    """A step whose table is w blocks wide, run at the narrowest width that
    holds it, gets the prefill options of its own width."""
    max_blocks = 2 * _LONG_TABLE_TOKENS // block_size + 3
    widths = kernels.prefill_table_widths(max_blocks, block_size, 128, dtype)
    assert widths == sorted(set(widths)) and widths[-1] == max_blocks
    for width in range(1, max_blocks + 1):
        taken = next(w for w in widths if w >= width)
        own = prefill_config(128, width * block_size, dtype)
        assert prefill_config(128, taken * block_size, dtype) == own, (width, taken)
    # A width per choice, no more (float32 makes one choice at every width).
    choices = {str(prefill_config(128, w * block_size, dtype)) for w in widths}
    assert len(choices) == len(widths) == (2 if dtype == torch.bfloat16 else 1)
    assert kernels.prefill_table_widths(8, block_size, 128, dtype) == [8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("max_num_seqs", [8, 4])
def test_captured_prefill_graphs_match_eager_on_cuda(max_num_seqs):
    run_prefill_steps(tiny_model("cuda"), max_num_seqs, device="cuda", capture=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_variants_match_eager_on_cuda():
    run_variant_steps(tiny_model("cuda"), device="cuda", capture=True)


@pytest.mark.parametrize("widths", [[12, 8], [8, 10], [8, 8, 12]])
def test_table_widths_must_ascend_to_the_static_width(widths):
    model = tiny_model()
    with pytest.raises(ValueError, match="table_widths"):
        PrefillGraphs(model, new_pool(TINY), BLOCK_SIZE, TOKEN_COUNTS, 8, 12 * BLOCK_SIZE, widths)
