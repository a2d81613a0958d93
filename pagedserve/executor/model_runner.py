"""Turns a step's chunks into the flat tensors the model takes, and runs it.

A batch becomes: input_ids and positions of every new token back to back, the
slot of each token in the pool (slot_mapping), each sequence's block table
(padded), where each sequence's tokens start (query_start_loc), its length after
the step (seq_lens), and which rows need logits (the last token of each chunk
that reaches the end of its sequence).

A decode-only batch that fits the decode graphs (decode_graphs.py) is copied
into their static buffers, padded, and replayed; so is any other batch that
fits the prefill graphs (prefill_graphs.py: prompts, chunks, prompts beside
decode). Batches larger than the largest graph, or with no graphs, run eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve import kernels
from pagedserve.executor.decode_graphs import DecodeGraphs
from pagedserve.executor.llama import AttentionBatch, LlamaForCausalLM
from pagedserve.executor.prefill_graphs import PrefillGraphs
from pagedserve.executor.step_graphs import CaptureReport, GraphVariant, StepGraphs
from pagedserve.executor.step_plan import BlockCopies, ScheduledChunk
from pagedserve.kernels._backend import use_triton


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    batch: AttentionBatch
    logits_indices: torch.Tensor  # [num_sampled] int64 (padded: sampled rows first)
    sampled_chunks: list[ScheduledChunk]
    # Set when the batch was loaded into a set of graphs' static buffers (the
    # tensors above are views of them): those graphs, the padded size it runs
    # at (decode: sequences; prefill: tokens), and the variant of that size.
    graphs: StepGraphs | None = None
    graph_size: int | None = None
    graph_variant: GraphVariant | None = None


@dataclass
class _HostBatch:
    """A step's flat inputs as host lists, before they go to the device."""

    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    block_tables: list[list[int]]  # padded to the widest table with 0 (never read)
    query_start_loc: list[int]
    seq_lens: list[int]
    logits_indices: list[int]
    sampled_chunks: list[ScheduledChunk]
    max_blocks_per_seq: int
    cached_context: bool
    # The decode rows' split plan (kernels.plan_decode_row_split), where the
    # Triton kernels run a batch with cached context that is not decode-only.
    decode_split: list[int] | None = None

    @property
    def decode_only(self) -> bool:
        return len(self.input_ids) == len(self.seq_lens)


def _flatten(chunks: list[ScheduledChunk], block_size: int) -> _HostBatch:
    input_ids: list[int] = []
    positions: list[int] = []
    slot_mapping: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    logits_indices: list[int] = []
    sampled_chunks: list[ScheduledChunk] = []
    max_blocks = max(len(chunk.seq.block_ids) for chunk in chunks)
    # Padding entries (0) are never read: seq_lens bounds every sequence's table.
    padded_tables = [
        chunk.seq.block_ids + [0] * (max_blocks - len(chunk.seq.block_ids)) for chunk in chunks
    ]
    for chunk in chunks:
        seq, start, end = chunk.seq, chunk.start, chunk.start + chunk.num_new_tokens
        table = seq.block_ids
        input_ids.extend(seq.token_ids[start:end])
        positions.extend(range(start, end))
        slot_mapping.extend(
            table[p // block_size] * block_size + p % block_size for p in range(start, end)
        )
        query_start_loc.append(len(input_ids))
        seq_lens.append(end)
        if chunk.needs_logits:
            logits_indices.append(len(input_ids) - 1)
            sampled_chunks.append(chunk)
    return _HostBatch(
        input_ids,
        positions,
        slot_mapping,
        padded_tables,
        query_start_loc,
        seq_lens,
        logits_indices,
        sampled_chunks,
        max_blocks,
        cached_context=any(chunk.start > 0 for chunk in chunks),
    )


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: torch.Tensor,
        block_size_tokens: int,
        swap_pool: torch.Tensor | None = None,
    ):
        self.model = model
        self.kv_pool = kv_pool  # [layers, 2, num_blocks, block_size, Hkv, D]
        self.swap_pool = swap_pool  # the same on the host, with num_swap_blocks
        self.block_size = block_size_tokens
        self.device = kv_pool.device
        # Decode-only batches that fit run through these, other batches that
        # fit through the prefill graphs (captured at start on CUDA; without
        # capture the same padded paths run eagerly). None: eager.
        self.decode_graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self._graph_memory_pool = None  # shared by every graph of this runner

    def capture_decode_graphs(
        self, batch_sizes: list[int], max_context_tokens: int
    ) -> CaptureReport:
        """Captures a decode graph per batch size; decode batches that fit
        replay them from then on. Call it while no step runs. Raises
        ValueError unless the pool is on CUDA with the Triton kernels (the
        torch references sync with the device, which a capture forbids)."""
        memory_pool = self._capture_memory_pool()
        graphs = DecodeGraphs(
            self.model, self.kv_pool, self.block_size, batch_sizes, max_context_tokens
        )
        report = graphs.capture(memory_pool)
        self.decode_graphs = graphs
        return report

    def capture_prefill_graphs(
        self, token_counts: list[int], max_num_seqs: int, max_context_tokens: int
    ) -> CaptureReport:
        """Captures a graph per token count for batches that are not
        decode-only; those that fit replay them from then on. Call it while no
        step runs. Raises ValueError as capture_decode_graphs."""
        memory_pool = self._capture_memory_pool()
        graphs = PrefillGraphs(
            self.model,
            self.kv_pool,
            self.block_size,
            token_counts,
            max_num_seqs,
            max_context_tokens,
        )
        report = graphs.capture(memory_pool)
        self.prefill_graphs = graphs
        return report

    def _capture_memory_pool(self):
        if not (self.device.type == "cuda" and use_triton(self.kv_pool)):
            raise ValueError(f"CUDA graphs need CUDA and the Triton kernels ({self.device})")
        if self._graph_memory_pool is None:
            self._graph_memory_pool = torch.cuda.graph_pool_handle()
        return self._graph_memory_pool

    def prepare(self, chunks: list[ScheduledChunk]) -> ModelInputs:
        host = _flatten(chunks, self.block_size)
        if host.cached_context and not host.decode_only and use_triton(self.kv_pool):
            # Long decode rows beside prompt chunks: parts read by more programs.
            starts = host.query_start_loc
            host.decode_split = kernels.plan_decode_row_split(
                [end - start for start, end in zip(starts, starts[1:], strict=False)],
                host.seq_lens,
                self.model.config.num_kv_heads,
                self.device,
            )
        graphs = self.decode_graphs if host.decode_only else self.prefill_graphs
        if graphs is not None:
            size = graphs.padded_size(len(host.input_ids), len(chunks), host.max_blocks_per_seq)
            if size is not None:
                variant = graphs.variant_for(size, host.max_blocks_per_seq, host.cached_context)
                return self._load_into_graphs(graphs, size, variant, host)
        return self._to_device(host)

    def _to_device(self, host: _HostBatch) -> ModelInputs:
        def to_device(values, dtype):
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        batch = AttentionBatch(
            slot_mapping=to_device(host.slot_mapping, torch.int64),
            block_tables=to_device(host.block_tables, torch.int32),
            query_start_loc=to_device(host.query_start_loc, torch.int32),
            seq_lens=to_device(host.seq_lens, torch.int32),
            decode_only=host.decode_only,
            cached_context=host.cached_context,
            # Only a plan that splits: otherwise the kernel needs no extra launch.
            decode_split=(
                to_device(host.decode_split, torch.int32)
                if host.decode_split and host.decode_split[0] != kernels.NO_SPLIT_TOKENS
                else None
            ),
        )
        return ModelInputs(
            input_ids=to_device(host.input_ids, torch.int64),
            positions=to_device(host.positions, torch.int64),
            batch=batch,
            logits_indices=to_device(host.logits_indices, torch.int64),
            sampled_chunks=host.sampled_chunks,
        )

    @staticmethod
    def _load_into_graphs(
        graphs: StepGraphs, size: int, variant: GraphVariant, host: _HostBatch
    ) -> ModelInputs:
        graphs.load(
            size,
            host.input_ids,
            host.positions,
            host.slot_mapping,
            host.block_tables,
            host.query_start_loc,
            host.seq_lens,
            host.logits_indices,
            host.decode_split,
        )
        input_ids, positions, batch, logits_indices = graphs.inputs(size, variant)
        return ModelInputs(
            input_ids, positions, batch, logits_indices, host.sampled_chunks, graphs, size, variant
        )

    def _ids(self, block_ids: list[int], device: torch.device) -> torch.Tensor:
        return torch.tensor(block_ids, dtype=torch.int64, device=device)

    def apply_copies(self, copies: BlockCopies) -> None:
        """Makes one Step call's copies, in the order BlockCopies documents."""
        if copies.swap_out_device_block_ids:
            kernels.swap_blocks(
                self.kv_pool,
                self.swap_pool,
                self._ids(copies.swap_out_device_block_ids, self.device),
                self._ids(copies.swap_out_host_block_ids, torch.device("cpu")),
            )
        if copies.swap_in_host_block_ids:
            kernels.swap_blocks(
                self.swap_pool,
                self.kv_pool,
                self._ids(copies.swap_in_host_block_ids, torch.device("cpu")),
                self._ids(copies.swap_in_device_block_ids, self.device),
            )
        if copies.copy_src_block_ids:
            kernels.copy_blocks(
                self.kv_pool,
                self._ids(copies.copy_src_block_ids, self.device),
                self._ids(copies.copy_dst_block_ids, self.device),
            )

    def run(self, inputs: ModelInputs) -> torch.Tensor | None:
        """Runs the forward pass; returns logits [num_sampled, vocab], or None if none are needed.

        A batch loaded into graphs replays its padded size and returns a copy
        of the real rows (the static output is the next step's).
        """
        if inputs.graphs is not None:
            logits = inputs.graphs.replay(inputs.graph_size, inputs.graph_variant)
            logits = logits[: len(inputs.sampled_chunks)].clone()
        else:
            logits = self.model(
                inputs.input_ids,
                inputs.positions,
                self.kv_pool,
                inputs.batch,
                inputs.logits_indices,
            )
        return logits if inputs.sampled_chunks else None
