"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode step of a small model is bound by launching its kernels from Python
(docs/gpu.md: at 64 sequences of the default model, 428 launches and 4.5 ms of
GPU work in an eager step of 21-22 ms, 8.4 ms replayed). Captured once at start, the forward pass of a step becomes one
graph launch. A graph's shapes and addresses are fixed, so the step's batch is
copied into static buffers, padded up to the next captured batch size:

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

Graphs are captured largest first into one shared memory pool
(graph_capture.py). Where nothing is captured
(the CPU, or before capture), replay runs the same forward pass eagerly on the
same static buffers: the padded path is one code path, tested on the CPU.
"""

from __future__ import annotations

import bisect

import torch

from pagedserve.executor.graph_capture import CaptureReport, capture_graphs, replay
from pagedserve.executor.llama import AttentionBatch, LlamaForCausalLM
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


class DecodeGraphs:
    """Static decode inputs and outputs for a ladder of batch sizes, and one
    captured graph per size once capture() ran."""

    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: torch.Tensor,  # [layers, 2, num_blocks, block_size, Hkv, D]
        block_size_tokens: int,
        batch_sizes: list[int],
        max_context_tokens: int,
    ):
        if not batch_sizes or min(batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
        self.model = model
        self.kv_pool = kv_pool
        self.device = kv_pool.device
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_batch_size = self.batch_sizes[-1]
        self.max_blocks_per_seq = -(-max_context_tokens // block_size_tokens)
        size, device = self.max_batch_size, self.device
        self.input_ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((size,), PADDING_SLOT, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(
            size, self.max_blocks_per_seq, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.logits_indices = torch.zeros(size, dtype=torch.int64, device=device)
        vocab_size = model.config.vocab_size
        self.logits = torch.zeros(size, vocab_size, dtype=torch.float32, device=device)
        # The decode kernel does not read query_start_loc; the batch carries one.
        query_start_loc = torch.arange(size + 1, dtype=torch.int32, device=device)
        self._batches = {
            batch_size: AttentionBatch(
                slot_mapping=self.slot_mapping[:batch_size],
                block_tables=self.block_tables[:batch_size],
                query_start_loc=query_start_loc[: batch_size + 1],
                seq_lens=self.seq_lens[:batch_size],
                decode_only=True,
            )
            for batch_size in self.batch_sizes
        }
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def padded_size(self, num_seqs: int, max_blocks_per_seq: int) -> int | None:
        """The batch size (of the ladder) a decode batch of num_seqs sequences
        runs at, padded, or None when it does not fit (too many sequences, or a block table wider
        than the static one): such a batch runs eagerly."""
        if num_seqs > self.max_batch_size or max_blocks_per_seq > self.max_blocks_per_seq:
            return None
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, num_seqs)]

    def inputs(
        self, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionBatch, torch.Tensor]:
        """(input_ids, positions, batch, logits_indices) of the static buffers at batch_size."""
        return (
            self.input_ids[:batch_size],
            self.positions[:batch_size],
            self._batches[batch_size],
            self.logits_indices[:batch_size],
        )

    @torch.inference_mode()
    def load(
        self,
        batch_size: int,
        input_ids: list[int],  # [num_seqs]: one new token per sequence
        positions: list[int],  # [num_seqs]
        slot_mapping: list[int],  # [num_seqs]
        block_tables: list[list[int]],  # [num_seqs][width], width <= max_blocks_per_seq
        seq_lens: list[int],  # [num_seqs]
        logits_indices: list[int],  # [num_sampled]
    ) -> None:
        """Copies a decode batch into the static buffers, padded to batch_size
        (a size from padded_size): one host-to-device copy per buffer."""

        def fill(target: torch.Tensor, values: list[int], padding: int, length: int) -> None:
            host = torch.tensor(values + [padding] * (length - len(values)), dtype=target.dtype)
            target[:length].copy_(host, non_blocking=True)

        fill(self.input_ids, input_ids, 0, batch_size)
        fill(self.positions, positions, 0, batch_size)
        fill(self.slot_mapping, slot_mapping, PADDING_SLOT, batch_size)
        fill(self.seq_lens, seq_lens, 1, batch_size)
        fill(self.logits_indices, logits_indices, 0, batch_size)
        # Only the real rows' first columns: the rest of the table keeps earlier
        # valid ids, which seq_lens keeps every row from reading past.
        tables = torch.tensor(block_tables, dtype=torch.int32)  # [num_seqs, width]
        self.block_tables[: tables.shape[0], : tables.shape[1]].copy_(tables, non_blocking=True)

    def replay(self, batch_size: int) -> torch.Tensor:
        """Runs the forward pass on the static buffers at batch_size: the graph
        where one was captured, else eagerly. Returns the static logits
        [batch_size, vocab], rows in logits_indices order (overwritten by the
        next replay)."""
        graph = self._graphs.get(batch_size)
        if graph is None:
            self._forward(batch_size)
        else:
            replay(graph, self.device)
        return self.logits[:batch_size]

    @torch.inference_mode()
    def _forward(self, batch_size: int) -> None:
        input_ids, positions, batch, logits_indices = self.inputs(batch_size)
        logits = self.model(input_ids, positions, self.kv_pool, batch, logits_indices)
        self.logits[:batch_size].copy_(logits)

    def _fill_padding(self) -> None:
        """Every row a padding row: what capture runs on, so it writes nothing into the pool."""
        self.input_ids.zero_()
        self.positions.zero_()
        self.slot_mapping.fill_(PADDING_SLOT)
        self.block_tables.zero_()
        self.seq_lens.fill_(1)
        self.logits_indices.zero_()

    def capture(self, memory_pool=None) -> CaptureReport:
        """Captures one graph per batch size (graph_capture.capture_graphs), into
        memory_pool if given (the runner's, shared with its prefill graphs)."""
        self._graphs, report = capture_graphs(
            self.device,
            self.batch_sizes,
            self._forward,
            self._fill_padding,
            memory_pool,
        )
        return report
