"""Rotary position embedding (the rotate-half form used by Llama-family models).

For a token at position p and a head vector x, with half = rotary_dim // 2:
  x[i]        <- x[i] * cos(p * f_i) - x[i + half] * sin(p * f_i)
  x[i + half] <- x[i + half] * cos(p * f_i) + x[i] * sin(p * f_i)
for i < half, where f_i = base ** (-2i / rotary_dim); dims past rotary_dim
are left alone. Applied in place to the queries and keys of the new tokens.
"""

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher


def rope_cos_sin_cache(
    max_position: int, rotary_dim: int, base: float, device: torch.device | str = "cpu"
) -> torch.Tensor:  # [max_position, rotary_dim] fp32: cos in the first half, sin in the second
    """The table both implementations read, computed once per model."""
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float().to(device)


def _rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    # x: [num_tokens, num_heads, head_dim]; cos, sin: [num_tokens, 1, half]
    half = cos.shape[-1]
    first = x[..., :half].float()  # a view when x is fp32: both results before writing
    second = x[..., half : 2 * half].float()
    new_first = (first * cos - second * sin).to(x.dtype)
    new_second = (second * cos + first * sin).to(x.dtype)
    x[..., :half] = new_first
    x[..., half : 2 * half] = new_second


def rotary_embedding_reference(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], rotated in place
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, rotary_dim] fp32
) -> None:
    """Pure torch, fp32 arithmetic, one rounding per output."""
    half = cos_sin_cache.shape[1] // 2
    table = cos_sin_cache[positions.long()]  # [num_tokens, rotary_dim]
    cos, sin = table[:, None, :half], table[:, None, half:]
    _rotate_reference(query, cos, sin)
    _rotate_reference(key, cos, sin)


@triton.jit
def _rotate_heads(
    x_ptr,
    token,
    x_stride_token,
    x_stride_head,
    cos,
    sin,
    NUM_HEADS,
    HEADS_BLOCK: tl.constexpr,
    HALF: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
):
    # cos, sin: [HALF_BLOCK] fp32. All heads of one token at once: [HEADS_BLOCK, HALF_BLOCK].
    heads = tl.arange(0, HEADS_BLOCK)
    dims = tl.arange(0, HALF_BLOCK)
    mask = (heads[:, None] < NUM_HEADS) & (dims[None, :] < HALF)
    first_ptrs = x_ptr + token * x_stride_token + heads[:, None] * x_stride_head + dims[None, :]
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    new_first = first * cos[None, :] - second * sin[None, :]
    new_second = second * cos[None, :] + first * sin[None, :]
    tl.store(first_ptrs, new_first.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first_ptrs + HALF, new_second.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_embedding_kernel(
    positions_ptr,
    query_ptr,
    key_ptr,
    cos_sin_cache_ptr,
    query_stride_token,
    query_stride_head,
    key_stride_token,
    key_stride_head,
    cache_stride_position,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_BLOCK: tl.constexpr,  # next power of two >= NUM_HEADS
    KV_HEADS_BLOCK: tl.constexpr,
    HALF: tl.constexpr,  # rotary_dim // 2
    HALF_BLOCK: tl.constexpr,
):
    # One program per token: its cos/sin row is read once for all heads.
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_BLOCK)
    row = cos_sin_cache_ptr + position * cache_stride_position
    cos = tl.load(row + dims, mask=dims < HALF, other=0.0)
    sin = tl.load(row + HALF + dims, mask=dims < HALF, other=0.0)
    _rotate_heads(
        query_ptr,
        token,
        query_stride_token,
        query_stride_head,
        cos,
        sin,
        NUM_HEADS,
        HEADS_BLOCK,
        HALF,
        HALF_BLOCK,
    )
    _rotate_heads(
        key_ptr,
        token,
        key_stride_token,
        key_stride_head,
        cos,
        sin,
        NUM_KV_HEADS,
        KV_HEADS_BLOCK,
        HALF,
        HALF_BLOCK,
    )


_rotary_embedding_launcher = DirectLauncher(_rotary_embedding_kernel)


def rotary_embedding_triton(
    positions: torch.Tensor,  # [num_tokens] int64
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], rotated in place
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], rotated in place
    cos_sin_cache: torch.Tensor,  # [max_position, rotary_dim] fp32
) -> None:
    """Triton: one program per token. query and key may be strided views (e.g.
    slices of a fused qkv output) but their last dimension must be contiguous;
    raises ValueError otherwise, or when rotary_dim exceeds head_dim."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    rotary_dim = cos_sin_cache.shape[1]
    if query.stride(2) != 1 or key.stride(2) != 1 or cos_sin_cache.stride(1) != 1:
        raise ValueError("query, key and cos_sin_cache need a contiguous last dimension")
    if rotary_dim > head_dim or rotary_dim % 2:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_dim {head_dim}")
    if num_tokens == 0:
        return
    _rotary_embedding_launcher.launch(
        (num_tokens,),
        positions, query, key, cos_sin_cache,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), cos_sin_cache.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
        HEADS_BLOCK=next_power_of_2(num_heads), KV_HEADS_BLOCK=next_power_of_2(num_kv_heads),
        HALF=rotary_dim // 2, HALF_BLOCK=next_power_of_2(rotary_dim // 2),
    )  # fmt: skip
