"""The decode rows of a varlen batch (sequences with one new token beside
prompt chunks: a mixed step), and how long ones split their keys, as the
host plans.

The varlen kernel (paged_attention.py) takes the decode rows in a launch of
their own (docs/kernels-notes.md, v17): attend_decode_rows is that launch's
program, the group's query heads of one row its tile rows (attend_decode_row).
One program per row and kv head leaves a few long rows a few programs: two
decodes at 32k keys beside a chunk read with 16 programs on an H100's 132
multiprocessors, 3-5x slower than SDPA. The decode kernel splits a sequence's
keys into partitions; the decode rows cannot choose theirs on the device
without a pass over every row in every program, which cost the common steps
12-20% (v19). The host knows every step's lengths, so it plans the split
(plan_decode_row_split) and hands it to the launch as a small int32 tensor,
filled with the step's other inputs (a static buffer in a CUDA graph), laid
out as

    [partition_tokens, seq[0 .. capacity-1], first[0 .. capacity-1]]

Rows of at most partition_tokens positions stay whole: their row's program
writes their output. Each longer row is split into parts of partition_tokens
positions (its last part shorter), listed consecutively as (seq, first
position), unused entries with seq -1; one extra program per entry and kv
head attends to its part and writes its partial result, and the merge
(merge_decode_row_parts) combines each split row's parts. capacity, the
extra programs per kv head, is fixed per model and device: enough for about
two programs per multiprocessor (split_capacity).
"""

from __future__ import annotations

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.attention_tiles import attend_paged_range
from pagedserve.kernels.direct_launch import DirectLauncher
from pagedserve.kernels.paged_decode_attention import (
    _MAX_PARTITIONS,
    _MIN_PARTITION_TOKENS,
    load_group_query,
    merge_partial_outputs,
    store_partial_result,
    target_programs,
)


@triton.jit
def attend_decode_row(
    query_ptr,
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    out_ptr,
    partial_out_ptr,  # [num_heads, split_capacity, HEAD_DIM] fp32 (a split row's part)
    partial_max_ptr,  # [num_heads, split_capacity] fp32
    partial_sum_ptr,
    scale_log2,
    seq,
    q_start,  # the row's token
    seq_len,
    kv_head,
    first_position,  # the part of the row's positions to attend to (not WHOLE_ROW)
    position_limit,
    split_slot,  # where the part's partial result goes (not WHOLE_ROW)
    split_capacity,
    query_stride_token,
    query_stride_head,
    kv_stride_token,
    kv_stride_head,
    out_stride_token,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,  # GROUP_SIZE padded to a power of two >= 16 (tl.dot)
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WHOLE_ROW: tl.constexpr,  # all positions, the output written; else a part's partial result
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """A decode row (a sequence with one new token) of a varlen batch, whose
    new key and value are in key/value, not yet read from the cache:
    paged_attention's DECODE_ROWS_ONLY launch.

    A prompt-sized query tile would hold GROUP_SIZE useful rows of BLOCK_M, and
    its new-token step would load a whole tile of new keys for one key and run
    a loop of its own. Here the rows are the group's query heads alone, as in
    the decode kernel. Positions 0 .. seq_len - 2 are the cached context,
    seq_len - 1 the new token, which starts the online softmax (its score and
    value are the running max, sum 1 and accumulator) where the positions
    include it; the cached tiles go as in the decode kernel.

    WHOLE_ROW: every position, and the row's output. Otherwise the positions
    first_position .. position_limit - 1 of a row split into parts (as
    plan_decode_row_split plans) and their unnormalised result at split_slot,
    for the split's merge.
    """
    q, head, row_mask = load_group_query(
        query_ptr, key_cache_ptr, q_start, kv_head, query_stride_token, query_stride_head,
        GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, DOT_IN_FP32,
    )  # fmt: skip
    dims = tl.arange(0, HEAD_DIM)
    new_row = q_start.to(tl.int64) * kv_stride_token + kv_head * kv_stride_head + dims
    new_key = tl.load(key_ptr + new_row).to(tl.float32)
    new_value = tl.load(value_ptr + new_row).to(tl.float32)
    row_max = tl.sum(q.to(tl.float32) * new_key[None, :], axis=1) * scale_log2  # [GROUP_BLOCK]
    row_sum = tl.full([GROUP_BLOCK], 1.0, dtype=tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32) + new_value[None, :]
    cached_first = 0
    cached_limit = seq_len - 1
    if not WHOLE_ROW:
        holds_new = position_limit == seq_len
        row_max = tl.where(holds_new, row_max, float("-inf"))
        row_sum = tl.where(holds_new, row_sum, 0.0)
        acc = tl.where(holds_new, acc, 0.0)
        cached_first = first_position
        cached_limit = tl.minimum(position_limit, seq_len - 1)
    row_max, row_sum, acc = attend_paged_range(
        q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr,
        block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq,
        kv_head * cache_stride_head, cached_first, cached_limit, scale_log2, cache_stride_block,
        cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, DOT_IN_FP32, DOT_PRECISION,
    )  # fmt: skip
    if WHOLE_ROW:
        out_rows = q_start.to(tl.int64) * out_stride_token + head * out_stride_head
        tl.store(
            out_ptr + out_rows[:, None] + dims[None, :],
            (acc / row_sum[:, None]).to(out_ptr.dtype.element_ty),
            mask=row_mask[:, None],
        )
    else:
        store_partial_result(
            acc, row_max, row_sum, head * split_capacity + split_slot, row_mask,
            partial_out_ptr, partial_max_ptr, partial_sum_ptr, HEAD_DIM,
        )  # fmt: skip


@triton.jit
def attend_decode_rows(
    query_ptr,
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    decode_split_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    split_capacity,
    scale_log2,
    num_seqs,
    kv_head,
    query_stride_token,
    query_stride_head,
    kv_stride_token,
    kv_stride_head,
    out_stride_token,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_DECODE_ROWS: tl.constexpr,  # a plan is given: extra programs take its entries
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """paged_attention's DECODE_ROWS_ONLY launch. Program (sequence, kv_head):
    the sequence's one new token, if it has just one (a decode row of a mixed
    step) and the plan leaves it whole; other programs end. With a plan,
    split_capacity more programs per kv head take its entries: program
    (num_seqs + slot, kv_head) a split row's part, for the merge launch after."""
    program = tl.program_id(0)
    if program < num_seqs:
        seq = program
        q_start = tl.load(query_start_loc_ptr + seq)
        seq_len = tl.load(seq_lens_ptr + seq)
        is_whole_row = tl.load(query_start_loc_ptr + seq + 1) - q_start == 1
        if SPLIT_DECODE_ROWS:
            is_whole_row = is_whole_row & (seq_len <= tl.load(decode_split_ptr))
        if is_whole_row:  # (WHOLE_ROW is compile-time: a call for each kind)
            attend_decode_row(
                query_ptr, key_ptr, value_ptr, key_cache_ptr, value_cache_ptr,
                block_tables_ptr, out_ptr, partial_out_ptr, partial_max_ptr,
                partial_sum_ptr, scale_log2, seq, q_start, seq_len, kv_head, 0, seq_len, 0,
                split_capacity, query_stride_token, query_stride_head, kv_stride_token,
                kv_stride_head, out_stride_token, out_stride_head, cache_stride_block,
                cache_stride_slot, cache_stride_head, block_table_stride_seq, BLOCK_SIZE,
                GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, BLOCK_N, True, DOT_IN_FP32,
                DOT_PRECISION,
            )  # fmt: skip
    elif SPLIT_DECODE_ROWS:
        slot = program - num_seqs
        seq = tl.load(decode_split_ptr + 1 + slot)
        if seq >= 0:
            first = tl.load(decode_split_ptr + 1 + split_capacity + slot)
            seq_len = tl.load(seq_lens_ptr + seq)
            limit = tl.minimum(seq_len, first + tl.load(decode_split_ptr))
            attend_decode_row(
                query_ptr, key_ptr, value_ptr, key_cache_ptr, value_cache_ptr,
                block_tables_ptr, out_ptr, partial_out_ptr, partial_max_ptr,
                partial_sum_ptr, scale_log2, seq, tl.load(query_start_loc_ptr + seq),
                seq_len, kv_head, first, limit, slot, split_capacity, query_stride_token,
                query_stride_head, kv_stride_token, kv_stride_head, out_stride_token,
                out_stride_head, cache_stride_block, cache_stride_slot, cache_stride_head,
                block_table_stride_seq, BLOCK_SIZE, GROUP_SIZE, GROUP_BLOCK, HEAD_DIM,
                BLOCK_N, False, DOT_IN_FP32, DOT_PRECISION,
            )  # fmt: skip


# A plan's partition length when no row is split.
NO_SPLIT_TOKENS = (1 << 31) - 1
# Parts are whole 128-key tiles (the largest decode tile), but the last.
_PART_GRANULE = 128


def split_capacity(num_kv_heads: int, device: torch.device) -> int:
    """Entries of a plan: parts a step's split rows can have between them,
    about two programs per multiprocessor over the kv heads."""
    return triton.cdiv(target_programs(device), num_kv_heads)


def no_split_plan(capacity: int) -> list[int]:
    """A plan of `capacity` entries that splits no row."""
    return [NO_SPLIT_TOKENS] + [-1] * capacity + [0] * capacity


def plan_decode_row_split(
    q_lens: list[int], seq_lens: list[int], num_kv_heads: int, device: torch.device
) -> list[int]:
    """The plan (the layout above) for a step whose sequence s has q_lens[s]
    new tokens and seq_lens[s] tokens in all; its decode rows are those of one
    new token. The decode kernel's rule over them: a split only where the rows
    give fewer programs than the GPU wants, each long row in up to
    wanted = target // (rows x kv heads) parts of at least 256 positions, the
    longest setting the length."""
    capacity = split_capacity(num_kv_heads, device)
    plan = no_split_plan(capacity)
    rows = [seq for seq, q_len in enumerate(q_lens) if q_len == 1]
    if not rows:
        return plan
    wanted = target_programs(device) // (len(rows) * num_kv_heads)
    longest = max(seq_lens[seq] for seq in rows)
    wanted = min(wanted, _MAX_PARTITIONS, triton.cdiv(longest, _MIN_PARTITION_TOKENS))
    if wanted <= 1:
        return plan
    tokens = triton.cdiv(triton.cdiv(longest, wanted), _PART_GRANULE) * _PART_GRANULE
    while True:  # a bound, never met by the rule's own lengths: at most `capacity` parts
        parts = [
            (seq, first)
            for seq in rows
            if seq_lens[seq] > tokens
            for first in range(0, seq_lens[seq], tokens)
        ]
        if len(parts) <= capacity:
            break
        tokens *= 2
    if not parts:
        return plan
    plan[0] = tokens
    for slot, (seq, first) in enumerate(parts):
        plan[1 + slot] = seq
        plan[1 + capacity + slot] = first
    return plan


def check_plan(decode_split: torch.Tensor, device: torch.device) -> int:
    """The plan's capacity; ValueError unless it is an int32 vector of odd
    length >= 3 on `device`."""
    if (
        decode_split.dtype != torch.int32
        or decode_split.dim() != 1
        or decode_split.numel() < 3
        or decode_split.numel() % 2 == 0
        or decode_split.device != device
    ):
        raise ValueError(
            f"decode_split: want an int32 vector of 1 + 2 x capacity entries on {device}, "
            f"got {decode_split.dtype} {tuple(decode_split.shape)} on {decode_split.device}"
        )
    return (decode_split.numel() - 1) // 2


def part_buffers(
    capacity: int, num_heads: int, head_dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parts' partial outputs [num_heads, capacity, head_dim], maxima and
    sums [num_heads, capacity], float32, in one allocation (each 64-byte aligned)."""
    stats = triton.cdiv(num_heads * capacity, 16) * 16
    buffer = torch.empty(stats * (head_dim + 2), dtype=torch.float32, device=device)
    partial_out = buffer[: stats * head_dim]
    partial_max = buffer[stats * head_dim : stats * (head_dim + 1)]
    partial_sum = buffer[stats * (head_dim + 1) :]
    return partial_out, partial_max, partial_sum


@triton.jit(do_not_specialize=["capacity"])
def _merge_decode_row_parts_kernel(
    decode_split_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    capacity,
    out_stride_token,
    out_stride_head,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PARTS_BLOCK: tl.constexpr,  # a power of two >= any row's parts
):
    """Program (entry, kv_head): where the entry is a split row's first part,
    the group's outputs of that row from its parts (the entries after it)."""
    slot = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(decode_split_ptr + 1 + slot)
    first = tl.load(decode_split_ptr + 1 + capacity + slot)
    if (seq >= 0) & (first == 0):
        num_parts = tl.cdiv(tl.load(seq_lens_ptr + seq), tl.load(decode_split_ptr))
        out_row = tl.load(query_start_loc_ptr + seq).to(tl.int64) * out_stride_token
        for i in tl.static_range(GROUP_SIZE):
            head = kv_head * GROUP_SIZE + i
            out = merge_partial_outputs(
                partial_out_ptr, partial_max_ptr, partial_sum_ptr, head * capacity + slot,
                num_parts, HEAD_DIM, PARTS_BLOCK,
            )  # fmt: skip
            out_offsets = out_row + head * out_stride_head + tl.arange(0, HEAD_DIM)
            tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty))


_merge_launcher = DirectLauncher(_merge_decode_row_parts_kernel)


def merge_decode_row_parts(
    decode_split: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
    partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_kv_heads: int,
) -> None:
    """Each split row's output, in `out`'s row of its new token."""
    capacity = (decode_split.numel() - 1) // 2
    _merge_launcher.launch(
        (capacity, num_kv_heads),
        decode_split, query_start_loc, seq_lens, out, *partials, capacity,
        out.stride(0), out.stride(1),
        GROUP_SIZE=out.shape[1] // num_kv_heads, HEAD_DIM=out.shape[2],
        PARTS_BLOCK=next_power_of_2(min(capacity, _MAX_PARTITIONS)),
    )  # fmt: skip
