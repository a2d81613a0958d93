"""Turns a step's chunks into the flat tensors the model takes, and runs it.

A batch becomes: input_ids and positions of every new token back to back, the
slot of each token in the pool (slot_mapping), each sequence's block table
(padded), where each sequence's tokens start (query_start_loc), its length after
the step (seq_lens), and which rows need logits (the last token of each chunk
that reaches the end of its sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve import kernels
from pagedserve.executor.llama import AttentionBatch, LlamaForCausalLM
from pagedserve.executor.step_plan import BlockCopies, ScheduledChunk


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    batch: AttentionBatch
    logits_indices: torch.Tensor  # [num_sampled] int64
    sampled_chunks: list[ScheduledChunk]


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

    def prepare(self, chunks: list[ScheduledChunk]) -> ModelInputs:
        block_size = self.block_size
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

        def to_device(values, dtype):
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        batch = AttentionBatch(
            slot_mapping=to_device(slot_mapping, torch.int64),
            block_tables=to_device(padded_tables, torch.int32),
            query_start_loc=to_device(query_start_loc, torch.int32),
            seq_lens=to_device(seq_lens, torch.int32),
            decode_only=len(input_ids) == len(chunks),
            cached_context=any(chunk.start > 0 for chunk in chunks),
        )
        return ModelInputs(
            input_ids=to_device(input_ids, torch.int64),
            positions=to_device(positions, torch.int64),
            batch=batch,
            logits_indices=to_device(logits_indices, torch.int64),
            sampled_chunks=sampled_chunks,
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
        """Runs the forward pass; returns logits [num_sampled, vocab], or None if none are needed."""
        logits = self.model(
            inputs.input_ids, inputs.positions, self.kv_pool, inputs.batch, inputs.logits_indices
        )
        return logits if inputs.sampled_chunks else None
