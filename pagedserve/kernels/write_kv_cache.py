"""Write the new tokens' keys and values into their cache slots.

A slot is `block_id * block_size + offset`: the executor computes the slot of
every new token from the blocks the block manager gave its sequence, and this op
scatters one row of `num_kv_heads * head_dim` values per token into K and V.

A negative slot (PADDING_SLOT) marks a padding token, whose row is skipped: a
decode step replayed from a CUDA graph runs a fixed batch size, and its padding
rows must never write into the pool, which other executors share. A sentinel,
not a shorter slot_mapping, because a captured graph's shapes cannot change.
"""

import torch

from pagedserve.kernels._backend import next_power_of_2, rows_contiguous, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher

# The slot of a padding token: nothing is written for it.
PADDING_SLOT = -1


def write_kv_cache_reference(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, negative for padding tokens
) -> None:
    """Pure torch: row i of key/value goes to row slot_mapping[i] of the cache
    seen as [num_blocks * block_size, num_kv_heads, head_dim]; rows with a
    negative slot are skipped. Reads the slots on the host when any is
    negative (a sync on CUDA: the graph path uses the Triton kernel)."""
    if bool((slot_mapping < 0).any()):
        kept = slot_mapping >= 0
        key, value, slot_mapping = key[kept], value[kept], slot_mapping[kept]
    for source, cache in ((key, key_cache), (value, value_cache)):
        if cache.is_contiguous():
            # index_copy_ on the flat view: ~150x faster on CPU than index_put.
            flat = cache.view(-1, *cache.shape[2:])
            flat.index_copy_(0, slot_mapping, source.to(cache.dtype))
        else:
            block_size = cache.shape[1]
            cache[slot_mapping // block_size, slot_mapping % block_size] = source.to(cache.dtype)


@triton.jit
def _write_kv_cache_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    key_stride_token,
    value_stride_token,
    cache_stride_block,
    cache_stride_slot,
    block_size,
    ROW_NUMEL: tl.constexpr,  # num_kv_heads * head_dim
    ROW_BLOCK: tl.constexpr,  # ROW_NUMEL rounded up to a power of two
):
    # One program per token: its K row and V row are each ROW_NUMEL contiguous
    # values, in the input and in the cache slot alike.
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return  # a padding token (PADDING_SLOT)
    block_id = slot // block_size
    offset_in_block = slot % block_size
    cols = tl.arange(0, ROW_BLOCK)
    mask = cols < ROW_NUMEL
    cache_row = block_id * cache_stride_block + offset_in_block * cache_stride_slot
    token_64 = token.to(tl.int64)
    k = tl.load(key_ptr + token_64 * key_stride_token + cols, mask=mask)
    v = tl.load(value_ptr + token_64 * value_stride_token + cols, mask=mask)
    tl.store(key_cache_ptr + cache_row + cols, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + cache_row + cols, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


_write_kv_cache_launcher = DirectLauncher(_write_kv_cache_kernel)


def write_kv_cache_triton(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, negative for padding tokens
) -> None:
    """Triton: one program per token; a token with a negative slot writes
    nothing. Never syncs with the device. Raises ValueError on non-contiguous
    caches."""
    num_tokens, num_kv_heads, head_dim = key.shape
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("key_cache and value_cache must be contiguous")
    if num_tokens == 0:
        return
    key = rows_contiguous(key)
    value = rows_contiguous(value)
    row_numel = num_kv_heads * head_dim
    _write_kv_cache_launcher.launch(
        (num_tokens,),
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        key.stride(0),
        value.stride(0),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.shape[1],
        ROW_NUMEL=row_numel,
        ROW_BLOCK=next_power_of_2(row_numel),
    )
