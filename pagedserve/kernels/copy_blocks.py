"""Copy-on-write: duplicate whole blocks inside one KV pool, every layer, K and V.

The pool is `[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]`.
Seen as `num_layers * 2` planes of `num_blocks` blocks, a block is one
contiguous run of `block_size * num_kv_heads * head_dim` values in each plane,
so a copy is a strided memcpy that one launch can do for all planes.
"""

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher

# Values each program moves: 8 KiB of bf16, 32 bytes per thread at 4 warps.
_CHUNK_NUMEL = 4096


def copy_blocks_reference(
    pool: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
    src_block_ids: torch.Tensor,  # [num_copies] int64
    dst_block_ids: torch.Tensor,  # [num_copies] int64
) -> None:
    """Pure torch: gather the sources (a copy), then scatter into the destinations."""
    pool[:, :, dst_block_ids] = pool[:, :, src_block_ids]


# num_blocks is fixed for a pool, but not specialized all the same: a variant
# compiled on a scratch pool (kernels.precompile) then serves every pool.
@triton.jit(do_not_specialize=["num_blocks"])
def _copy_blocks_kernel(
    pool_ptr,
    src_block_ids_ptr,
    dst_block_ids_ptr,
    num_blocks,
    BLOCK_NUMEL: tl.constexpr,  # block_size * num_kv_heads * head_dim
    CHUNK_NUMEL: tl.constexpr,
):
    copy_index = tl.program_id(0)
    plane = tl.program_id(1)  # layer * 2 + (0 for K, 1 for V)
    chunk = tl.program_id(2)
    src_block = tl.load(src_block_ids_ptr + copy_index).to(tl.int64)
    dst_block = tl.load(dst_block_ids_ptr + copy_index).to(tl.int64)
    # int64 offsets: a pool of several GiB has more than 2**31 values.
    plane_first_block = plane.to(tl.int64) * num_blocks
    offsets = chunk * CHUNK_NUMEL + tl.arange(0, CHUNK_NUMEL)
    mask = offsets < BLOCK_NUMEL
    src = pool_ptr + (plane_first_block + src_block) * BLOCK_NUMEL + offsets
    dst = pool_ptr + (plane_first_block + dst_block) * BLOCK_NUMEL + offsets
    tl.store(dst, tl.load(src, mask=mask), mask=mask)


_copy_blocks_launcher = DirectLauncher(_copy_blocks_kernel)


def copy_blocks_triton(
    pool: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
    src_block_ids: torch.Tensor,  # [num_copies] int64
    dst_block_ids: torch.Tensor,  # [num_copies] int64
) -> None:
    """Triton: one program per (copy, layer and K/V plane, chunk of the block).

    Destinations must be distinct and must not be sources (copy-on-write gives
    fresh blocks); otherwise which value lands is undefined. Raises ValueError
    on a non-contiguous pool or id tensors of different lengths.
    """
    if not pool.is_contiguous():
        raise ValueError("pool must be contiguous")
    if src_block_ids.shape != dst_block_ids.shape:
        raise ValueError("src_block_ids and dst_block_ids must have the same shape")
    num_copies = src_block_ids.numel()
    if num_copies == 0:
        return
    num_layers, _, num_blocks = pool.shape[:3]
    block_numel = pool[0, 0, 0].numel()
    chunk_numel = min(_CHUNK_NUMEL, next_power_of_2(block_numel))
    grid = (num_copies, num_layers * 2, triton.cdiv(block_numel, chunk_numel))
    _copy_blocks_launcher.launch(
        grid,
        pool,
        src_block_ids,
        dst_block_ids,
        num_blocks,
        BLOCK_NUMEL=block_numel,
        CHUNK_NUMEL=chunk_numel,
    )
