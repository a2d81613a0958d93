"""Compiling every kernel variant an executor can meet, before it serves.

Triton compiles a kernel the first time a launch brings a new variant: a new
dtype, a new set of compile-time constants (the tile and partition options the
launch rules pick from shapes), a new specialization of an integer argument
(equal to 1, divisible by 16) or a new pointer alignment. The kernels mark the
integers that change from step to step as not specialized, and the launch rules
choose among a few configurations per model shape, listed by
prefill_options.prefill_configs and paged_decode_attention.decode_configs.
precompile launches each of those once on small scratch tensors of its own, so
that the executor's first requests find every variant compiled.

Scratch tensors, never the shared KV pool: other executors' K/V live there.
The variants match the executor's launches as long as the executor's tensors
are laid out as the scratch ones are: contiguous query [tokens, heads, dim],
key/value [tokens, kv heads, dim] with each token's heads side by side, a
contiguous cache of the same block size, int32 tables, int64 slots, and fresh
(16-byte aligned) allocations. A view at an odd offset would meet an
alignment variant compiled on first use, as before.
"""

from __future__ import annotations

import torch

from pagedserve.kernels._backend import HAS_TRITON, triton, use_triton
from pagedserve.kernels.copy_blocks import _copy_blocks_kernel, copy_blocks_triton
from pagedserve.kernels.decode_rows import (
    _merge_decode_row_parts_kernel,
    no_split_plan,
    split_capacity,
)
from pagedserve.kernels.gumbel_sample import _gumbel_sample_kernel
from pagedserve.kernels.paged_attention import _paged_attention_kernel, paged_attention_triton
from pagedserve.kernels.paged_decode_attention import (
    _decode_merge_kernel,
    _decode_partition_kernel,
    decode_configs,
    paged_decode_attention_triton,
    partition_count_classes,
)
from pagedserve.kernels.prefill_options import prefill_configs
from pagedserve.kernels.rms_norm import _rms_norm_kernel
from pagedserve.kernels.rotary_embedding import _rotary_embedding_kernel
from pagedserve.kernels.silu_and_mul import _silu_and_mul_kernel
from pagedserve.kernels.write_kv_cache import _write_kv_cache_kernel, write_kv_cache_triton

# The Triton kernels an executor launches. precompile covers the KV-cache and
# attention kernels, whose variants follow each step's shapes; the layer ops
# (norms, rotary embedding, SiLU-and-mul) and the sampler's Gumbel draw have
# one variant per model, compiled by the warm-up's requests (executor/warm_up.py).
EXECUTOR_KERNELS = {
    "write_kv_cache": _write_kv_cache_kernel,
    "paged_attention": _paged_attention_kernel,
    "decode_partition": _decode_partition_kernel,
    "decode_merge": _decode_merge_kernel,
    "decode_row_parts_merge": _merge_decode_row_parts_kernel,
    "copy_blocks": _copy_blocks_kernel,
    "rms_norm": _rms_norm_kernel,
    "rotary_embedding": _rotary_embedding_kernel,
    "silu_and_mul": _silu_and_mul_kernel,
    "gumbel_sample": _gumbel_sample_kernel,
}


def precompile(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    block_size_tokens: int,
    device: torch.device,
    cache_dtype: torch.dtype | None = None,
) -> int:
    """Launch every executor kernel in every configuration its launch rules can
    choose for this attention shape, on scratch tensors; returns the number of
    launches made. Synchronizes with the device before returning.

    Returns 0 at once where the torch references serve (a CPU device, or
    PAGEDSERVE_KERNELS=torch). Raises ValueError on shapes the kernels do not
    support, as the kernels themselves would on the first request.
    """
    device = torch.device(device)
    cache_dtype = cache_dtype or dtype
    if device.type != "cuda" or not use_triton(torch.empty(0, device=device)):
        return 0
    scratch = _Scratch(
        num_heads, num_kv_heads, head_dim, dtype, cache_dtype, block_size_tokens, device
    )
    with torch.cuda.device(device):
        launches = scratch.write_kv_cache() + scratch.copy_blocks()
        launches += scratch.prefills() + scratch.decodes()
        torch.cuda.synchronize(device)
    return launches


def compiled_variant_counts(device: torch.device) -> dict[str, int]:
    """Variants compiled so far on `device`, per executor kernel. Reads Triton's
    per-device kernel cache (JITFunction.device_caches, triton 3.x internals);
    {} without Triton or off CUDA."""
    device = torch.device(device)
    if not HAS_TRITON or device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    counts = {}
    for name, kernel in EXECUTOR_KERNELS.items():
        caches = getattr(kernel, "device_caches", {})
        counts[name] = len(caches[index][0]) if index in caches else 0
    return counts


class _Scratch:
    """Small tensors of the executor's layouts, and one launch per variant."""

    def __init__(self, num_heads, num_kv_heads, head_dim, dtype, cache_dtype, block_size, device):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.dtype, self.block_size, self.device = dtype, block_size, device
        # Two blocks: copy_blocks copies one onto the other.
        cache_shape = (2, block_size, num_kv_heads, head_dim)
        self.key_cache = torch.zeros(cache_shape, dtype=cache_dtype, device=device)
        self.value_cache = torch.zeros(cache_shape, dtype=cache_dtype, device=device)
        self.scale = head_dim**-0.5

    def _tokens(self, num_tokens: int, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(num_tokens, num_heads, self.head_dim, dtype=dtype, device=self.device)

    def _int32(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=self.device)

    def write_kv_cache(self) -> int:
        key = self._tokens(1, self.num_kv_heads, self.dtype)
        slots = torch.zeros(1, dtype=torch.int64, device=self.device)
        write_kv_cache_triton(key, key.clone(), self.key_cache, self.value_cache, slots)
        return 1

    def copy_blocks(self) -> int:
        # [num_layers=1, 2, num_blocks=2, block_size, num_kv_heads, head_dim]
        pool = torch.stack((self.key_cache, self.value_cache))[None]
        # Two fresh tensors, as the executor's: a slice at an 8-byte offset
        # would compile the unaligned-pointer variant instead.
        src = torch.zeros(1, dtype=torch.int64, device=self.device)
        dst = torch.ones(1, dtype=torch.int64, device=self.device)
        copy_blocks_triton(pool, src, dst)
        return 1

    def prefills(self) -> int:
        """Each prefill configuration, without and with cached context: one
        sequence of 2 new tokens (after 1 cached token when cached); then each
        decode configuration for the decode rows' launch of a cached batch,
        without and with a plan that splits them (and its merge)."""
        num_new = 2
        query = self._tokens(num_new, self.num_heads, self.dtype)
        key = self._tokens(num_new, self.num_kv_heads, self.key_cache.dtype)
        value = torch.zeros_like(key)
        query_start_loc = self._int32([0, num_new])
        launches = 0
        for config in prefill_configs(self.head_dim, self.key_cache.dtype):
            # The table's width decides nothing here (config is given); wide
            # enough to hold the sequence.
            table = self._int32([[0]])
            for cached_context in (False, True):
                seq_lens = self._int32([num_new + int(cached_context)])
                paged_attention_triton(
                    query, key, value, self.key_cache, self.value_cache, table,
                    query_start_loc, seq_lens, self.scale, config=dict(config),
                    cached_context=cached_context,
                )  # fmt: skip
                launches += 1 + int(cached_context)
        # A plan as long as the executor's (split_capacity entries): the same
        # variants whichever rows it splits, so one that splits none.
        plan = self._int32(no_split_plan(split_capacity(self.num_kv_heads, self.device)))
        for decode_config in decode_configs(self.head_dim, self.key_cache.dtype):
            for decode_split in (None, plan):
                paged_attention_triton(
                    query, key, value, self.key_cache, self.value_cache, self._int32([[0]]),
                    query_start_loc, self._int32([num_new + 1]), self.scale,
                    decode_config=dict(decode_config), decode_split=decode_split,
                )  # fmt: skip
                launches += 2 if decode_split is None else 3
        return launches

    def decodes(self) -> int:
        """Each decode configuration at 1, 2, 4, ... 64 partitions (the merge
        kernel is compiled per power of two); one sequence of one key."""
        query = self._tokens(1, self.num_heads, self.dtype)
        seq_lens = self._int32([1])
        launches = 0
        for config in decode_configs(self.head_dim, self.key_cache.dtype):
            block_n = config["BLOCK_N"]
            for num_partitions in partition_count_classes():
                width = triton.cdiv(num_partitions * block_n, self.block_size)
                # block_n itself where the block size divides it (16-token blocks)
                partition_tokens = block_n * triton.cdiv(
                    width * self.block_size, num_partitions * block_n
                )
                table = torch.zeros(1, width, dtype=torch.int32, device=self.device)
                paged_decode_attention_triton(
                    query, self.key_cache, self.value_cache, table, seq_lens, self.scale,
                    partition_tokens=partition_tokens, config=dict(config),
                )  # fmt: skip
                launches += 1
        return launches
