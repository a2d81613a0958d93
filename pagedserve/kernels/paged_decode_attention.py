"""Decode attention: one new query per sequence, at its last position.

The Triton path splits each sequence's keys into partitions processed by
separate programs (flash-decoding), then merges the partial softmaxes, so that
a handful of long sequences still fills every multiprocessor.
"""

import torch

from pagedserve.kernels.paged_attention import paged_attention_reference


def paged_decode_attention_reference(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim], query's dtype
    """Pure torch: the varlen reference with one query per sequence."""
    num_seqs = query.shape[0]
    query_start_loc = torch.arange(num_seqs + 1, dtype=torch.int32, device=query.device)
    return paged_attention_reference(
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale
    )
