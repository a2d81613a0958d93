"""Tile steps of the attention kernels: the online softmax, K/V tiles gathered
from the paged cache through a block table, and tiles of a varlen batch's new
keys and values.

Scores live in log2 units: `scale_log2` = softmax scale x log2(e), so that
exp2(score * scale_log2 - max) = exp(score * scale - max'), one FMA per score.
"""

import torch

from pagedserve.kernels._backend import tl, triton

LOG2_E = 1.4426950408889634


@triton.jit
def online_softmax_step(
    q,  # [ROWS, HEAD_DIM] query rows, the K/V dtype (fp32 when DOT_IN_FP32)
    k,  # [BLOCK_N, HEAD_DIM]
    v,  # [BLOCK_N, HEAD_DIM]
    row_max,  # [ROWS] fp32, running max of log2-scaled scores
    row_sum,  # [ROWS] fp32, running sum of exp2(score - row_max)
    acc,  # [ROWS, HEAD_DIM] fp32, running sum of weights * values
    visible,  # [ROWS, BLOCK_N] bool when MASKED, else unused (None)
    scale_log2,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # see _backend.dot_precision
):
    """One flash-attention step over BLOCK_N keys; returns (row_max, row_sum, acc).

    Every row must have seen at least one visible key by its first step, so
    that the running max is finite (callers order their tiles to ensure it).
    """
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [ROWS, BLOCK_N] fp32
    if MASKED:
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1) * scale_log2)
    weights = tl.exp2(scores * scale_log2 - new_max[:, None])  # [ROWS, BLOCK_N]
    rescale = tl.exp2(row_max - new_max)  # [ROWS]
    row_sum = row_sum * rescale + tl.sum(weights, axis=1)
    acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v, input_precision=DOT_PRECISION)
    return new_max, row_sum, acc


@triton.jit
def gather_kv_tile(
    key_cache_ptr,
    value_cache_ptr,
    block_table_row_ptr,  # this sequence's row of block_tables
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
    """K and V of positions first_token .. first_token + BLOCK_N - 1, each [BLOCK_N, HEAD_DIM].

    Unbounded tiles load without masks. Padding entries of the block table are
    never read: a bounded tile masks their block ids too.
    """
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    dims = tl.arange(0, HEAD_DIM)
    if BOUNDED:
        token_mask = tokens < key_limit
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
    return k, v


@triton.jit
def attend_paged_tile(
    q,
    row_max,
    row_sum,
    acc,
    key_cache_ptr,
    value_cache_ptr,
    block_table_row_ptr,
    kv_head_offset,
    first_token,
    key_limit,
    scale_log2,
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """gather_kv_tile, then online_softmax_step; keys at or past key_limit are
    masked when BOUNDED. No causal mask: every row sees every key below key_limit."""
    k, v = gather_kv_tile(
        key_cache_ptr, value_cache_ptr, block_table_row_ptr, kv_head_offset, first_token,
        key_limit, cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N,
        BOUNDED, DOT_IN_FP32,
    )  # fmt: skip
    if BOUNDED:
        tokens = first_token + tl.arange(0, BLOCK_N)
        visible = (tokens < key_limit)[None, :]
        return online_softmax_step(
            q, k, v, row_max, row_sum, acc, visible, scale_log2, True, DOT_PRECISION
        )
    return online_softmax_step(
        q, k, v, row_max, row_sum, acc, None, scale_log2, False, DOT_PRECISION
    )


@triton.jit
def attend_paged_range(
    q,
    row_max,
    row_sum,
    acc,
    key_cache_ptr,
    value_cache_ptr,
    block_table_row_ptr,
    kv_head_offset,
    first_token,
    key_limit,
    scale_log2,
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """attend_paged_tile over the keys first_token .. key_limit - 1: whole
    tiles without masks, then at most one tile that crosses key_limit."""
    full_end = first_token + ((key_limit - first_token) // BLOCK_N) * BLOCK_N
    for tile_first in range(first_token, full_end, BLOCK_N):
        row_max, row_sum, acc = attend_paged_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, tile_first, key_limit, scale_log2, cache_stride_block,
            cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, False, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    if full_end < key_limit:
        row_max, row_sum, acc = attend_paged_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, full_end, key_limit, scale_log2, cache_stride_block,
            cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, True, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    return row_max, row_sum, acc


@triton.jit
def load_new_kv_tile(
    key_source,  # DESCRIPTORS: a descriptor over key as [num_tokens, num_kv_heads * HEAD_DIM]; else key_ptr
    value_source,  # the same for value
    first_row,  # key/value row of the tile's first key
    row_limit,  # when BOUNDED (pointer loads), rows at or past this load 0
    kv_head,
    kv_stride_token,
    kv_stride_head,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,
    DESCRIPTORS: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """K and V of BLOCK_N consecutive new tokens, each [BLOCK_N, HEAD_DIM] (the
    varlen kernel's new keys, read from `key`/`value`, not the cache).

    A descriptor load reads rows past the sequence (the next sequence's tokens,
    or zeros past the tensor's end): the caller's causal mask hides their keys,
    and the caller zeroes their values, with the key positions it computes
    for that mask (zeroing here instead compiled to more spills, 1,048 -> 1,272
    bytes at 64 x 64 tiles with cached context, sm_90). A masked value still
    meets its weight of 0, and 0 x NaN is NaN.
    """
    if DESCRIPTORS:
        k = key_source.load([first_row, kv_head * HEAD_DIM])
        v = value_source.load([first_row, kv_head * HEAD_DIM])
    else:
        rows = first_row + tl.arange(0, BLOCK_N)
        offsets = rows.to(tl.int64)[:, None] * kv_stride_token + kv_head * kv_stride_head
        ptrs = offsets + tl.arange(0, HEAD_DIM)[None, :]  # [BLOCK_N, HEAD_DIM]
        if BOUNDED:
            k = tl.load(key_source + ptrs, mask=(rows < row_limit)[:, None], other=0.0)
            v = tl.load(value_source + ptrs, mask=(rows < row_limit)[:, None], other=0.0)
        else:
            k = tl.load(key_source + ptrs)
            v = tl.load(value_source + ptrs)
    if DOT_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


def check_attention_shapes(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor
) -> None:
    """Raise ValueError on shapes the Triton attention kernels do not support."""
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
