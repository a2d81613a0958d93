"""v11: the decode launch rule before v11 (v5's), beside the package's.

v5 chose 32 keys x 2 warps x 6 stages for at most 4 programs per
multiprocessor of at most 2k keys each, and 128 x 4 x 3 for everything else;
measured over shuffled tables. v11 measured over the block manager's tables
(served-64) and moved the thresholds (paged_decode_attention.py).
"""

from __future__ import annotations

import triton

from benchmarks.decode_experiments.ordered_blocks import _in_served_tables
from pagedserve.kernels.paged_decode_attention import (
    _FEW_SHORT_PROGRAMS_OPTIONS,
    _decode_config,
    _num_sms,
    choose_partition_tokens,
    paged_decode_attention_triton,
)


def _v5_rule(query, key_cache, block_tables) -> tuple[dict, int]:
    num_seqs, _, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    max_seq_len = block_tables.shape[1] * block_size
    config = _decode_config(head_dim, key_cache.dtype)
    partition = choose_partition_tokens(
        num_seqs, num_kv_heads, max_seq_len, query.device, config["BLOCK_N"]
    )
    num_programs = num_seqs * num_kv_heads * triton.cdiv(max_seq_len, partition)
    if num_programs <= 4 * _num_sms(query.device) and partition <= 2048:
        config.update(_FEW_SHORT_PROGRAMS_OPTIONS)
    return config, partition


def decode_v5_rule(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    config, partition = _v5_rule(query, key_cache, block_tables)
    return paged_decode_attention_triton(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out=out,
        partition_tokens=partition, config=config,
    )  # fmt: skip


def decode_served_v5_rule(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    keys, values, table = _in_served_tables(key_cache, value_cache, block_tables, 64)
    return decode_v5_rule(query, keys, values, table, seq_lens, scale, out)


VARIANTS = {"v7 v5-rule": decode_v5_rule, "v7-served-64 v5-rule": decode_served_v5_rule}
