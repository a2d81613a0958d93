"""Paged attention over a varlen batch: prefill, chunked prefill and decode mixed.

The new tokens of all sequences sit back to back in `query`; sequence s owns
rows query_start_loc[s]:query_start_loc[s+1]. Its keys and values, the new ones
included, are already in the paged cache: token t of sequence s lives in block
block_tables[s, t // block_size] at offset t % block_size. The i-th new query
of a sequence of seq_len tokens and q_len new tokens sits at position
seq_len - q_len + i and attends to positions 0..that position.
"""

import torch

from pagedserve.kernels._backend import dot_in_fp32, dot_precision, tl, triton

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
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], query's dtype
    """Pure torch, fp32: per sequence, gather its K/V, masked matmul softmax matmul.

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
        key = gather_sequence_kv(key_cache, block_tables[seq], seq_len).float()
        value = gather_sequence_kv(value_cache, block_tables[seq], seq_len).float()
        attended = _attend_one_sequence(query[first:last].float(), key, value, scale)
        out[first:last] = attended.to(query.dtype)
    return out


@triton.jit
def attend_kv_tile(
    q,  # [ROWS, HEAD_DIM] query rows, cache dtype
    row_max,  # [ROWS] fp32, running max of log2-scaled scores
    row_sum,  # [ROWS] fp32, running sum of exp2(score - row_max)
    acc,  # [ROWS, HEAD_DIM] fp32, running sum of weights * values
    key_cache_ptr,
    value_cache_ptr,
    block_table_row_ptr,  # this sequence's row of block_tables
    kv_head_offset,  # kv_head * cache_stride_head
    first_token,  # position of the tile's first key
    key_limit,  # when BOUNDED, keys at or past this position are masked and never read
    row_pos,  # [ROWS] int32 position of each query row (used when CAUSAL)
    scale_log2,  # softmax scale * log2(e): exp2 of scaled scores = exp of scores
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,  # the tile may cross key_limit
    CAUSAL: tl.constexpr,  # the tile may hold keys after some row's position
    DOT_IN_FP32: tl.constexpr,  # see _backend.dot_in_fp32
    DOT_PRECISION: tl.constexpr,  # see _backend.dot_precision
):
    """One online-softmax step over BLOCK_N keys gathered through the block table.

    Tiles wholly inside the visible keys (BOUNDED and CAUSAL false) take no
    masks at all: no predicated loads, no selects on the scores.
    """
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    token_mask = tokens < key_limit
    dims = tl.arange(0, HEAD_DIM)
    if BOUNDED:
        # Padding entries of the block table are never read: masked tokens load 0.
        block_ids = tl.load(block_table_row_ptr + tokens // BLOCK_SIZE, mask=token_mask, other=0)
    else:
        block_ids = tl.load(block_table_row_ptr + tokens // BLOCK_SIZE)
    kv_offsets = (
        block_ids.to(tl.int64) * cache_stride_block
        + (tokens % BLOCK_SIZE) * cache_stride_slot
        + kv_head_offset
    )  # [BLOCK_N]
    kv_ptrs = kv_offsets[:, None] + dims[None, :]  # [BLOCK_N, HEAD_DIM]
    if BOUNDED:
        k = tl.load(key_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
        v = tl.load(value_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
    else:
        k = tl.load(key_cache_ptr + kv_ptrs)
        v = tl.load(value_cache_ptr + kv_ptrs)
    if DOT_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [ROWS, BLOCK_N] fp32, unscaled
    if CAUSAL:
        visible = token_mask[None, :] & (tokens[None, :] <= row_pos[:, None])
        scores = tl.where(visible, scores, float("-inf"))
    elif BOUNDED:
        scores = tl.where(token_mask[None, :], scores, float("-inf"))
    # Every row has seen at least one key by its first tile, so new_max is finite.
    new_max = tl.maximum(row_max, tl.max(scores, axis=1) * scale_log2)
    weights = tl.exp2(scores * scale_log2 - new_max[:, None])  # [ROWS, BLOCK_N], one FMA
    rescale = tl.exp2(row_max - new_max)  # [ROWS]
    row_sum = row_sum * rescale + tl.sum(weights, axis=1)
    acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION)
    return new_max, row_sum, acc


@triton.jit
def _paged_attention_kernel(
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    scale_log2,
    num_seqs,
    query_stride_token,
    query_stride_head,
    out_stride_token,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program: BLOCK_Q tokens x GROUP_SIZE heads
    BLOCK_Q: tl.constexpr,  # BLOCK_M // GROUP_SIZE
    BLOCK_N: tl.constexpr,  # keys per step
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Program (tile_index, kv_head) handles BLOCK_Q new tokens of one sequence
    # and all query heads of one kv head, so each K/V tile is loaded once for
    # the whole group. Sequence s owns tiles tile_start(s) .. tile_start(s+1)-1
    # with tile_start(s) = query_start_loc[s] // BLOCK_Q + s, which leaves room
    # for its cdiv(q_len, BLOCK_Q) tiles; the spare ones return at once.
    tile_index = tl.program_id(0)
    kv_head = tl.program_id(1)
    low = 0
    high = num_seqs  # invariant: tile_start(low) <= tile_index < tile_start(high)
    while high - low > 1:
        mid = (low + high) // 2
        mid_start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        low = tl.where(mid_start <= tile_index, mid, low)
        high = tl.where(mid_start <= tile_index, high, mid)
    seq = low
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_tile = tile_index - (q_start // BLOCK_Q + seq)
    if q_tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    q_index = q_tile * BLOCK_Q + rows // GROUP_SIZE  # [BLOCK_M] new-token index
    head = kv_head * GROUP_SIZE + rows % GROUP_SIZE  # [BLOCK_M] query head
    row_mask = (rows < BLOCK_Q * GROUP_SIZE) & (q_index < q_len)
    row_pos = context_len + q_index  # [BLOCK_M]
    dims = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + q_index).to(tl.int64) * query_stride_token + head * query_stride_head
    q = tl.load(query_ptr + q_rows[:, None] + dims[None, :], mask=row_mask[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    else:
        q = q.to(key_cache_ptr.dtype.element_ty)

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    block_table_row_ptr = block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq
    kv_head_offset = kv_head * cache_stride_head
    # Keys before the tile's first query position are visible to every row:
    # those tiles skip the causal mask. The rest, up to the last row, use it.
    first_pos = context_len + q_tile * BLOCK_Q
    unmasked_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N  # <= seq_len
    kv_end = tl.minimum(seq_len, first_pos + BLOCK_Q)
    for first_token in range(0, unmasked_end, BLOCK_N):
        row_max, row_sum, acc = attend_kv_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, first_token, seq_len, row_pos, scale_log2,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, False, False,
            DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    for first_token in range(unmasked_end, kv_end, BLOCK_N):
        row_max, row_sum, acc = attend_kv_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, first_token, seq_len, row_pos, scale_log2,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, True, True,
            DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip

    out = acc / row_sum[:, None]
    out_rows = (q_start + q_index).to(tl.int64) * out_stride_token + head * out_stride_head
    tl.store(
        out_ptr + out_rows[:, None] + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None],
    )


def _prefill_config(head_dim: int) -> dict:
    """Tile sizes and launch options, from a sweep on an H100 (docs/kernels-notes.md v2):
    128 rows x 64 keys, 8 warps, 3 stages was best or near best at 2k to 8k tokens."""
    if head_dim <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


def paged_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim], written in full
    config: dict | None = None,  # overrides _prefill_config (benchmarks, tests)
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], query's dtype
    """Triton: one program per (tile of new tokens of one sequence, kv head).

    Never synchronizes with the device (CUDA-graph safe). Raises ValueError on
    shapes it does not support: head_dim not a power of two >= 16, num_heads
    not a multiple of num_kv_heads, caches not contiguous.
    """
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    _check_shapes(query, key_cache, value_cache)
    if query.stride(2) != 1:
        query = query.contiguous()
    if out is None:
        out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    group_size = num_heads // num_kv_heads
    config = {**_prefill_config(head_dim), **(config or {})}
    block_q = config["BLOCK_M"] // group_size
    if block_q < 1:
        raise ValueError(f"BLOCK_M {config['BLOCK_M']} < group size {group_size}")
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    _paged_attention_kernel[grid](
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, out,
        scale * _LOG2_E, num_seqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        BLOCK_SIZE=block_size, GROUP_SIZE=group_size, HEAD_DIM=head_dim, BLOCK_Q=block_q,
        DOT_IN_FP32=dot_in_fp32(_paged_attention_kernel, key_cache.dtype),
        DOT_PRECISION=dot_precision(key_cache.dtype),
        **config,
    )  # fmt: skip
    return out


_LOG2_E = 1.4426950408889634


def _check_shapes(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    num_heads, head_dim = query.shape[1:]
    num_kv_heads = key_cache.shape[2]
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} not a multiple of num_kv_heads {num_kv_heads}")
    if key_cache.shape != value_cache.shape or key_cache.shape[3] != head_dim:
        raise ValueError(f"cache shapes {key_cache.shape}, {value_cache.shape} do not fit query")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("key_cache and value_cache must be contiguous")
