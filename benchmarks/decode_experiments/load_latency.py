"""v9-v10: memory latency in the decode partition kernel, one kernel with flags.

v9: a shorter chain of dependent loads before a program's first K/V tile.

v7's program loads seq_len, waits for it, then loads the first tiles' block ids,
waits, then loads K/V: three memory latencies before any K/V arrives, where
SDPA on a contiguous cache has one (docs/kernels-notes.md v7, v8). Two ways to
start the table's row and the first keys while seq_len is still on its way:

- `prefetch` (v9a): v7's kernel plus one L1 prefetch of the block table row's
  first entries, issued next to the seq_len load. The loop's own id loads then
  hit L1: the chain becomes seq_len (with the row in parallel), then K/V.
- `early_block` (v9b): with one partition per sequence (every program then has
  key 0), the first block's id is loaded with seq_len, and that block's K/V
  right after, before anything waits on seq_len. The loop covers the keys from
  BLOCK_SIZE on, pipelined as the compiler makes it; the first block is folded
  into the softmax after the loop. The id is clamped into the cache, since a
  table entry past the sequence's blocks may hold anything; keys past seq_len
  are masked and their values zeroed.

v10 (`ahead-N`): the same kernel with blocks laid out in table order reads at
SDPA's speed, while shuffled blocks cost 1-3% (docs/kernels-notes.md v9),
which fits address-translation misses: each 32 KiB block of a shuffled table
lies in a different 2 MiB page. Each loop step prefetches into L2 the first
row (this kv head's) of every block of the tile N steps ahead, K and V, so
that the page's translation is resolved before the step that loads it.
"""

from __future__ import annotations

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from benchmarks.decode_experiments.launch import launch_decode
from pagedserve.kernels._backend import tl, triton
from pagedserve.kernels.attention_tiles import attend_paged_tile, online_softmax_step
from pagedserve.kernels.paged_decode_attention import (
    decode_program,
    load_group_query,
    store_partition_result,
)


@triton.jit
def _prefetch_l1(ptr):
    """Start loading ptr's cache line into L1; nothing waits for it."""
    tl.inline_asm_elementwise(
        "prefetch.global.L1 [$1];\n\tmov.u32 $0, 0;",
        "=r,l",
        [ptr],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _prefetch_l2(ptrs):
    """Start loading each pointer's cache line into L2; nothing waits for it."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;",
        "=r,l",
        [ptrs],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit(do_not_specialize=["block_table_stride_seq", "num_cache_blocks", "num_partitions"])
def _decode_partition_kernel_v9(
    query_ptr, key_cache_ptr, value_cache_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
    scale_log2, partition_tokens,
    query_stride_seq, query_stride_head, out_stride_seq, out_stride_head,
    cache_stride_block, cache_stride_slot, cache_stride_head, block_table_stride_seq,
    num_cache_blocks,  # for clamping the first block's id (EARLY_BLOCK)
    num_partitions,
    BLOCK_SIZE: tl.constexpr, GROUP_SIZE: tl.constexpr, GROUP_BLOCK: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, SINGLE_PARTITION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, HEADS_FASTEST: tl.constexpr,
    PREFETCH_TABLE: tl.constexpr,  # v9a
    EARLY_BLOCK: tl.constexpr,  # v9b; the launch sets it only with SINGLE_PARTITION
    PREFETCH_AHEAD: tl.constexpr,  # v10: loop steps ahead to prefetch blocks for; 0 = off
    PDL_TRIGGER: tl.constexpr = 0,  # v14: 0 = no PDL; 1 = next launch at start; 2 = after keys
    TOUCH_AHEAD: tl.constexpr = 0,  # v22: blocks ahead to touch each loop step; 0 = off
    TOUCH_LOAD: tl.constexpr = True,  # v22: touch with a load (used a step later), else a prefetch
):  # fmt: skip
    seq, kv_head, num_kv_heads, partition = decode_program(HEADS_FASTEST)
    block_table_row_ptr = block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq
    kv_head_offset = kv_head * cache_stride_head
    dims = tl.arange(0, HEAD_DIM)
    first_token = partition * partition_tokens
    if EARLY_BLOCK:
        first_block = tl.load(block_table_row_ptr)
        seq_len = tl.load(seq_lens_ptr + seq)
        first_block = tl.minimum(tl.maximum(first_block, 0), num_cache_blocks - 1)
        early_rows = tl.arange(0, BLOCK_SIZE)
        early_offsets = (
            first_block.to(tl.int64) * cache_stride_block
            + early_rows * cache_stride_slot
            + kv_head_offset
        )
        early_ptrs = early_offsets[:, None] + dims[None, :]
        early_k = tl.load(key_cache_ptr + early_ptrs)
        early_v = tl.load(value_cache_ptr + early_ptrs)
        loop_first = BLOCK_SIZE
        key_limit = seq_len
    else:
        if PREFETCH_TABLE:
            _prefetch_l1(block_table_row_ptr + first_token // BLOCK_SIZE)
        seq_len = tl.load(seq_lens_ptr + seq)
        if PDL_TRIGGER > 0:
            # v14: the table and seq_len come from the host, not the kernel
            # before: only the query and the cache wait for it.
            gdc_wait()
        if PDL_TRIGGER == 1:
            gdc_launch_dependents()
        if first_token >= seq_len:
            return
        loop_first = first_token
        key_limit = tl.minimum(seq_len, first_token + partition_tokens)

    q, head, row_mask = load_group_query(
        query_ptr, key_cache_ptr, seq, kv_head, query_stride_seq, query_stride_head,
        GROUP_SIZE, GROUP_BLOCK, HEAD_DIM, DOT_IN_FP32,
    )  # fmt: skip

    row_max = tl.full([GROUP_BLOCK], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([GROUP_BLOCK], dtype=tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32)
    full_end = loop_first + (tl.maximum(key_limit - loop_first, 0) // BLOCK_N) * BLOCK_N
    touched = tl.zeros([], dtype=tl.float32)  # v22: the touches' values, kept live
    pending = tl.zeros([], dtype=tl.float32)
    touch_distance = TOUCH_AHEAD * BLOCK_SIZE
    next_ahead_id = tl.load(
        block_table_row_ptr + tl.minimum(loop_first + touch_distance, key_limit - 1) // BLOCK_SIZE
    )
    for tile_first in range(loop_first, full_end, BLOCK_N):
        if TOUCH_AHEAD > 0:
            # One element of this kv head's row in the block TOUCH_AHEAD blocks
            # on (clamped into the sequence), K and V: its page's translation
            # is then resolved before the loop's own loads reach it. The id is
            # loaded a step before its touch, and a touch's value is first used
            # a step later, so no step waits for either.
            ahead_id = next_ahead_id
            ahead = tl.minimum(tile_first + BLOCK_N + touch_distance, key_limit - 1)
            next_ahead_id = tl.load(block_table_row_ptr + ahead // BLOCK_SIZE)
            ahead_row = ahead_id.to(tl.int64) * cache_stride_block + kv_head_offset
            if TOUCH_LOAD:
                touched += pending
                pending = tl.load(key_cache_ptr + ahead_row).to(tl.float32) + tl.load(
                    value_cache_ptr + ahead_row
                ).to(tl.float32)
            else:
                _prefetch_l2(key_cache_ptr + ahead_row)
                _prefetch_l2(value_cache_ptr + ahead_row)
        if PREFETCH_AHEAD > 0:
            # One position per block of the tile PREFETCH_AHEAD steps on; past
            # key_limit the id is 0, a block that exists (prefetching it is harmless).
            ahead = (
                tile_first
                + PREFETCH_AHEAD * BLOCK_N
                + tl.arange(0, BLOCK_N // BLOCK_SIZE) * BLOCK_SIZE
            )
            ahead_ids = tl.load(
                block_table_row_ptr + ahead // BLOCK_SIZE, mask=ahead < key_limit, other=0
            )
            ahead_rows = ahead_ids.to(tl.int64) * cache_stride_block + kv_head_offset
            _prefetch_l2(key_cache_ptr + ahead_rows)
            _prefetch_l2(value_cache_ptr + ahead_rows)
        row_max, row_sum, acc = attend_paged_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, tile_first, key_limit, scale_log2, cache_stride_block,
            cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, False, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    if full_end < key_limit:
        row_max, row_sum, acc = attend_paged_tile(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr, block_table_row_ptr,
            kv_head_offset, full_end, key_limit, scale_log2, cache_stride_block,
            cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, True, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    if PDL_TRIGGER == 2:
        gdc_launch_dependents()
    if TOUCH_AHEAD > 0:
        # Never true for finite values; the compiler cannot know, so the
        # touches stay in the program.
        if touched + pending == float("inf"):
            tl.store(
                out_ptr + seq.to(tl.int64) * out_stride_seq, touched.to(out_ptr.dtype.element_ty)
            )
    if EARLY_BLOCK:
        # Key 0 is always visible, so this step's max is finite even when it
        # is the first; order does not matter to the online softmax.
        visible = early_rows < seq_len
        if DOT_IN_FP32:
            early_k = early_k.to(tl.float32)
            early_v = early_v.to(tl.float32)
        early_v = tl.where(visible[:, None], early_v, 0.0)
        row_max, row_sum, acc = online_softmax_step(
            q, early_k, early_v, row_max, row_sum, acc, visible[None, :], scale_log2, True,
            DOT_PRECISION,
        )  # fmt: skip

    store_partition_result(
        acc, row_max, row_sum, seq, partition, head, row_mask, num_kv_heads,
        out_ptr, partial_out_ptr, partial_max_ptr, partial_sum_ptr,
        out_stride_seq, out_stride_head, num_partitions, GROUP_SIZE, HEAD_DIM, SINGLE_PARTITION,
    )  # fmt: skip


def _decode_v9(
    query, key_cache, value_cache, block_tables, seq_lens, scale, out, prefetch, early, ahead=0,
    pdl_trigger=0, touch_ahead=0, touch_load=True,
):  # fmt: skip
    overrides = {
        "PREFETCH_TABLE": prefetch, "EARLY_BLOCK": False, "PREFETCH_AHEAD": ahead,
        "TOUCH_AHEAD": touch_ahead, "TOUCH_LOAD": touch_load,
    }  # fmt: skip
    if pdl_trigger:
        overrides.update(PDL_TRIGGER=pdl_trigger, launch_pdl=True)
    return launch_decode(
        _decode_partition_kernel_v9, query, key_cache, value_cache, block_tables, seq_lens,
        scale, out, extra_args=(key_cache.shape[0],), overrides=overrides,
        single_overrides={"EARLY_BLOCK": early},
    )  # fmt: skip


def decode_prefetch(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    """v9a: v7 plus an L1 prefetch of the table row next to the seq_len load."""
    return _decode_v9(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out,
        prefetch=True, early=False,
    )  # fmt: skip


def decode_early_block(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    """v9b: the first block's K/V loaded with seq_len, folded in after the loop."""
    return _decode_v9(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out,
        prefetch=False, early=True,
    )  # fmt: skip


def decode_both(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    """v9a and v9b together (the prefetch applies to multi-partition launches)."""
    return _decode_v9(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out,
        prefetch=True, early=True,
    )  # fmt: skip


def _decode_ahead(steps: int):
    def run(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        """v10: blocks prefetched into L2 `steps` loop steps ahead."""
        return _decode_v9(
            query, key_cache, value_cache, block_tables, seq_lens, scale, out,
            prefetch=False, early=False, ahead=steps,
        )  # fmt: skip

    return run


VARIANTS: dict[str, object] = {
    "v9a-prefetch": decode_prefetch,
    "v9b-early-block": decode_early_block,
    "v9-both": decode_both,
    "v10-ahead-2": _decode_ahead(2),
    "v10-ahead-4": _decode_ahead(4),
    "v10-ahead-8": _decode_ahead(8),
}
