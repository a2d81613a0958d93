"""Decode attention: one new query per sequence, at its last position.

The Triton path splits each sequence's keys into partitions processed by
separate programs (flash-decoding), then merges the partial softmaxes, so that
a handful of long sequences still fills every multiprocessor.
"""

import functools

import torch

from pagedserve.kernels._backend import dot_in_fp32, dot_precision, next_power_of_2, tl, triton
from pagedserve.kernels.attention_tiles import LOG2_E, attend_paged_range, check_attention_shapes
from pagedserve.kernels.direct_launch import DirectLauncher


@triton.jit
def decode_program(HEADS_FASTEST: tl.constexpr):
    """(seq, kv_head, num_kv_heads, partition) of this partition program."""
    if HEADS_FASTEST:
        # Programs launched together read the same cache blocks: a block holds
        # all kv heads of its tokens side by side.
        kv_head = tl.program_id(0)
        seq = tl.program_id(1)
        num_kv_heads = tl.num_programs(0)
    else:
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        num_kv_heads = tl.num_programs(1)
    return seq, kv_head, num_kv_heads, tl.program_id(2)


@triton.jit
def load_group_query(
    query_ptr,
    key_cache_ptr,  # for the dtype of the dot
    seq,
    kv_head,
    query_stride_seq,
    query_stride_head,
    GROUP_SIZE: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """The query rows of kv_head's group, [GROUP_BLOCK, HEAD_DIM] (rows past
    GROUP_SIZE zero) in the dot's dtype; their heads and row mask."""
    group_rows = tl.arange(0, GROUP_BLOCK)
    row_mask = group_rows < GROUP_SIZE
    head = kv_head * GROUP_SIZE + group_rows  # [GROUP_BLOCK]
    dims = tl.arange(0, HEAD_DIM)
    q_offsets = seq.to(tl.int64) * query_stride_seq + head * query_stride_head
    q = tl.load(query_ptr + q_offsets[:, None] + dims[None, :], mask=row_mask[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    else:
        q = q.to(key_cache_ptr.dtype.element_ty)
    return q, head, row_mask


# Per-step integers are not specialized (docs/kernels-notes.md v6).
# partition_tokens stays specialized: it is always a multiple of BLOCK_N >= 32,
# so its specialization never changes.
@triton.jit(do_not_specialize=["block_table_stride_seq", "num_partitions"])
def _decode_partition_kernel(
    query_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    out_ptr,  # [num_seqs, num_heads, head_dim]: written when SINGLE_PARTITION
    partial_out_ptr,  # [num_seqs, num_heads, num_partitions, head_dim] fp32, unnormalised
    partial_max_ptr,  # [num_seqs, num_heads, num_partitions] fp32
    partial_sum_ptr,  # [num_seqs, num_heads, num_partitions] fp32
    scale_log2,
    partition_tokens,
    query_stride_seq,
    query_stride_head,
    out_stride_seq,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    num_partitions,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,  # GROUP_SIZE padded to a power of two >= 16 (tl.dot)
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_PARTITION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # see _backend.dot_precision
    HEADS_FASTEST: tl.constexpr,  # grid axis 0 is the kv head, not the sequence
):
    # Program (seq, kv_head, partition): the query rows are the group's heads,
    # so each K/V tile is read once for all of them.
    seq, kv_head, num_kv_heads, partition = decode_program(HEADS_FASTEST)
    seq_len = tl.load(seq_lens_ptr + seq)
    first_token = partition * partition_tokens
    if first_token >= seq_len:
        return  # the merge kernel reads only partitions that hold keys
    key_limit = tl.minimum(seq_len, first_token + partition_tokens)

    q, head, row_mask = load_group_query(
        query_ptr, key_cache_ptr, seq, kv_head, query_stride_seq, query_stride_head,
        GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, DOT_IN_FP32,
    )  # fmt: skip

    row_max = tl.full([GROUP_BLOCK], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([GROUP_BLOCK], dtype=tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32)
    block_table_row_ptr = block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq
    row_max, row_sum, acc = attend_paged_range(
        q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
        kv_head * cache_stride_head, first_token, key_limit, scale_log2, cache_stride_block,
        cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, DOT_IN_FP32, DOT_PRECISION,
    )  # fmt: skip

    store_partition_result(
        acc, row_max, row_sum, seq, partition, head, row_mask, num_kv_heads,
        out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        out_stride_seq, out_stride_head, num_partitions, GROUP_SIZE, HEAD_DIM, SINGLE_PARTITION,
    )  # fmt: skip


_decode_partition_launcher = DirectLauncher(_decode_partition_kernel)


@triton.jit
def store_partition_result(
    acc,  # [GROUP_BLOCK, HEAD_DIM] fp32, unnormalised
    row_max,  # [GROUP_BLOCK] fp32
    row_sum,  # [GROUP_BLOCK] fp32
    seq, partition, head, row_mask, num_kv_heads,
    out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
    out_stride_seq, out_stride_head, num_partitions,
    GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, SINGLE_PARTITION: tl.constexpr,
):  # fmt: skip
    """A partition program's end: the normalised output when it is the only
    partition, else its partial output and softmax statistics for the merge."""
    dims = tl.arange(0, HEAD_DIM)
    if SINGLE_PARTITION:
        out_offsets = seq.to(tl.int64) * out_stride_seq + head * out_stride_head
        out = acc / row_sum[:, None]
        tl.store(
            out_ptr + out_offsets[:, None] + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_mask[:, None],
        )
    else:
        # Partial buffers are contiguous [num_seqs, num_heads, num_partitions(, head_dim)].
        stat_offsets = (
            seq.to(tl.int64) * (GROUP_SIZE * num_kv_heads) + head
        ) * num_partitions + partition
        store_partial_result(
            acc, row_max, row_sum, stat_offsets, row_mask, partial_out_ptr, partial_max_ptr,
            partial_sum_ptr, HEAD_DIM,
        )  # fmt: skip


@triton.jit
def store_partial_result(
    acc,  # [GROUP_BLOCK, HEAD_DIM] fp32, unnormalised
    row_max,  # [GROUP_BLOCK] fp32
    row_sum,  # [GROUP_BLOCK] fp32
    stat_offsets,  # [GROUP_BLOCK]: each row's entry in the partial buffers
    row_mask,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    HEAD_DIM: tl.constexpr,
):
    """A partition's unnormalised output and softmax statistics, for a merge."""
    tl.store(partial_max_ptr + stat_offsets, row_max, mask=row_mask)
    tl.store(partial_sum_ptr + stat_offsets, row_sum, mask=row_mask)
    dims = tl.arange(0, HEAD_DIM)
    tl.store(
        partial_out_ptr + stat_offsets[:, None] * HEAD_DIM + dims[None, :],
        acc,
        mask=row_mask[:, None],
    )


@triton.jit(do_not_specialize=["num_partitions"])
def _decode_merge_kernel(
    seq_lens_ptr,
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    partition_tokens,
    num_partitions,
    out_stride_seq,
    out_stride_head,
    HEAD_DIM: tl.constexpr,
    PARTITIONS_BLOCK: tl.constexpr,  # num_partitions rounded up to a power of two
):
    # Program (seq, head): softmax-weighted sum of the partitions' partial outputs.
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    stats_start = (seq.to(tl.int64) * tl.num_programs(1) + head) * num_partitions
    out = merge_partial_outputs(
        partial_out_ptr, partial_max_ptr, partial_sum_ptr, stats_start,
        tl.cdiv(seq_len, partition_tokens), HEAD_DIM, PARTITIONS_BLOCK,
    )  # fmt: skip
    out_offsets = (
        seq.to(tl.int64) * out_stride_seq + head * out_stride_head + tl.arange(0, HEAD_DIM)
    )
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty))


@triton.jit
def merge_partial_outputs(
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    stats_start,  # the head's first partition in the partial buffers
    num_used,  # its partitions that hold keys: the num_used from stats_start
    HEAD_DIM: tl.constexpr,
    PARTITIONS_BLOCK: tl.constexpr,  # a power of two >= num_used
):
    """One head's output, [HEAD_DIM] fp32: the softmax-weighted sum of its
    partitions' partial outputs."""
    partitions = tl.arange(0, PARTITIONS_BLOCK)
    used = partitions < num_used
    stat_offsets = stats_start + partitions
    part_max = tl.load(partial_max_ptr + stat_offsets, mask=used, other=float("-inf"))
    part_sum = tl.load(partial_sum_ptr + stat_offsets, mask=used, other=0.0)
    weights = tl.exp2(part_max - tl.max(part_max, axis=0))  # [PARTITIONS_BLOCK], 0 if unused
    dims = tl.arange(0, HEAD_DIM)
    part_out = tl.load(
        partial_out_ptr + stat_offsets[:, None] * HEAD_DIM + dims[None, :],
        mask=used[:, None],
        other=0.0,
    )  # [PARTITIONS_BLOCK, HEAD_DIM]
    return tl.sum(part_out * weights[:, None], axis=0) / tl.sum(part_sum * weights, axis=0)


_decode_merge_launcher = DirectLauncher(_decode_merge_kernel)


# Programs to aim for: about two per multiprocessor. Measured on an H100
# (docs/kernels-notes.md v4): batch 32 x 8 kv heads (256 programs on 132
# multiprocessors) read fastest with one partition per sequence at every
# context from 1k to 32k, and batch 1 with about 32 partitions.
_PROGRAMS_PER_SM = 2
# Below this many keys a partition's fixed costs (query load, merge) dominate.
_MIN_PARTITION_TOKENS = 256
# The merge kernel holds [partitions, head_dim] fp32 in registers: keep it small.
_MAX_PARTITIONS = 64


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: small, so that tests see several partitions
    return torch.cuda.get_device_properties(device).multi_processor_count


def target_programs(device: torch.device) -> int:
    """Programs a decode launch aims for: about two per multiprocessor."""
    return _PROGRAMS_PER_SM * _num_sms(device)


def choose_partition_tokens(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, device: torch.device, block_n: int
) -> int:
    """Keys per partition, a multiple of block_n, from shapes alone (no device sync).

    max_seq_len is the block table's capacity, an upper bound on every seq_len.
    """
    programs = num_seqs * num_kv_heads  # per partition
    # Rounded, not rounded up: 256 programs against a target of 264 stay whole.
    wanted = (target_programs(device) + programs // 2) // programs
    most = max(1, min(_MAX_PARTITIONS, triton.cdiv(max_seq_len, _MIN_PARTITION_TOKENS)))
    num_partitions = max(1, min(wanted, most))
    tokens = triton.cdiv(max_seq_len, num_partitions)
    return triton.cdiv(tokens, block_n) * block_n


def decode_table_widths(
    num_seqs: int, num_kv_heads: int, max_blocks: int, block_size: int, device: torch.device
) -> list[int]:
    """Block-table widths (columns), ascending, ending at max_blocks, for
    launches of num_seqs sequences at a fixed width (CUDA graphs).

    choose_partition_tokens splits the table's capacity into up to `wanted`
    partitions (about two programs a multiprocessor) of at least
    _MIN_PARTITION_TOKENS keys. At a table as wide as the longest context, a
    step of short sequences keeps only the first partitions busy (H100, 8
    sequences of 1k keys at an 8k table: 1.5x the time at their own width;
    docs/kernels-notes.md v24). Where the rule gives one partition, one width;
    else widths doubling from the capacity it first splits `wanted` ways: a
    step run at the narrowest width that holds it keeps at least half the
    partitions it would have at its own width busy.
    """
    programs = num_seqs * num_kv_heads
    wanted = min(_MAX_PARTITIONS, (target_programs(device) + programs // 2) // programs)
    widths = []
    width = triton.cdiv(wanted * _MIN_PARTITION_TOKENS, block_size)
    while wanted > 1 and width < max_blocks:
        widths.append(width)
        width *= 2
    return widths + [max_blocks]


# Launch options by program count and length (head size <= 128), measured on an
# H100 over the block tables the block manager hands out (docs/kernels-notes.md
# v11; v5 for the first rule, measured over shuffled tables):
# - at most _FEWEST_PROGRAMS_PER_SM programs per multiprocessor, whatever their
#   length, or at most _FEW_PROGRAMS_PER_SM of at most _SHORT_PARTITION_TOKENS
#   keys: 32 keys x 2 warps x 6 stages (batch 32 x 1k-8k, 64 x 1k, 1 x 32k);
# - otherwise 128 keys x 4 warps, with 2 stages up to _TWO_STAGE_PARTITION_TOKENS
#   keys (batch 64 x 2k, 128-256 x 1k) and 3 beyond (8k keys per program).
_FEWEST_PROGRAMS_PER_SM = 2
_FEW_PROGRAMS_PER_SM = 4
_SHORT_PARTITION_TOKENS = 1024
_TWO_STAGE_PARTITION_TOKENS = 2048
_FEW_SHORT_PROGRAMS_OPTIONS = {"BLOCK_N": 32, "num_warps": 2, "num_stages": 6}
_TILE_OPTIONS = {"BLOCK_N", "num_warps", "num_stages", "HEADS_FASTEST"}
_TWO_STAGE_OPTIONS = {"num_stages": 2}


# Float32 (head size <= 128) takes its dot in "tf32x3" (three TF32 products
# per product, on the tensor cores), as prefill does, with one tile option for
# every batch and length. Measured on an H100 (docs/kernels-notes.md v13,
# `benchmarks/float32_precision.py --decode-configs`): 1.9-2.8x faster than
# "ieee" (float32 FMAs) at every shape of the sweep, error against float64
# 3.7e-7 to 6.2e-7 against ieee's 6.4e-7 to 1.2e-6; 64 keys x 4 warps x 2
# stages was within 8% of the fastest option at head size 64 and within 1% at
# 128, where 128-key tiles in tf32x3 took 1.5x the fastest time.
_FLOAT32_DECODE_CONFIG = {
    "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "HEADS_FASTEST": True,
    "DOT_PRECISION": "tf32x3",
}  # fmt: skip


def _decode_config(head_dim: int, cache_dtype: torch.dtype) -> dict:
    """Launch options measured on an H100 (head size 128, bf16; docs/kernels-notes.md v4):
    128 keys x 4 warps x 3 stages was fastest at long contexts and within 1% of
    the best variant at every batch and context of the sweep. The kv-head-major
    grid read 0.2-0.8% faster at batch >= 128 in each of three runs. Float32:
    see _FLOAT32_DECODE_CONFIG."""
    if head_dim > 128:
        return {"BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "HEADS_FASTEST": False}
    if cache_dtype == torch.float32:
        return dict(_FLOAT32_DECODE_CONFIG)
    return {"BLOCK_N": 128, "num_warps": 4, "num_stages": 3, "HEADS_FASTEST": True}


def _has_launch_rule(head_dim: int, cache_dtype: torch.dtype) -> bool:
    """Whether _launch_overrides picks the tiles (16-bit caches, head size <=
    128); elsewhere _decode_config's one option serves every shape."""
    return head_dim <= 128 and cache_dtype != torch.float32


def _launch_overrides(num_programs: int, partition_tokens: int, device: torch.device) -> dict:
    """Overrides of _decode_config where _has_launch_rule (the rules above),
    from shapes alone; empty for long programs, many of them."""
    num_sms = _num_sms(device)
    few_short = (
        num_programs <= _FEW_PROGRAMS_PER_SM * num_sms
        and partition_tokens <= _SHORT_PARTITION_TOKENS
    )
    if num_programs <= _FEWEST_PROGRAMS_PER_SM * num_sms or few_short:
        return dict(_FEW_SHORT_PROGRAMS_OPTIONS)
    if partition_tokens <= _TWO_STAGE_PARTITION_TOKENS:
        return dict(_TWO_STAGE_OPTIONS)
    return {}


def decode_launch_options(
    head_dim: int,
    cache_dtype: torch.dtype,
    num_programs: int,
    partition_tokens: int,
    device: torch.device,
) -> dict:
    """The launch options the rules above give num_programs programs of up to
    partition_tokens keys each (also the varlen kernel's decode rows)."""
    options = _decode_config(head_dim, cache_dtype)
    if _has_launch_rule(head_dim, cache_dtype):
        options.update(_launch_overrides(num_programs, partition_tokens, device))
    return options


def decode_configs(head_dim: int, cache_dtype: torch.dtype) -> list[dict]:
    """Every launch configuration the rules above can choose at this head size
    and cache dtype (kernels.precompile compiles each, with one partition and
    with several)."""
    base = _decode_config(head_dim, cache_dtype)
    if not _has_launch_rule(head_dim, cache_dtype):
        return [base]
    return [base, {**base, **_TWO_STAGE_OPTIONS}, {**base, **_FEW_SHORT_PROGRAMS_OPTIONS}]


# Partition counts the launch can choose: 1 (no merge) to _MAX_PARTITIONS. The
# merge kernel is compiled per power of two of the count (PARTITIONS_BLOCK).
def partition_count_classes() -> list[int]:
    """One partition count per compiled variant: 1, 2, 4, ... _MAX_PARTITIONS."""
    return [1 << power for power in range(_MAX_PARTITIONS.bit_length())]


def paged_decode_attention_triton(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, each >= 1
    scale: float,
    out: torch.Tensor | None = None,  # [num_seqs, num_heads, head_dim], written in full
    partition_tokens: int | None = None,  # keys per partition; None: choose_partition_tokens
    config: dict | None = None,  # overrides _decode_config and DOT_PRECISION (benchmarks)
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim], query's dtype
    """Triton split-K decode: partitions of each sequence's keys, then a merge.

    Never synchronizes with the device (CUDA-graph safe): the partition count
    comes from the block table's width. Raises ValueError on unsupported shapes
    (see paged_attention_triton) or a partition_tokens not a multiple of BLOCK_N.
    """
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    check_attention_shapes(query, key_cache, value_cache)
    if query.stride(2) != 1:
        query = query.contiguous()
    if out is None:
        out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    max_seq_len = block_tables.shape[1] * block_size
    chosen = {**_decode_config(head_dim, key_cache.dtype), **(config or {})}
    if partition_tokens is None:
        partition_tokens = choose_partition_tokens(
            num_seqs, num_kv_heads, max_seq_len, query.device, chosen["BLOCK_N"]
        )
    # The rule picks the tile options unless the caller fixed some (32-key
    # tiles divide the 128-key partitions).
    if _has_launch_rule(head_dim, key_cache.dtype) and not set(config or {}) & _TILE_OPTIONS:
        num_programs = num_seqs * num_kv_heads * triton.cdiv(max_seq_len, partition_tokens)
        chosen.update(_launch_overrides(num_programs, partition_tokens, query.device))
    config = {"DOT_PRECISION": dot_precision(key_cache.dtype), **chosen}
    if partition_tokens % config["BLOCK_N"]:
        raise ValueError(f"partition_tokens {partition_tokens} % BLOCK_N {config['BLOCK_N']}")
    num_partitions = triton.cdiv(max_seq_len, partition_tokens)
    group_size = num_heads // num_kv_heads
    single = num_partitions == 1
    if single:
        # The kernel writes `out` itself and never touches the partial buffers:
        # `out` stands in for them (no allocations, less host time per launch).
        partial_out = partial_max = partial_sum = out
    else:
        stats_shape = (num_seqs, num_heads, num_partitions)
        partial_out = torch.empty(*stats_shape, head_dim, dtype=torch.float32, device=query.device)
        partial_max = torch.empty(stats_shape, dtype=torch.float32, device=query.device)
        partial_sum = torch.empty(stats_shape, dtype=torch.float32, device=query.device)
    if config.get("HEADS_FASTEST", False):
        grid = (num_kv_heads, num_seqs, num_partitions)
    else:
        grid = (num_seqs, num_kv_heads, num_partitions)
    _decode_partition_launcher.launch(
        grid,
        query, key_cache, value_cache, block_tables, seq_lens, out,
        partial_out, partial_max, partial_sum, scale * LOG2_E, partition_tokens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        num_partitions,
        BLOCK_SIZE=block_size, GROUP_SIZE=group_size,
        GROUP_BLOCK=max(16, next_power_of_2(group_size)), HEAD_DIM=head_dim,
        SINGLE_PARTITION=single,
        DOT_IN_FP32=dot_in_fp32(_decode_partition_kernel, key_cache.dtype),
        **config,
    )  # fmt: skip
    if not single:
        _decode_merge_launcher.launch(
            (num_seqs, num_heads),
            seq_lens, out, partial_out, partial_max, partial_sum, partition_tokens,
            num_partitions, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, PARTITIONS_BLOCK=next_power_of_2(num_partitions),
        )  # fmt: skip
    return out
