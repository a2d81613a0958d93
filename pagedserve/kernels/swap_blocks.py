"""Swap blocks between a device KV pool and a host KV pool (preemption by swapping).

Both pools are `[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]`
and differ only in num_blocks. The copy is a gather on the source device, one
transfer, and a scatter on the destination device; no Triton kernel is needed
since the bus, not the gather, sets the speed.
"""

import torch


def swap_blocks(
    src_pool: torch.Tensor,  # [num_layers, 2, num_src_blocks, block_size, num_kv_heads, head_dim]
    dst_pool: torch.Tensor,  # [num_layers, 2, num_dst_blocks, block_size, num_kv_heads, head_dim]
    src_block_ids: torch.Tensor,  # [num_swaps] int64, any device
    dst_block_ids: torch.Tensor,  # [num_swaps] int64, any device
) -> None:
    """Copy src_pool's blocks src_block_ids[i] into dst_pool's dst_block_ids[i].

    Host to device: the gathered blocks are staged in pinned memory when CUDA is
    present, so the transfer is asynchronous on the current stream. Device to
    host: the transfer is synchronous, so the host pool is complete on return.
    Raises ValueError when the pools' block shapes or the id counts differ.
    """
    if src_pool.shape[:2] != dst_pool.shape[:2] or src_pool.shape[3:] != dst_pool.shape[3:]:
        raise ValueError(f"pool shapes differ: {tuple(src_pool.shape)} vs {tuple(dst_pool.shape)}")
    if src_block_ids.shape != dst_block_ids.shape:
        raise ValueError("src_block_ids and dst_block_ids must have the same shape")
    if src_block_ids.numel() == 0:
        return
    src_ids = src_block_ids.to(src_pool.device, torch.int64)
    dst_ids = dst_block_ids.to(dst_pool.device, torch.int64)
    # [num_layers, 2, num_swaps, block_size, num_kv_heads, head_dim]
    gathered = src_pool.index_select(2, src_ids)
    to_device = dst_pool.device.type == "cuda" and src_pool.device.type == "cpu"
    if to_device:
        gathered = gathered.pin_memory()
    moved = gathered.to(dst_pool.device, non_blocking=to_device)
    dst_pool.index_copy_(2, dst_ids, moved.to(dst_pool.dtype))
