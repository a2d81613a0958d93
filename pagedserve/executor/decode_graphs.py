"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode step of a small model is bound by launching its kernels from Python
(docs/gpu.md: at 64 sequences of the default model, 428 launches and 4.5 ms of
GPU work in an eager step of 21-22 ms, 8.4 ms replayed). Captured once at
start, the forward pass of a step becomes one graph launch. A graph's shapes
and addresses are fixed, so the step's batch is copied into static buffers
(step_graphs.py), padded up to the next captured batch size:

- input_ids, positions [max_batch_size] int64; padding rows: token 0 at position 0;
- slot_mapping [max_batch_size] int64; padding rows: PADDING_SLOT, which
  write_kv_cache skips, so that padding never writes into the KV pool (other
  executors attach to the same pool);
- block_tables [max_batch_size, max_blocks_per_seq] int32, one width that
  holds the longest context; padding rows have seq_len 1 and so read one key
  of the block in their first column, a valid block id (every entry of the
  table is one: 0 at start, real ids after); their outputs are discarded;
- seq_lens [max_batch_size] int32;
- logits_indices [max_batch_size] int64: the rows sampled, first;
- logits [max_batch_size, vocab] float32: what every graph writes.

Rows are independent through the whole forward pass (GEMMs, norms, attention
per sequence), so padding rows do not change the real rows' values; a GEMM of
more rows may still choose another algorithm and round differently.

The decode kernel chooses its partitions from the block table's width (it
never syncs), so at the fixed width it splits keys as for the longest context;
the programs past a sequence's end return at once.

Graphs are captured largest first into one memory pool shared with the
runner's prefill graphs; where nothing is captured (the CPU), replay runs the
same forward pass eagerly on the same buffers (step_graphs.py).
"""

from __future__ import annotations

import bisect

import torch

from pagedserve.executor.llama import AttentionBatch, LlamaForCausalLM
from pagedserve.executor.step_graphs import StepGraphs
from pagedserve.kernels import PADDING_SLOT

# Captured batch sizes: every small size a lone request or a few meet, then
# steps of 32 (vLLM captures a similar ladder).
_SMALL_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
_BATCH_SIZE_STEP = 32
# A bound on capture time and memory (each size is one more graph, and the
# static logits are max size x vocabulary floats); vLLM's default stops at 512
# too. Not measured here: at 200 sequences graphs still made a step 3x faster.
MAX_GRAPH_BATCH_SIZE = 512


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """The batch sizes to capture for a scheduler of max_num_seqs sequences a
    step: the ladder below it, then max_num_seqs itself (at most
    MAX_GRAPH_BATCH_SIZE), ascending."""
    largest = min(max_num_seqs, MAX_GRAPH_BATCH_SIZE)
    ladder = [
        *_SMALL_BATCH_SIZES,
        *range(_SMALL_BATCH_SIZES[-1] + _BATCH_SIZE_STEP, largest, _BATCH_SIZE_STEP),
    ]
    return [size for size in ladder if size < largest] + [largest]


class DecodeGraphs(StepGraphs):
    """Static decode inputs and outputs for a ladder of batch sizes (one token
    and one sequence row per batch row), and one captured graph per size once
    capture() ran."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: torch.Tensor,  # [layers, 2, num_blocks, block_size, Hkv, D]
        block_size_tokens: int,
        batch_sizes: list[int],
        max_context_tokens: int,
    ):
        super().__init__(model, kv_pool, block_size_tokens, batch_sizes, max_context_tokens)
        # The decode kernel does not read query_start_loc; the batch carries one.
        self.query_start_loc.copy_(torch.arange(len(self.query_start_loc)))
        self.seq_lens.fill_(1)

    def num_tokens(self, size: int) -> int:
        return size

    def num_seq_rows(self, size: int) -> int:
        return size

    def _batch(self, batch_size: int) -> AttentionBatch:
        return AttentionBatch(
            slot_mapping=self.slot_mapping[:batch_size],
            block_tables=self.block_tables[:batch_size],
            query_start_loc=self.query_start_loc[: batch_size + 1],
            seq_lens=self.seq_lens[:batch_size],
            decode_only=True,
        )

    def padded_size(self, num_tokens: int, num_seqs: int, max_blocks_per_seq: int) -> int | None:
        """The batch size (of the ladder) a decode batch of num_seqs sequences
        (num_tokens of them, one each) runs at, padded, or None when it does not
        fit (too many sequences, or a block table wider than the static one):
        such a batch runs eagerly."""
        if num_seqs > self.sizes[-1] or max_blocks_per_seq > self.max_blocks_per_seq:
            return None
        return self.sizes[bisect.bisect_left(self.sizes, num_seqs)]

    @torch.inference_mode()
    def load(
        self,
        batch_size: int,  # padded, from padded_size
        input_ids: list[int],  # [num_seqs]: one new token per sequence
        positions: list[int],  # [num_seqs]
        slot_mapping: list[int],  # [num_seqs]
        block_tables: list[list[int]],  # [num_seqs][width], width <= max_blocks_per_seq
        query_start_loc: list[int],  # [num_seqs + 1]: 0, 1, 2, ... (the static one serves)
        seq_lens: list[int],  # [num_seqs]
        logits_indices: list[int],  # [num_sampled]
    ) -> None:
        """Copies a decode batch into the static buffers, padded to batch_size:
        one host-to-device copy per buffer. Padding rows: token 0 at position
        0, PADDING_SLOT, seq_len 1 (one key of a valid block)."""
        num_padding = batch_size - len(input_ids)
        self._copy_rows(self.input_ids, input_ids + [0] * num_padding)
        self._copy_rows(self.positions, positions + [0] * num_padding)
        self._copy_rows(self.slot_mapping, slot_mapping + [PADDING_SLOT] * num_padding)
        self._copy_rows(self.seq_lens, seq_lens + [1] * num_padding)
        self._copy_rows(
            self.logits_indices, logits_indices + [0] * (batch_size - len(logits_indices))
        )
        # Only the real rows' first columns: the rest of the table keeps earlier
        # valid ids, which seq_lens keeps every row from reading past.
        self._copy_rows(self.block_tables, block_tables)

    def _fill_padding(self) -> None:
        """Every row a padding row: what capture runs on, so it writes nothing into the pool."""
        self.input_ids.zero_()
        self.positions.zero_()
        self.slot_mapping.fill_(PADDING_SLOT)
        self.block_tables.zero_()
        self.seq_lens.fill_(1)
        self.logits_indices.zero_()
