"""GPU kernels of pagedserve, each beside a pure-torch reference.

Every op here is a dispatcher: the Triton kernel when the tensors are on CUDA
(or when PAGEDSERVE_KERNELS=triton, which the CPU tests use under
TRITON_INTERPRET=1), the torch reference otherwise. The references are what
runs on CPU in production.

The KV pool is one tensor per device,
`pool: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]`
(index 0 = K, 1 = V); a layer's caches are `pool[layer, 0]` and `pool[layer, 1]`.
"""

import torch

from pagedserve.kernels._backend import use_triton
from pagedserve.kernels.copy_blocks import copy_blocks_reference, copy_blocks_triton
from pagedserve.kernels.decode_rows import (
    NO_SPLIT_TOKENS,
    no_split_plan,
    plan_decode_row_split,
    split_capacity,
)
from pagedserve.kernels.gumbel_sample import gumbel_sample_reference, gumbel_sample_triton
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention import (
    decode_table_widths,
    paged_decode_attention_triton,
)
from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference
from pagedserve.kernels.precompile import compiled_variant_counts, precompile
from pagedserve.kernels.prefill_options import prefill_table_widths
from pagedserve.kernels.rms_norm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from pagedserve.kernels.rotary_embedding import (
    rope_cos_sin_cache,
    rotary_embedding_reference,
    rotary_embedding_triton,
)
from pagedserve.kernels.silu_and_mul import silu_and_mul_reference, silu_and_mul_triton
from pagedserve.kernels.swap_blocks import swap_blocks
from pagedserve.kernels.write_kv_cache import (
    PADDING_SLOT,
    write_kv_cache_reference,
    write_kv_cache_triton,
)


def write_kv_cache(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64, block_id * block_size + offset
) -> None:
    """Write each token's K and V into its slot, in place.

    A negative slot (PADDING_SLOT) marks a padding token: its K and V are
    written nowhere. Every other slot must lie inside the cache. The Triton
    path never syncs (CUDA-graph safe) and raises ValueError on non-contiguous
    caches; the reference reads the slots on the host when some are negative.
    """
    if use_triton(key_cache):
        write_kv_cache_triton(key, value, key_cache, value_cache, slot_mapping)
    else:
        write_kv_cache_reference(key, value, key_cache, value_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' keys
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' values
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, cached tokens including the new ones
    scale: float,
    cached_context: bool = True,  # False only if no sequence has tokens before its new ones
    decode_split: torch.Tensor | None = None,  # the host's plan for long decode rows
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], query's dtype
    """Causal attention of a varlen batch of new tokens over their cached context
    (read through the block tables) and over themselves (read from key/value).

    Raises ValueError on unsupported shapes (Triton: head_dim not a power of
    two >= 16, num_heads not a multiple of num_kv_heads, key/value not shaped
    like query's tokens; reference: a sequence with more new tokens than
    seq_len). The Triton path never syncs with the device; the reference reads
    query_start_loc and seq_lens on the host. cached_context=False is a promise
    the caller makes from host-side batch data (the Triton kernel then skips the
    block-table path); it is not checked. decode_split (plan_decode_row_split's
    plan, as an int32 tensor on query's device) lets the Triton path read long
    decode rows with more programs; it changes no value, and the reference
    ignores it.
    """
    args = (query, key, value, key_cache, value_cache, block_tables, query_start_loc, seq_lens)
    if use_triton(query):
        return paged_attention_triton(
            *args, scale, cached_context=cached_context, decode_split=decode_split
        )
    return paged_attention_reference(*args, scale)


def paged_decode_attention(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim], query's dtype
    """Attention of each sequence's one new token (its last position).

    Split-K on CUDA, CUDA-graph safe. seq_lens must be >= 1 (a sequence with no
    keys leaves its output rows unwritten). Raises ValueError as paged_attention.
    """
    if use_triton(query):
        return paged_decode_attention_triton(
            query, key_cache, value_cache, block_tables, seq_lens, scale
        )
    return paged_decode_attention_reference(
        query, key_cache, value_cache, block_tables, seq_lens, scale
    )


def copy_blocks(
    pool: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
    src_block_ids: torch.Tensor,  # [num_copies] int64, on the pool's device
    dst_block_ids: torch.Tensor,  # [num_copies] int64, on the pool's device
) -> None:
    """Copy-on-write: pool[:, :, dst[i]] = pool[:, :, src[i]] for all layers, K and V.

    Destinations must be distinct and not among the sources. Raises ValueError
    on a non-contiguous pool or id tensors of different lengths (Triton path).
    """
    if use_triton(pool):
        copy_blocks_triton(pool, src_block_ids, dst_block_ids)
    else:
        copy_blocks_reference(pool, src_block_ids, dst_block_ids)


def rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> torch.Tensor:  # [num_tokens, hidden_size], x's dtype
    """RMSNorm with fp32 statistics."""
    if use_triton(x):
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    residual: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (rms_norm(x + residual), x + residual)
    """The residual add and the RMSNorm after it, in one pass on CUDA."""
    if use_triton(x):
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], rotated in place
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, rotary_dim] fp32, from rope_cos_sin_cache
) -> None:
    """Rotate-half rotary embedding of the new tokens' queries and keys, in place."""
    if use_triton(query):
        rotary_embedding_triton(positions, query, key, cos_sin_cache)
    else:
        rotary_embedding_reference(positions, query, key, cos_sin_cache)


def silu_and_mul(
    gate: torch.Tensor,  # [num_tokens, intermediate_size]
    up: torch.Tensor,  # [num_tokens, intermediate_size]
) -> torch.Tensor:  # [num_tokens, intermediate_size], gate's dtype
    """silu(gate) * up, one pass on CUDA."""
    if use_triton(gate):
        return silu_and_mul_triton(gate, up)
    return silu_and_mul_reference(gate, up)


def gumbel_sample(
    scaled: torch.Tensor,  # [rows, vocab] float32: logits / temperature, masked with -inf
    seeds: torch.Tensor,  # [rows] int32
) -> torch.Tensor:  # [rows] int64
    """One token per row, drawn with probability softmax(scaled) by the
    Gumbel-max trick over noise hashed from (seed, token id): the same draw
    whatever else shares the batch. One launch on CUDA."""
    if use_triton(scaled):
        return gumbel_sample_triton(scaled, seeds)
    return gumbel_sample_reference(scaled, seeds)


__all__ = [
    "NO_SPLIT_TOKENS",
    "PADDING_SLOT",
    "add_rms_norm",
    "compiled_variant_counts",
    "copy_blocks",
    "decode_table_widths",
    "gumbel_sample",
    "no_split_plan",
    "paged_attention",
    "paged_decode_attention",
    "plan_decode_row_split",
    "precompile",
    "prefill_table_widths",
    "rms_norm",
    "rope_cos_sin_cache",
    "rotary_embedding",
    "silu_and_mul",
    "split_capacity",
    "swap_blocks",
    "write_kv_cache",
]
