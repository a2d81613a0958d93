"""v8: each tile's block ids loaded one tile ahead, the first before seq_len (not adopted).

v7's program waits for seq_len before it loads any block id, and for the ids
before it loads K/V. v8 loads the first tile's block ids and the query before
anything waits on seq_len, masking the ids by the block table's width, and
carries each next tile's ids one step ahead through the loop. On an H100 it
was 0.2-3.3% slower at 11 of 13 shapes (docs/kernels-notes.md v8): the
compiler already pipelines the id loads stages ahead, and the carried ids
defeated that.
"""

from __future__ import annotations

from benchmarks.decode_experiments.launch import launch_decode
from pagedserve.kernels._backend import tl, triton
from pagedserve.kernels.attention_tiles import online_softmax_step
from pagedserve.kernels.paged_decode_attention import (
    decode_program,
    store_partition_result,
)


@triton.jit
def load_tile_block_ids(
    block_table_row_ptr,  # this sequence's row of block_tables
    first_token,  # position of the tile's first key
    table_tokens,  # when BOUNDED, entries for positions at or past this one load 0
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,
):
    """Block id of each position first_token .. first_token + BLOCK_N - 1, [BLOCK_N] int32."""
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    if BOUNDED:
        return tl.load(
            block_table_row_ptr + tokens // BLOCK_SIZE, mask=tokens < table_tokens, other=0
        )
    return tl.load(block_table_row_ptr + tokens // BLOCK_SIZE)


@triton.jit
def gather_kv_tile_by_ids(
    key_cache_ptr,
    value_cache_ptr,
    block_ids,  # [BLOCK_N] int32, the block of each key (load_tile_block_ids)
    kv_head_offset,  # kv_head * cache_stride_head
    first_token,  # position of the tile's first key
    key_limit,  # when BOUNDED, keys at or past this position load 0 and are never read
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,  # the tile may cross key_limit
    DOT_IN_FP32: tl.constexpr,  # see _backend.dot_in_fp32
):
    """K and V of positions first_token .. first_token + BLOCK_N - 1, each
    [BLOCK_N, HEAD_DIM]; when BOUNDED, block ids at or past key_limit are never used."""
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    dims = tl.arange(0, HEAD_DIM)
    kv_offsets = (
        block_ids.to(tl.int64) * cache_stride_block
        + (tokens % BLOCK_SIZE) * cache_stride_slot
        + kv_head_offset
    )  # [BLOCK_N]
    kv_ptrs = kv_offsets[:, None] + dims[None, :]  # [BLOCK_N, HEAD_DIM]
    if BOUNDED:
        token_mask = tokens < key_limit
        k = tl.load(key_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
        v = tl.load(value_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
    else:
        k = tl.load(key_cache_ptr + kv_ptrs)
        v = tl.load(value_cache_ptr + kv_ptrs)
    if DOT_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit(do_not_specialize=["block_table_stride_seq", "table_tokens", "num_partitions"])
def _decode_partition_kernel_v8(
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,  # [num_seqs, num_heads, head_dim]: written when SINGLE_PARTITION
    partial_out_ptr,  # [num_seqs, num_heads, num_partitions, head_dim] fp32, unnormalised
    partial_max_ptr,  # [num_seqs, num_heads, num_partitions] fp32
    partial_sum_ptr,  # [num_seqs, num_heads, num_partitions] fp32
    scale_log2,
    partition_tokens,
    query_stride_seq,
    query_stride_head,
    out_stride_seq,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    table_tokens,  # block_tables' width x BLOCK_SIZE: positions its rows can hold
    num_partitions,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,  # GROUP_SIZE padded to a power of two >= 16 (tl.dot)
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_PARTITION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # see _backend.dot_precision
    HEADS_FASTEST: tl.constexpr,  # grid axis 0 is the kv head, not the sequence
):
    # Program (seq, kv_head, partition): the query rows are the group's heads,
    # so each K/V tile is read once for all of them.
    seq, kv_head, num_kv_heads, partition = decode_program(HEADS_FASTEST)
    first_token = partition * partition_tokens
    # The chain before the first K/V tile is seq_len, then block ids, then K/V.
    # The first tile's block ids and the query need only shapes, so they are
    # loaded before anything waits on seq_len: both loads are in flight together.
    block_table_row_ptr = block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq
    next_block_ids = load_tile_block_ids(
        block_table_row_ptr, first_token, table_tokens, BLOCK_SIZE, BLOCK_N, True
    )
    seq_len = tl.load(seq_lens_ptr + seq)

    group_rows = tl.arange(0, GROUP_BLOCK)
    row_mask = group_rows < GROUP_SIZE
    head = kv_head * GROUP_SIZE + group_rows  # [GROUP_BLOCK]
    dims = tl.arange(0, HEAD_DIM)
    q_offsets = seq.to(tl.int64) * query_stride_seq + head * query_stride_head
    q = tl.load(query_ptr + q_offsets[:, None] + dims[None, :], mask=row_mask[:, None], other=0.0)
    if first_token >= seq_len:
        return  # the merge kernel reads only partitions that hold keys
    key_limit = tl.minimum(seq_len, first_token + partition_tokens)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    else:
        q = q.to(key_cache_ptr.dtype.element_ty)

    row_max = tl.full([GROUP_BLOCK], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([GROUP_BLOCK], dtype=tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32)
    kv_head_offset = kv_head * cache_stride_head
    # Whole tiles without masks, then at most one tile that crosses key_limit.
    # Each step loads the next tile's block ids (masked by the table's width,
    # not by seq_len) before its own K/V, one tile ahead.
    full_end = first_token + ((key_limit - first_token) // BLOCK_N) * BLOCK_N
    for tile_first in range(first_token, full_end, BLOCK_N):
        block_ids = next_block_ids
        next_block_ids = load_tile_block_ids(
            block_table_row_ptr, tile_first + BLOCK_N, table_tokens, BLOCK_SIZE, BLOCK_N, True
        )
        k, v = gather_kv_tile_by_ids(
            key_cache_ptr, value_cache_ptr, block_ids, kv_head_offset, tile_first, key_limit,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, False,
            DOT_IN_FP32,
        )  # fmt: skip
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, None, scale_log2, False, DOT_PRECISION
        )
    if full_end < key_limit:
        k, v = gather_kv_tile_by_ids(
            key_cache_ptr, value_cache_ptr, next_block_ids, kv_head_offset, full_end, key_limit,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, True,
            DOT_IN_FP32,
        )  # fmt: skip
        visible = ((full_end + tl.arange(0, BLOCK_N)) < key_limit)[None, :]
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, visible, scale_log2, True, DOT_PRECISION
        )

    store_partition_result(
        acc, row_max, row_sum, seq, partition, head, row_mask, num_kv_heads,
        out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        out_stride_seq, out_stride_head, num_partitions, GROUP_SIZE, HEAD_DIM, SINGLE_PARTITION,
    )  # fmt: skip


def decode_v8(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    """The package's launch rules with v8's partition kernel, which also takes
    the table's width in positions."""
    table_tokens = block_tables.shape[1] * key_cache.shape[1]
    return launch_decode(
        _decode_partition_kernel_v8, query, key_cache, value_cache, block_tables, seq_lens,
        scale, out, extra_args=(table_tokens,),
    )  # fmt: skip


VARIANTS = {"v8": decode_v8}
