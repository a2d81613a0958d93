"""The package's decode launch (same partition rule, launch options and merge)
for a variant partition kernel: the experiments change the kernel, not the rules."""

from __future__ import annotations

import torch
import triton

from pagedserve.kernels._backend import dot_in_fp32, dot_precision, next_power_of_2
from pagedserve.kernels.attention_tiles import LOG2_E
from pagedserve.kernels.paged_decode_attention import (
    _decode_config,
    _decode_merge_kernel,
    _launch_overrides,
    choose_partition_tokens,
)


def launch_decode(
    kernel,  # a partition kernel with _decode_partition_kernel's arguments
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # slot-major [blocks, block_size, kv_heads, D] or head-major
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    out: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    *,
    head_major: bool = False,  # caches are [blocks, kv_heads, block_size, D]
    extra_args: tuple = (),  # the kernel's arguments between the table stride and num_partitions
    overrides: dict | None = None,  # launch options or constexprs on top of the rules'
    single_overrides: dict | None = None,  # more of them, for one partition per sequence
) -> torch.Tensor:
    num_seqs, num_heads, head_dim = query.shape
    if head_major:
        _, num_kv_heads, block_size, _ = key_cache.shape
        block_stride, slot_stride, head_stride = (key_cache.stride(i) for i in (0, 2, 1))
    else:
        _, block_size, num_kv_heads, _ = key_cache.shape
        block_stride, slot_stride, head_stride = (key_cache.stride(i) for i in (0, 1, 2))
    max_seq_len = block_tables.shape[1] * block_size
    config = _decode_config(head_dim, key_cache.dtype)
    partition_tokens = choose_partition_tokens(
        num_seqs, num_kv_heads, max_seq_len, query.device, config["BLOCK_N"]
    )
    num_partitions = triton.cdiv(max_seq_len, partition_tokens)
    num_programs = num_seqs * num_kv_heads * num_partitions
    config.update(_launch_overrides(num_programs, partition_tokens, query.device))
    config.update(overrides or {})
    single = num_partitions == 1
    if single:
        config.update(single_overrides or {})
    partial_shape = (1, 1, 1) if single else (num_seqs, num_heads, num_partitions)
    partial_out = torch.empty(*partial_shape, head_dim, dtype=torch.float32, device=query.device)
    partial_max = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    partial_sum = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    if config["HEADS_FASTEST"]:
        grid = (num_kv_heads, num_seqs, num_partitions)
    else:
        grid = (num_seqs, num_kv_heads, num_partitions)
    kernel[grid](
        query, key_cache, value_cache, block_tables, seq_lens, out,
        partial_out, partial_max, partial_sum, scale * LOG2_E, partition_tokens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        block_stride, slot_stride, head_stride, block_tables.stride(0),
        *extra_args, num_partitions,
        BLOCK_SIZE=block_size, GROUP_SIZE=num_heads // num_kv_heads,
        GROUP_BLOCK=max(16, next_power_of_2(num_heads // num_kv_heads)), HEAD_DIM=head_dim,
        SINGLE_PARTITION=single,
        DOT_IN_FP32=dot_in_fp32(kernel, key_cache.dtype),
        DOT_PRECISION=dot_precision(key_cache.dtype),
        **config,
    )  # fmt: skip
    if not single:
        _decode_merge_kernel[(num_seqs, num_heads)](
            seq_lens, out, partial_out, partial_max, partial_sum, partition_tokens,
            num_partitions, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, PARTITIONS_BLOCK=next_power_of_2(num_partitions),
        )  # fmt: skip
    return out
