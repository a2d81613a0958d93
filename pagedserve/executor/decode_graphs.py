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
never syncs). At one fixed width it would split keys as for the longest
context, and a step of short sequences would keep only the first partitions
busy (the programs past a sequence's end return at once). So each batch size
that the kernel splits has variants at table widths doubling up to the
longest context (kernels.decode_table_widths), over the same buffers, and a
step replays the narrowest that holds its tables.

Graphs are captured largest first into one memory pool shared with the
runner's prefill graphs; where nothing is captured (the CPU), replay runs the
same forward pass eagerly on the same buffers (step_graphs.py).
"""

from __future__ import annotations

import torch

from pagedserve import kernels
from pagedserve.executor.llama import LlamaForCausalLM
from pagedserve.executor.step_graphs import GraphVariant, StepGraphs

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
    and one sequence row per batch row), and one captured graph per size and
    table width once capture() ran."""

    decode_only = True

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

    def num_seq_rows(self, size: int) -> int:
        return size

    def _variants(self, size: int) -> list[GraphVariant]:
        widths = kernels.decode_table_widths(
            size,
            self.model.config.num_kv_heads,
            self.max_blocks_per_seq,
            self.block_size_tokens,
            self.device,
        )
        return [GraphVariant(width) for width in widths]

    def _load_sequence_rows(
        self, batch_size: int, query_start_loc: list[int], seq_lens: list[int]
    ) -> None:
        """Padding rows: seq_len 1 (one key of a valid block); the static
        query_start_loc (0, 1, 2, ...) serves every batch."""
        self._copy_rows(self.seq_lens, seq_lens + [1] * (batch_size - len(seq_lens)))

    def _fill_padding_rows(self) -> None:
        self.seq_lens.fill_(1)
