"""v7's question: the same kernel over a head-major copy of the cache (not adopted).

The pool stores a layer's keys as [blocks, block_size, kv_heads, head_dim]
(slot-major): one kv head's 16 keys in a block are 256-byte rows 2 KiB apart.
Head-major, [blocks, kv_heads, block_size, head_dim], makes them one 4 KiB run,
as SDPA's contiguous cache has them. The partition kernel takes the cache's
block, slot and head strides, so only the strides change. On an H100 it timed
0.997-1.008 of the pool's layout (docs/kernels-notes.md v7).
"""

from __future__ import annotations

import torch

from benchmarks.decode_experiments.launch import launch_decode
from pagedserve.kernels.paged_decode_attention import _decode_partition_kernel


def head_major_copy(cache: torch.Tensor) -> torch.Tensor:
    """[blocks, block_size, kv_heads, D] -> [blocks, kv_heads, block_size, D], same values."""
    return cache.transpose(1, 2).contiguous()


def _head_major(heads_fastest: bool):
    def run(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        # The harness hands over the slot-major caches; their head-major copies
        # are made once per cache and kept.
        return launch_decode(
            _decode_partition_kernel, query, *_copies(key_cache, value_cache), block_tables,
            seq_lens, scale, out, head_major=True, overrides={"HEADS_FASTEST": heads_fastest},
        )  # fmt: skip

    return run


_cached: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _copies(key_cache: torch.Tensor, value_cache: torch.Tensor):
    key = (key_cache.data_ptr(), value_cache.data_ptr())
    if key not in _cached:
        _cached.clear()  # one shape's caches at a time
        _cached[key] = (head_major_copy(key_cache), head_major_copy(value_cache))
    return _cached[key]


VARIANTS = {"head-major": _head_major(True), "head-major-seq-fastest": _head_major(False)}
