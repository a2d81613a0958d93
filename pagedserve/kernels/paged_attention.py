"""Paged attention over a varlen batch: prefill, chunked prefill and decode mixed.

The new tokens of all sequences sit back to back in `query`, `key` and `value`;
sequence s owns rows query_start_loc[s]:query_start_loc[s+1]. Its earlier
tokens (the cached context) are in the paged cache: token t of sequence s lives
in block block_tables[s, t // block_size] at offset t % block_size. The i-th
new query of a sequence of seq_len tokens and q_len new tokens sits at
position seq_len - q_len + i and attends to positions 0..that position.

The new tokens' keys and values are read from `key` and `value`, not from the
cache (the caller writes them there too, for later steps): a prefill with no
cached context is then a plain contiguous flash attention, whose tiles can be
loaded through tensor descriptors (the bulk tensor copy engine on Hopper).

Sequences with one new token (the decodes of a mixed step) would waste a
prompt-sized query tile; a batch that may hold them (cached_context) takes a
first launch for just those rows, one program per sequence and kv head over
the group's query heads, with the decode kernel's tile options, and the
prompt tiles' launch skips them.

The torch reference with the same signature is in paged_attention_reference.py.
"""

import functools

import torch

from pagedserve.kernels._backend import dot_in_fp32, dot_precision, rows_contiguous, tl, triton
from pagedserve.kernels.attention_tiles import (
    LOG2_E,
    attend_paged_range,
    check_attention_shapes,
    load_new_kv_tile,
    online_softmax_step,
)
from pagedserve.kernels.decode_rows import (
    attend_decode_rows,
    check_plan,
    merge_decode_row_parts,
    part_buffers,
)
from pagedserve.kernels.direct_launch import DirectLauncher
from pagedserve.kernels.paged_decode_attention import decode_launch_options
from pagedserve.kernels.prefill_options import prefill_config


@triton.jit
def _find_tile_slot(query_start_loc_ptr, num_seqs, SLOT_Q: tl.constexpr, SEQS_BLOCK: tl.constexpr):
    """(sequence, slot within it, q_start, q_len) of this program.

    Sequence s owns programs slot_start(s) .. slot_start(s+1) - 1, with
    slot_start(s) = query_start_loc[s] // SLOT_Q + s: room for its
    cdiv(q_len, SLOT_Q) slots of SLOT_Q new tokens (spare slots do nothing).
    slot_start grows strictly, so the sequence is the count of s >= 1 with
    slot_start(s) <= this program: a few wide loads rather than a binary
    search's chain of dependent ones.
    """
    program = tl.program_id(0)
    seq = 0
    for first in range(1, num_seqs, SEQS_BLOCK):
        seqs = first + tl.arange(0, SEQS_BLOCK)
        in_batch = seqs < num_seqs
        starts = tl.load(query_start_loc_ptr + seqs, mask=in_batch, other=0)
        passed = in_batch & (starts // SLOT_Q + seqs <= program)
        seq += tl.sum(passed.to(tl.int32), axis=0)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    slot = program - (q_start // SLOT_Q + seq)
    return seq, slot, q_start, q_len


# Integers that change from step to step are not specialized (docs/kernels-notes.md
# v6): Triton would otherwise compile a variant for each of "equal to 1",
# "divisible by 16" and neither, and a serving executor meets all three.
@triton.jit(do_not_specialize=["num_seqs", "block_table_stride_seq", "split_capacity"])
def _paged_attention_kernel(
    query_ptr,  # QUERY_DESCRIPTOR: a descriptor of BLOCK_Q x GROUP_SIZE x HEAD_DIM tiles
    key_source,  # NEW_KV_DESCRIPTORS: a descriptor of BLOCK_N x HEAD_DIM tiles; else a pointer
    value_source,
    key_ptr,  # the new keys and values as pointers, for decode rows' one key
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    decode_split_ptr,  # SPLIT_DECODE_ROWS: the plan (decode_rows.py)
    partial_out_ptr,  # SPLIT_DECODE_ROWS: the split rows' parts' results
    partial_max_ptr,
    partial_sum_ptr,
    split_capacity,
    scale_log2,
    num_seqs,
    query_stride_token,
    query_stride_head,
    kv_stride_token,  # key and value share their strides
    kv_stride_head,
    out_stride_token,
    out_stride_head,
    cache_stride_block,
    cache_stride_slot,
    cache_stride_head,
    block_table_stride_seq,
    BLOCK_SIZE: tl.constexpr,
    GROUP_SIZE: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per query tile: BLOCK_Q tokens x GROUP_SIZE heads
    BLOCK_Q: tl.constexpr,  # BLOCK_M // GROUP_SIZE
    BLOCK_N: tl.constexpr,  # keys per step
    DECODE_BLOCK_M: tl.constexpr,  # rows of a decode row's tile: GROUP_SIZE padded to >= 16
    DECODE_ROWS_ONLY: tl.constexpr,  # only sequences with one new token, one program each
    SPLIT_DECODE_ROWS: tl.constexpr,  # DECODE_ROWS_ONLY: long rows in parts, as the plan says
    SKIP_DECODE_ROWS: tl.constexpr,  # only sequences with more (a DECODE_ROWS_ONLY launch's rest)
    PAIRED_TILES: tl.constexpr,  # each program takes a long and a short query tile
    CACHED_CONTEXT: tl.constexpr,  # False: no sequence has cached context (no gather code)
    SEQS_BLOCK: tl.constexpr,  # sequences compared per load when finding a program's sequence
    NEW_KV_DESCRIPTORS: tl.constexpr,  # new K/V tiles through tensor descriptors
    QUERY_DESCRIPTOR: tl.constexpr,  # query tiles through a tensor descriptor
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    kv_head = tl.program_id(1)
    if DECODE_ROWS_ONLY:
        attend_decode_rows(
            query_ptr, key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, block_tables_ptr,
            query_start_loc_ptr, seq_lens_ptr, out_ptr, decode_split_ptr, partial_out_ptr,
            partial_max_ptr, partial_sum_ptr, split_capacity, scale_log2, num_seqs, kv_head,
            query_stride_token, query_stride_head, kv_stride_token, kv_stride_head,
            out_stride_token, out_stride_head, cache_stride_block, cache_stride_slot,
            cache_stride_head, block_table_stride_seq, BLOCK_SIZE, GROUP_SIZE, DECODE_BLOCK_M,
            HEAD_DIM, BLOCK_N, SPLIT_DECODE_ROWS, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip
    else:  # (an else, not a return: Triton compiles code after a constexpr branch's return)
        # Program (slot, kv_head) handles one or two query tiles of one sequence.
        # Under the causal mask the last tile of a sequence does the most work:
        # tiles are taken last to first, so that long ones start first and short
        # ones fill the tail of the launch. Paired, slot p takes tiles n-1-p and
        # p of the sequence's n: every program does about the same work, and
        # there are half as many, each with its fixed costs (query load,
        # pipeline fill).
        tiles_per_slot: tl.constexpr = 2 if PAIRED_TILES else 1
        seq, slot, q_start, q_len = _find_tile_slot(
            query_start_loc_ptr, num_seqs, BLOCK_Q * tiles_per_slot, SEQS_BLOCK
        )
        long_tile = tl.cdiv(q_len, BLOCK_Q) - 1 - slot
        short_tile = slot if PAIRED_TILES else long_tile
        spare = (long_tile < 0) | (long_tile < short_tile)
        if SKIP_DECODE_ROWS:
            spare = spare | (q_len == 1)  # a decode row: the DECODE_ROWS_ONLY launch's
        if not spare:
            seq_len = tl.load(seq_lens_ptr + seq)
            num_tiles_here = tl.where(long_tile > short_tile, 2, 1)
            for tile_number in range(num_tiles_here):
                q_tile = long_tile - tile_number * (long_tile - short_tile)
                _attend_query_tile(
                    query_ptr, key_source, value_source, key_cache_ptr, value_cache_ptr,
                    block_tables_ptr, out_ptr, scale_log2, seq, q_tile, q_start, q_len,
                    seq_len, kv_head, query_stride_token, query_stride_head, kv_stride_token,
                    kv_stride_head, out_stride_token, out_stride_head, cache_stride_block,
                    cache_stride_slot, cache_stride_head, block_table_stride_seq, BLOCK_SIZE,
                    GROUP_SIZE, HEAD_DIM, BLOCK_M, BLOCK_Q, BLOCK_N, CACHED_CONTEXT,
                    NEW_KV_DESCRIPTORS, QUERY_DESCRIPTOR, DOT_IN_FP32, DOT_PRECISION,
                )  # fmt: skip


_paged_attention_launcher = DirectLauncher(_paged_attention_kernel)


@triton.jit
def _attend_query_tile(
    query_ptr,
    key_source,
    value_source,
    key_cache_ptr,
    value_cache_ptr,
    block_tables_ptr,
    out_ptr,
    scale_log2,
    seq,
    q_tile,  # which BLOCK_Q new tokens of the sequence
    q_start,
    q_len,
    seq_len,
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
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CACHED_CONTEXT: tl.constexpr,
    NEW_KV_DESCRIPTORS: tl.constexpr,
    QUERY_DESCRIPTOR: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Output rows of one query tile: BLOCK_Q new tokens x the GROUP_SIZE query
    heads of kv_head (row r is token r // GROUP_SIZE, head r % GROUP_SIZE), so
    that each K/V tile is loaded once for the whole group."""
    context_len = seq_len - q_len
    rows = tl.arange(0, BLOCK_M)
    q_index = q_tile * BLOCK_Q + rows // GROUP_SIZE  # [BLOCK_M] new-token index
    head = kv_head * GROUP_SIZE + rows % GROUP_SIZE  # [BLOCK_M] query head
    row_mask = (rows < BLOCK_Q * GROUP_SIZE) & (q_index < q_len)
    dims = tl.arange(0, HEAD_DIM)
    if QUERY_DESCRIPTOR:
        # Rows past the sequence hold the next one's queries (or zeros past the
        # tensor): rows are independent, and their outputs are not stored.
        q = query_ptr.load([q_start + q_tile * BLOCK_Q, kv_head * GROUP_SIZE, 0])
        q = q.reshape(BLOCK_M, HEAD_DIM)
    else:
        q_rows = (q_start + q_index).to(tl.int64) * query_stride_token + head * query_stride_head
        q = tl.load(query_ptr + q_rows[:, None] + dims[None, :], mask=row_mask[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    else:
        q = q.to(key_cache_ptr.dtype.element_ty)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # 1. The cached context, through the block table: visible to every row.
    # Compiled only when some sequence may have one: the gather's per-element
    # pointers raise the whole kernel's register use (sm_90 compile, 64 x 64
    # tiles: 255 registers with spills against 217 without this path).
    if CACHED_CONTEXT:
        row_max, row_sum, acc = attend_paged_range(
            q, row_max, row_sum, acc, key_cache_ptr, value_cache_ptr,
            block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq,
            kv_head * cache_stride_head, 0, context_len, scale_log2, cache_stride_block,
            cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, DOT_IN_FP32, DOT_PRECISION,
        )  # fmt: skip

    # 2. The new tokens, contiguous. New keys before the tile's first query are
    # visible to every row: those tiles take no mask. The rest, up to the last
    # row, take the causal mask, which also hides rows past the sequence.
    first_q = q_tile * BLOCK_Q
    unmasked_end = ((first_q + 1) // BLOCK_N) * BLOCK_N
    new_end = tl.minimum(q_len, first_q + BLOCK_Q)
    # A descriptor tile is read whole: the one that crosses the sequence's end
    # holds the next sequence's first tokens. The mask weights them 0, but 0 x
    # NaN is NaN, so that tile's values past the end are zeroed, in a step of
    # its own (the last query tiles' only): zeroing in every masked step cost
    # the H100 5-50% of prefill (docs/kernels-notes.md, v18).
    masked_end = new_end
    if NEW_KV_DESCRIPTORS:
        masked_end = tl.minimum(new_end, (q_len // BLOCK_N) * BLOCK_N)
    for first_new in range(0, unmasked_end, BLOCK_N):
        k, v = load_new_kv_tile(
            key_source, value_source, q_start + first_new, 0, kv_head, kv_stride_token,
            kv_stride_head, HEAD_DIM, BLOCK_N, False, NEW_KV_DESCRIPTORS, DOT_IN_FP32,
        )  # fmt: skip
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, None, scale_log2, False, DOT_PRECISION
        )
    for first_new in range(unmasked_end, masked_end, BLOCK_N):
        k, v = load_new_kv_tile(
            key_source, value_source, q_start + first_new, q_start + q_len, kv_head,
            kv_stride_token, kv_stride_head, HEAD_DIM, BLOCK_N, True, NEW_KV_DESCRIPTORS,
            DOT_IN_FP32,
        )  # fmt: skip
        visible = (first_new + tl.arange(0, BLOCK_N))[None, :] <= q_index[:, None]
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, visible, scale_log2, True, DOT_PRECISION
        )
    if masked_end < new_end:  # only with descriptors: the tile across the end
        k, v = load_new_kv_tile(
            key_source, value_source, q_start + masked_end, q_start + q_len, kv_head,
            kv_stride_token, kv_stride_head, HEAD_DIM, BLOCK_N, True, NEW_KV_DESCRIPTORS,
            DOT_IN_FP32,
        )  # fmt: skip
        keys_here = masked_end + tl.arange(0, BLOCK_N)
        v = tl.where((keys_here < q_len)[:, None], v, 0.0)
        visible = keys_here[None, :] <= q_index[:, None]
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, visible, scale_log2, True, DOT_PRECISION
        )

    out = acc / row_sum[:, None]
    out_rows = (q_start + q_index).to(tl.int64) * out_stride_token + head * out_stride_head
    tl.store(
        out_ptr + out_rows[:, None] + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None],
    )


# Sequences compared per load when a program looks up its sequence.
_SEQS_BLOCK = 64


def _descriptors_usable(kernel, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Tensor descriptors need Hopper or later (or the interpreter) and 16-byte
    aligned bases and row strides."""
    aligned = all(t.data_ptr() % 16 == 0 for t in (key, value))
    aligned = aligned and (key.stride(0) * key.element_size()) % 16 == 0
    if type(kernel).__name__ == "InterpretedFunction":
        return aligned
    return aligned and key.is_cuda and _is_hopper_or_later(key.device.index)


@functools.cache
def _is_hopper_or_later(device_index: int) -> bool:
    # Asked once per device: under cProfile the query was about an eighth of
    # each launch's host time (benchmarks/launch_cost.py, notes' next steps).
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def _rows_contiguous(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """key and value with each token's heads side by side and equal strides."""
    key, value = rows_contiguous(key), rows_contiguous(value)
    if value.stride() != key.stride():
        key, value = key.contiguous(), value.contiguous()
    return key, value


def _tile_descriptor(kv: torch.Tensor, block_n: int):
    """A host-side descriptor of [block_n, head_dim] tiles over kv viewed as
    [num_tokens, num_kv_heads * head_dim]. Built on the host, it reaches the
    kernel as a parameter: no program spends time creating one."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = kv.flatten(1)  # a view: each token's heads are side by side
    return TensorDescriptor(rows, list(rows.shape), list(rows.stride()), [block_n, kv.shape[2]])


def _query_tile_descriptor(query: torch.Tensor, block_q: int, group_size: int, block_m: int):
    """A host-side descriptor of [block_q, group_size, head_dim] query tiles
    (a tile's tokens x one kv head's query heads), or None where a tile's
    rows are not those (a group size that is not a power of two) or the rows
    and heads are not 16-byte aligned. The caller has checked the card
    (_descriptors_usable, for the new keys and values)."""
    if group_size & (group_size - 1) or block_q * group_size != block_m:
        return None
    row_strides = (query.stride(0), query.stride(1))
    if any(stride * query.element_size() % 16 for stride in row_strides) or query.data_ptr() % 16:
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    tile = [block_q, group_size, query.shape[2]]
    return TensorDescriptor(query, list(query.shape), list(query.stride()), tile)


def paged_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' keys
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], the new tokens' values
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim], written in full
    config: dict | None = None,  # overrides prefill_config's options (benchmarks, tests)
    cached_context: bool = True,  # False only if every seq_len equals its new-token count
    decode_config: dict | None = None,  # the decode rows' launch options (precompile, tests)
    decode_split: torch.Tensor | None = None,  # int32 plan of long decode rows' parts
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], query's dtype
    """Triton: one program per (tile of new tokens of one sequence, kv head).

    With cached_context, sequences with one new token (decode rows) go in a
    launch of their own first, one program per (sequence, kv head), and the
    prompt tiles' launch skips them. decode_split, the host's plan
    (decode_row_split.plan_decode_row_split, on query's device), splits long
    decode rows into parts read by more programs, merged by a third launch;
    without it every decode row is one program per kv head.

    cached_context=False promises that no sequence has cached context (a batch
    of fresh prompts): the kernel is then built without the block-table path.
    The promise is not checked (that would sync); a sequence that breaks it
    attends only to its new tokens.

    Never synchronizes with the device (CUDA-graph safe). Raises ValueError on
    shapes it does not support: head_dim not a power of two >= 16, num_heads
    not a multiple of num_kv_heads, caches not contiguous, key or value not
    [num_tokens, num_kv_heads, head_dim], a decode_split not laid out as a plan.
    """
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    check_attention_shapes(query, key_cache, value_cache)
    kv_shape = (num_tokens, num_kv_heads, head_dim)
    if tuple(key.shape) != kv_shape or tuple(value.shape) != kv_shape:
        raise ValueError(f"key {tuple(key.shape)}, value {tuple(value.shape)}: want {kv_shape}")
    if key.dtype != key_cache.dtype or value.dtype != key_cache.dtype:
        raise ValueError(f"key/value dtype {key.dtype} differs from the cache's {key_cache.dtype}")
    if query.stride(2) != 1:
        query = query.contiguous()
    key, value = _rows_contiguous(key, value)
    if out is None:
        out = torch.empty_like(query)
    num_seqs = seq_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return out
    group_size = num_heads // num_kv_heads
    max_seq_len = block_tables.shape[1] * block_size  # bounds every seq_len
    config = {
        **prefill_config(head_dim, max_seq_len, key_cache.dtype),
        "CACHED_CONTEXT": cached_context,
        **(config or {}),
    }
    block_q = config["BLOCK_M"] // group_size
    if block_q < 1:
        raise ValueError(f"BLOCK_M {config['BLOCK_M']} < group size {group_size}")
    key_source, value_source = key, value
    if config["NEW_KV_DESCRIPTORS"] and _descriptors_usable(_paged_attention_kernel, key, value):
        key_source = _tile_descriptor(key, config["BLOCK_N"])
        value_source = _tile_descriptor(value, config["BLOCK_N"])
    else:
        config["NEW_KV_DESCRIPTORS"] = False
    query_tiles = None
    if config["QUERY_DESCRIPTOR"] and config["NEW_KV_DESCRIPTORS"]:
        query_tiles = _query_tile_descriptor(query, block_q, group_size, config["BLOCK_M"])
    config["QUERY_DESCRIPTOR"] = query_tiles is not None
    config.setdefault("DOT_PRECISION", dot_precision(key_cache.dtype))
    tokens_per_slot = block_q * (2 if config["PAIRED_TILES"] else 1)
    decode_block_m = max(16, triton.next_power_of_2(group_size))
    args = (
        query, key_source, value_source, key, value, key_cache, value_cache, block_tables,
        query_start_loc, seq_lens, out,
        # The decode rows' split (plan, partial results, capacity): stand-ins
        # where no program reads them.
        seq_lens, out, out, out, 0,
        scale * LOG2_E, num_seqs,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
    )  # fmt: skip
    shared = {
        "BLOCK_SIZE": block_size, "GROUP_SIZE": group_size, "HEAD_DIM": head_dim,
        "DECODE_BLOCK_M": decode_block_m, "SEQS_BLOCK": _SEQS_BLOCK,
        "DOT_IN_FP32": dot_in_fp32(_paged_attention_kernel, key_cache.dtype),
    }  # fmt: skip
    if cached_context:
        # Decode rows (sequences with one new token, as in a mixed step) first,
        # in a launch of their own: tiles of the group's heads, with the decode
        # kernel's launch options and its resources per program, not a prompt
        # tile's (docs/kernels-notes.md, v17). The other launch skips them.
        options = decode_config or decode_launch_options(
            head_dim, key_cache.dtype, num_seqs * num_kv_heads, max_seq_len, query.device
        )
        split_args, capacity = args[11:16], 0
        if decode_split is not None:
            capacity = check_plan(decode_split, query.device)
            partials = part_buffers(capacity, num_heads, head_dim, query.device)
            split_args = (decode_split, *partials, capacity)
        # key and value as pointers in the descriptors' places
        # (NEW_KV_DESCRIPTORS off): a decode row reads its one key directly.
        _paged_attention_launcher.launch(
            (num_seqs + capacity, num_kv_heads), query, key, value, *args[3:11], *split_args,
            *args[16:], **shared,
            BLOCK_N=options["BLOCK_N"], num_warps=options["num_warps"],
            num_stages=options["num_stages"],
            DOT_PRECISION=options.get("DOT_PRECISION", config["DOT_PRECISION"]),
            # The prompt tiles' options: unused by these programs, fixed so
            # that they add no variants.
            BLOCK_M=decode_block_m, BLOCK_Q=decode_block_m // group_size, PAIRED_TILES=False,
            CACHED_CONTEXT=True, NEW_KV_DESCRIPTORS=False, QUERY_DESCRIPTOR=False,
            DECODE_ROWS_ONLY=True, SPLIT_DECODE_ROWS=capacity > 0, SKIP_DECODE_ROWS=False,
        )  # fmt: skip
        if capacity:
            merge_decode_row_parts(
                decode_split, query_start_loc, seq_lens, out, split_args[1:4], num_kv_heads
            )
    _paged_attention_launcher.launch(
        (num_tokens // tokens_per_slot + num_seqs, num_kv_heads),
        query if query_tiles is None else query_tiles, *args[1:],
        **shared, **config,
        BLOCK_Q=block_q, DECODE_ROWS_ONLY=False, SPLIT_DECODE_ROWS=False,
        SKIP_DECODE_ROWS=cached_context,
    )  # fmt: skip
    return out
