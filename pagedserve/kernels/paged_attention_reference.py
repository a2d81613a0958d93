"""The torch reference of paged_attention (same signature as
paged_attention.paged_attention_triton, without its launch options): the
executor's CPU path, and what every Triton attention kernel is tested against."""

import torch

# The reference bounds its fp32 score matrix to this many values (64 MiB) by
# taking a sequence's queries in chunks.
_REFERENCE_MAX_SCORES = 16 * 1024 * 1024


def gather_sequence_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_table_row: torch.Tensor,  # [max_blocks_per_seq] int32
    seq_len: int,
) -> torch.Tensor:  # [seq_len, num_kv_heads, head_dim], a temporary copy
    """One sequence's K or V, contiguous; reads only the blocks it owns."""
    block_size = cache.shape[1]
    num_seq_blocks = -(-seq_len // block_size)
    block_ids = block_table_row[:num_seq_blocks].long()
    # index_select, not cache[block_ids]: on CPU advanced indexing of a 4-d
    # tensor took ~150x longer (2.4 ms against 15 us for 64 blocks of 12 KiB).
    return cache.index_select(0, block_ids).flatten(0, 1)[:seq_len]


def _attend_one_sequence(
    query: torch.Tensor,  # [q_len, num_heads, head_dim] fp32
    key: torch.Tensor,  # [seq_len, num_kv_heads, head_dim] fp32
    value: torch.Tensor,  # [seq_len, num_kv_heads, head_dim] fp32
    scale: float,
) -> torch.Tensor:  # [q_len, num_heads, head_dim] fp32
    q_len, num_heads, head_dim = query.shape
    seq_len, num_kv_heads, _ = key.shape
    group_size = num_heads // num_kv_heads
    # Heads of one kv group side by side: [num_kv_heads, group_size * q_len, head_dim]
    # (rows ordered head-major, so row r is head r // q_len, query r % q_len).
    grouped_query = query.view(q_len, num_kv_heads, group_size, head_dim)
    grouped_query = grouped_query.permute(1, 2, 0, 3).reshape(num_kv_heads, -1, head_dim)
    # Heads first, contiguous: BLAS on the strided permutation ran ~20x slower.
    key_t = key.permute(1, 0, 2).contiguous().transpose(1, 2)  # [num_kv_heads, head_dim, seq_len]
    value_h = value.permute(1, 0, 2).contiguous()  # [num_kv_heads, seq_len, head_dim]
    query_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)  # [q_len]
    key_pos = torch.arange(seq_len, device=query.device)  # [seq_len]
    rows = group_size * q_len
    chunk_rows = max(1, _REFERENCE_MAX_SCORES // max(1, num_kv_heads * seq_len))
    out = torch.empty_like(grouped_query)  # [num_kv_heads, rows, head_dim]
    for first in range(0, rows, chunk_rows):
        last = min(rows, first + chunk_rows)
        row_pos = query_pos[torch.arange(first, last, device=query.device) % q_len]
        scores = torch.matmul(grouped_query[:, first:last], key_t) * scale
        future = key_pos[None, :] > row_pos[:, None]  # [chunk, seq_len]
        scores.masked_fill_(future, float("-inf"))
        out[:, first:last] = torch.matmul(torch.softmax(scores, dim=-1), value_h)
    out = out.view(num_kv_heads, group_size, q_len, head_dim).permute(2, 0, 1, 3)
    return out.reshape(q_len, num_heads, head_dim)


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' keys
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' values
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], query's dtype
    """Pure torch, fp32: per sequence, its cached context gathered from the cache
    and its new K/V from `key`/`value`, then masked matmul, softmax, matmul.

    Raises ValueError when a sequence has more new tokens than total tokens.
    """
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for seq, seq_len in enumerate(lens):
        first, last = starts[seq], starts[seq + 1]
        if last == first:
            continue
        if last - first > seq_len:
            raise ValueError(f"sequence {seq}: {last - first} new tokens > seq_len {seq_len}")
        context_len = seq_len - (last - first)
        seq_key = torch.cat(
            (gather_sequence_kv(key_cache, block_tables[seq], context_len), key[first:last])
        ).float()
        seq_value = torch.cat(
            (gather_sequence_kv(value_cache, block_tables[seq], context_len), value[first:last])
        ).float()
        attended = _attend_one_sequence(query[first:last].float(), seq_key, seq_value, scale)
        out[first:last] = attended.to(query.dtype)
    return out
