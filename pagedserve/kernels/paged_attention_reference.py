"""The torch reference of paged_attention (same signature as
paged_attention.paged_attention_triton, without its launch options): the
executor's CPU path, and what every Triton attention kernel is tested against."""

import torch
import torch.nn.functional as F

from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference

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
    query: torch.Tensor,  # [q_len, num_heads, head_dim] fp32 or fp64
    key: torch.Tensor,  # [seq_len, num_kv_heads, head_dim], query's dtype
    value: torch.Tensor,  # [seq_len, num_kv_heads, head_dim], query's dtype
    scale: float,
) -> torch.Tensor:  # [q_len, num_heads, head_dim], query's dtype
    """The sequence's last q_len positions attend to every position up to their
    own, through torch's scaled_dot_product_attention (query head h reads kv
    head h // group size), queries in chunks so that no backend holds more than
    _REFERENCE_MAX_SCORES scores. On the CPU it ran faster than the masked
    matmul-softmax-matmul it replaced (prefill of 1,024-2,048 keys 3.6-4.3x,
    4 x 256 1.5-1.9x, decode 1.2-1.3x) at the same error against float64
    (docs/kernels-notes.md, "Reference on CPU")."""
    q_len, num_heads, _ = query.shape
    seq_len = key.shape[0]
    query_h = query.permute(1, 0, 2)  # [num_heads, q_len, head_dim], a view
    key_h = key.permute(1, 0, 2)  # [num_kv_heads, seq_len, head_dim]
    value_h = value.permute(1, 0, 2)
    if q_len == seq_len and q_len > 1 and query.device.type == "cpu":
        # A prompt without cached context: the causal mask is SDPA's own
        # (is_causal), so its CPU kernel skips the masked half and builds no
        # mask, in one call (it keeps no score matrix). The same float32
        # values as the masked chunks below; a 1,024-token prompt's attention
        # 1.4x faster (docs/kernels-notes.md, "Reference on CPU").
        out = F.scaled_dot_product_attention(
            query_h[None], key_h[None], value_h[None], is_causal=True, scale=scale,
            enable_gqa=True,
        )[0]  # fmt: skip
        return out.permute(1, 0, 2)
    key_pos = torch.arange(seq_len, device=query.device)
    chunk = max(1, _REFERENCE_MAX_SCORES // max(1, num_heads * seq_len))
    out = torch.empty(query_h.shape, dtype=query.dtype, device=query.device)
    for first in range(0, q_len, chunk):
        last = min(q_len, first + chunk)
        visible = None  # a decode query sees every key
        if q_len > 1:  # bottom-right causal: query i sits at position seq_len - q_len + i
            offset = seq_len - q_len
            query_pos = torch.arange(offset + first, offset + last, device=query.device)
            visible = key_pos[None, :] <= query_pos[:, None]  # [chunk, seq_len]
        out[:, first:last] = F.scaled_dot_product_attention(
            query_h[None, :, first:last], key_h[None], value_h[None],
            attn_mask=visible, scale=scale, enable_gqa=True,
        )[0]  # fmt: skip
    return out.permute(1, 0, 2)


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
    """Pure torch, in float32 (float64 for float64 inputs: the high-precision
    reference of the benchmarks): per sequence, its cached context gathered
    from the cache and its new K/V from `key`/`value`, then causal attention
    (torch's SDPA); sequences with one new token (decode rows) a group at a
    time, as the decode reference takes them.

    Raises ValueError when a sequence has more new tokens than total tokens.
    """
    out = torch.empty_like(query)
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    q_lens = [starts[seq + 1] - starts[seq] for seq in range(len(lens))]
    for seq, (q_len, seq_len) in enumerate(zip(q_lens, lens, strict=True)):
        if q_len > seq_len:
            raise ValueError(f"sequence {seq}: {q_len} new tokens > seq_len {seq_len}")
    # Decode rows (one new token), as in a mixed step, a group at a time: one
    # by one they were a Python loop of small SDPA calls.
    decodes = [seq for seq, q_len in enumerate(q_lens) if q_len == 1]
    if decodes:
        seqs = torch.tensor(decodes, device=query.device)
        rows = query_start_loc.index_select(0, seqs).long()
        out.index_copy_(0, rows, paged_decode_attention_reference(
            query.index_select(0, rows), key_cache, value_cache,
            block_tables.index_select(0, seqs), seq_lens.index_select(0, seqs), scale,
            new_key=key.index_select(0, rows), new_value=value.index_select(0, rows),
        ))  # fmt: skip
    for seq, seq_len in enumerate(lens):
        first, last = starts[seq], starts[seq + 1]
        if last - first <= 1:
            continue  # no new tokens, or a decode row
        context_len = seq_len - (last - first)
        seq_key = torch.cat(
            (gather_sequence_kv(key_cache, block_tables[seq], context_len), key[first:last])
        ).to(compute_dtype)
        seq_value = torch.cat(
            (gather_sequence_kv(value_cache, block_tables[seq], context_len), value[first:last])
        ).to(compute_dtype)
        attended = _attend_one_sequence(
            query[first:last].to(compute_dtype), seq_key, seq_value, scale
        )
        out[first:last] = attended.to(query.dtype)
    return out
