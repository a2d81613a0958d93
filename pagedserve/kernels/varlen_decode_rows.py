"""The decode rows of a varlen batch: sequences with one new token beside
prompt chunks (a mixed step), split into partitions of their keys.

paged_attention runs them in a launch of their own before the prompt tiles
(docs/kernels-notes.md, v17): the group's query heads of one row are one
program's rows, as in the decode kernel. A row's keys are split into
partitions as the decode kernel splits a sequence's, so that a few long
decodes beside a prompt chunk still fill the GPU, and a merge follows for
rows of more than one partition (v19).

How many rows are decode rows, and how long they are, is known only on the
device (the launch must not sync, and CUDA graphs fix a step's grid while
its rows change): each program counts them, and the launch's programs take
the rows' partitions in turn. The partition length is the decode kernel's
rule, applied to the decode rows found: about two programs per
multiprocessor, never shorter than the length the host chose for one row
(min_partition_tokens, which bounds the partial buffers' partition count).
"""

from pagedserve.kernels._backend import tl, triton
from pagedserve.kernels.attention_tiles import attend_paged_range
from pagedserve.kernels.direct_launch import DirectLauncher
from pagedserve.kernels.paged_decode_attention import (
    load_group_query,
    merge_partial_outputs,
    store_partition_result,
)


@triton.jit
def _decode_row_units(
    query_start_loc_ptr,
    seq_lens_ptr,
    first,  # the first of SEQS_BLOCK sequences
    num_seqs,
    partition_tokens,
    SEQS_BLOCK: tl.constexpr,
):
    """For sequences first .. first + SEQS_BLOCK - 1: their partitions (0 for
    a sequence that is not a decode row), first new token and seq_len."""
    rows = first + tl.arange(0, SEQS_BLOCK)
    valid = rows < num_seqs
    starts = tl.load(query_start_loc_ptr + rows, mask=valid, other=0)
    ends = tl.load(query_start_loc_ptr + rows + 1, mask=valid, other=0)
    lens = tl.load(seq_lens_ptr + rows, mask=valid, other=0)
    is_decode_row = valid & (ends - starts == 1)
    return tl.where(is_decode_row, tl.cdiv(lens, partition_tokens), 0), starts, lens


@triton.jit
def decode_row_partition_tokens(
    query_start_loc_ptr,
    seq_lens_ptr,
    num_seqs,
    num_kv_heads,
    min_partition_tokens,
    target_programs,
    granule,  # partitions are whole tiles: a multiple of BLOCK_N
    SEQS_BLOCK: tl.constexpr,
):
    """Keys per partition of this batch's decode rows (the same in every
    program): the decode kernel's rule (paged_decode_attention.
    choose_partition_tokens) over the decode rows found and the longest."""
    num_rows = tl.zeros([], dtype=tl.int32)
    longest = tl.zeros([], dtype=tl.int32)
    for first in range(0, num_seqs, SEQS_BLOCK):
        # Partitions of one token: a count of the decode rows, 1 each.
        counts, _, lens = _decode_row_units(
            query_start_loc_ptr, seq_lens_ptr, first, num_seqs, 1, SEQS_BLOCK
        )
        num_rows += tl.sum((counts > 0).to(tl.int32))
        longest = tl.maximum(longest, tl.max(tl.where(counts > 0, lens, 0)))
    programs = tl.maximum(num_rows * num_kv_heads, 1)
    wanted = tl.maximum((target_programs + programs // 2) // programs, 1)
    tokens = tl.cdiv(tl.cdiv(longest, wanted), granule) * granule
    return tl.maximum(tokens, min_partition_tokens)


@triton.jit
def attend_decode_row(
    query_ptr,
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    out_ptr,
    partial_out_ptr,  # [num_seqs, num_heads, num_partitions, HEAD_DIM] fp32
    partial_max_ptr,  # [num_seqs, num_heads, num_partitions] fp32
    partial_sum_ptr,
    scale_log2,
    seq,
    q_start,  # the row's token
    seq_len,
    kv_head,
    num_kv_heads,
    partition,
    partition_tokens,
    num_partitions,  # the partial buffers' third dimension
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
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One partition of a decode row (a sequence with one new token) of a
    varlen batch, whose new key and value are in key/value, not yet read from
    the cache: paged_attention's DECODE_ROWS_ONLY launch.

    A prompt-sized query tile would hold GROUP_SIZE useful rows of BLOCK_M, and
    its new-token step would load a whole tile of new keys for one key and run
    a loop of its own. Here the rows are the group's query heads alone, as in
    the decode kernel. Positions 0 .. seq_len - 2 are the cached context and
    seq_len - 1 the new token; the partition takes partition_tokens positions
    from partition * partition_tokens (the caller runs only partitions that
    hold one). The one that holds the new token starts its online softmax with
    it (its score and value are the running max, sum 1 and accumulator), and
    the cached tiles go as in the decode kernel. A row of one partition writes
    its output; otherwise each partition writes its partial result, as the
    decode kernel's partitions do, for a merge.
    """
    q, head, row_mask = load_group_query(
        query_ptr, key_cache_ptr, q_start, kv_head, query_stride_token, query_stride_head,
        GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, DOT_IN_FP32,
    )  # fmt: skip
    first_position = partition * partition_tokens
    position_limit = tl.minimum(seq_len, first_position + partition_tokens)
    holds_new = position_limit == seq_len
    dims = tl.arange(0, HEAD_DIM)
    new_row = q_start.to(tl.int64) * kv_stride_token + kv_head * kv_stride_head + dims
    new_key = tl.load(key_ptr + new_row).to(tl.float32)
    new_value = tl.load(value_ptr + new_row).to(tl.float32)
    new_score = tl.sum(q.to(tl.float32) * new_key[None, :], axis=1) * scale_log2  # [GROUP_BLOCK]
    row_max = tl.where(holds_new, new_score, float("-inf"))
    row_sum = tl.where(holds_new, 1.0, 0.0) + tl.zeros([GROUP_BLOCK], dtype=tl.float32)
    acc = (
        tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32)
        + tl.where(holds_new, new_value, 0.0)[None, :]
    )
    row_max, row_sum, acc = attend_paged_range(
        q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr,
        block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq,
        kv_head * cache_stride_head, first_position, tl.minimum(position_limit, seq_len - 1),
        scale_log2, cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N,
        DOT_IN_FP32, DOT_PRECISION,
    )  # fmt: skip
    # The row's only partition writes its output, else its partial result:
    # two masked stores (a branch between them cost the sm_90 compile its
    # registers: 32 and 4.6 KB of stack a thread).
    single = seq_len <= partition_tokens
    store_partition_result(
        acc, row_max, row_sum, seq, q_start, partition, head, row_mask & single, num_kv_heads,
        out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        out_stride_token, out_stride_head, num_partitions, GROUP_SIZE, HEAD_DIM, True,
    )  # fmt: skip
    store_partition_result(
        acc, row_max, row_sum, seq, q_start, partition, head, row_mask & ~single, num_kv_heads,
        out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        out_stride_token, out_stride_head, num_partitions, GROUP_SIZE, HEAD_DIM, False,
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
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    scale_log2,
    num_seqs,
    min_partition_tokens,
    num_partitions,
    target_programs,
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
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_BLOCK: tl.constexpr,
    SEQS_BLOCK: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program (kv_head, p) of a launch of P programs per kv head: partitions
    p, p + P, p + 2P, ... of the batch's decode-row partitions, numbered by
    row and then partition. The kv heads of one partition are adjacent
    programs (they read the same cache blocks)."""
    kv_head = tl.program_id(0)
    num_kv_heads = tl.num_programs(0)
    partition_tokens = decode_row_partition_tokens(
        query_start_loc_ptr, seq_lens_ptr, num_seqs, num_kv_heads, min_partition_tokens,
        target_programs, BLOCK_N, SEQS_BLOCK,
    )  # fmt: skip
    unit = tl.program_id(1)  # the next partition this program takes, of all rows'
    units_before = tl.zeros([], dtype=tl.int32)  # partitions of the rows before `first`
    for first in range(0, num_seqs, SEQS_BLOCK):
        counts, starts, lens = _decode_row_units(
            query_start_loc_ptr, seq_lens_ptr, first, num_seqs, partition_tokens, SEQS_BLOCK
        )
        units_end = units_before + tl.cumsum(counts, axis=0)  # after each row, inclusive
        block_end = units_before + tl.sum(counts)
        while unit < block_end:
            index = tl.sum((units_end <= unit).to(tl.int32))  # the row within the block
            here = tl.arange(0, SEQS_BLOCK) == index
            attend_decode_row(
                query_ptr, key_ptr, value_ptr, key_cache_ptr, value_cache_ptr,
                block_tables_ptr, out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
                scale_log2, first + index, tl.sum(tl.where(here, starts, 0)),
                tl.sum(tl.where(here, lens, 0)), kv_head, num_kv_heads,
                unit - tl.sum(tl.where(here, units_end - counts, 0)), partition_tokens,
                num_partitions, query_stride_token, query_stride_head, kv_stride_token,
                kv_stride_head, out_stride_token, out_stride_head, cache_stride_block,
                cache_stride_slot, cache_stride_head, block_table_stride_seq, BLOCK_SIZE,
                GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, BLOCK_N, DOT_IN_FP32, DOT_PRECISION,
            )  # fmt: skip
            unit += tl.num_programs(1)
        units_before = block_end


@triton.jit(do_not_specialize=["num_seqs", "num_partitions", "target_programs"])
def _merge_decode_rows_kernel(
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    num_seqs,
    min_partition_tokens,
    num_partitions,
    target_programs,
    granule,
    out_stride_token,
    out_stride_head,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SEQS_BLOCK: tl.constexpr,
    PARTITIONS_BLOCK: tl.constexpr,  # num_partitions rounded up to a power of two
):
    """Program (seq, kv_head): the group's outputs of a decode row of more
    than one partition, from its partitions' partial results."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    num_kv_heads = tl.num_programs(1)
    q_start = tl.load(query_start_loc_ptr + seq)
    seq_len = tl.load(seq_lens_ptr + seq)
    is_decode_row = tl.load(query_start_loc_ptr + seq + 1) - q_start == 1
    # A row no longer than the shortest partition wrote its own output.
    if is_decode_row & (seq_len > min_partition_tokens):
        partition_tokens = decode_row_partition_tokens(
            query_start_loc_ptr, seq_lens_ptr, num_seqs, num_kv_heads, min_partition_tokens,
            target_programs, granule, SEQS_BLOCK,
        )  # fmt: skip
        if seq_len > partition_tokens:
            for i in tl.static_range(GROUP_SIZE):
                head = kv_head * GROUP_SIZE + i
                stats_start = (
                    seq.to(tl.int64) * (num_kv_heads * GROUP_SIZE) + head
                ) * num_partitions
                out = merge_partial_outputs(
                    partial_out_ptr, partial_max_ptr, partial_sum_ptr, stats_start,
                    tl.cdiv(seq_len, partition_tokens), HEAD_DIM, PARTITIONS_BLOCK,
                )  # fmt: skip
                out_offsets = (
                    q_start.to(tl.int64) * out_stride_token
                    + head * out_stride_head
                    + tl.arange(0, HEAD_DIM)
                )
                tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty))


merge_decode_rows_launcher = DirectLauncher(_merge_decode_rows_kernel)
