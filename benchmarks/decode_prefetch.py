"""Decode before and after v8's shorter load chain, against SDPA on a contiguous cache.

Run from the repository root: `python3 benchmarks/decode_prefetch.py [--out DIR] [--rounds N]`.

v7's partition kernel (the package's) waits for the sequence length before it
loads any block id, and for the block ids before it loads K/V: three dependent
memory latencies before its first tile. v8's kernel (kept below as
`_decode_partition_kernel_v8`) loads the first tile's block ids and the query
before anything waits on the sequence length, masking the ids by the block
table's width, and carries each next tile's ids one step ahead through the
loop. On an H100 it was 0.2-3.3% slower at 11 of 13 shapes and was not
adopted (docs/kernels-notes.md v8).

Per shape: one slot-major cache, SDPA's contiguous copy of it, the same block
tables (exactly as wide as the context) and queries, inputs rotated over 512 MB.
Each variant is checked (against the torch reference at uneven lengths with a
wider table, and against SDPA at every timed shape), then timed as CUDA-graph
replays in interleaved rounds (as decode_layout.py does); medians. The card's
copy bandwidth is measured once (1 GiB device-to-device copy, read + written).
"""

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu_timing import capture_graph, copy_bandwidth_gbs, rel_err  # noqa: E402
from pagedserve.kernels._backend import (  # noqa: E402
    dot_in_fp32,
    dot_precision,
    next_power_of_2,
    tl,
)
from pagedserve.kernels.attention_tiles import LOG2_E, online_softmax_step  # noqa: E402
from pagedserve.kernels.paged_decode_attention import (  # noqa: E402
    _decode_config,
    _decode_merge_kernel,
    _few_short_programs_config,
    choose_partition_tokens,
    paged_decode_attention_reference,
    paged_decode_attention_triton,
)

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
ROTATE_BYTES = 512 * 1024 * 1024  # rotate inputs until they span this (L2 is 50 MB)
MAX_COPIES = 16
SHAPES = [(b, c) for b in (32, 64, 128, 256) for c in (1024, 2048, 8192)] + [(1, 32768)]


# v8's partition kernel (tried, not adopted: docs/kernels-notes.md v8) and its two
# tile helpers; v7's kernel is the package's.
@triton.jit
def load_tile_block_ids(
    block_table_row_ptr,  # this sequence's row of block_tables
    first_token,  # position of the tile's first key
    table_tokens,  # when BOUNDED, entries for positions at or past this one load 0
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,
):
    """Block id of each position first_token .. first_token + BLOCK_N - 1, [BLOCK_N] int32."""
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    if BOUNDED:
        return tl.load(
            block_table_row_ptr + tokens // BLOCK_SIZE, mask=tokens < table_tokens, other=0
        )
    return tl.load(block_table_row_ptr + tokens // BLOCK_SIZE)


@triton.jit
def gather_kv_tile_by_ids(
    key_cache_ptr,
    value_cache_ptr,
    block_ids,  # [BLOCK_N] int32, the block of each key (load_tile_block_ids)
    kv_head_offset,  # kv_head * cache_stride_head
    first_token,  # position of the tile's first key
    key_limit,  # when BOUNDED, keys at or past this position load 0 and are never read
    cache_stride_block,
    cache_stride_slot,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BOUNDED: tl.constexpr,  # the tile may cross key_limit
    DOT_IN_FP32: tl.constexpr,  # see _backend.dot_in_fp32
):
    """K and V of positions first_token .. first_token + BLOCK_N - 1, each
    [BLOCK_N, HEAD_DIM]; when BOUNDED, block ids at or past key_limit are never used."""
    tokens = first_token + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    dims = tl.arange(0, HEAD_DIM)
    kv_offsets = (
        block_ids.to(tl.int64) * cache_stride_block
        + (tokens % BLOCK_SIZE) * cache_stride_slot
        + kv_head_offset
    )  # [BLOCK_N]
    kv_ptrs = kv_offsets[:, None] + dims[None, :]  # [BLOCK_N, HEAD_DIM]
    if BOUNDED:
        token_mask = tokens < key_limit
        k = tl.load(key_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
        v = tl.load(value_cache_ptr + kv_ptrs, mask=token_mask[:, None], other=0.0)
    else:
        k = tl.load(key_cache_ptr + kv_ptrs)
        v = tl.load(value_cache_ptr + kv_ptrs)
    if DOT_IN_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit(do_not_specialize=["block_table_stride_seq", "table_tokens", "num_partitions"])
def _decode_partition_kernel_v8(
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
    table_tokens,  # block_tables' width x BLOCK_SIZE: positions its rows can hold
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
    partition = tl.program_id(2)
    first_token = partition * partition_tokens
    # The chain before the first K/V tile is seq_len, then block ids, then K/V.
    # The first tile's block ids and the query need only shapes, so they are
    # loaded before anything waits on seq_len: both loads are in flight together.
    block_table_row_ptr = block_tables_ptr + seq.to(tl.int64) * block_table_stride_seq
    next_block_ids = load_tile_block_ids(
        block_table_row_ptr, first_token, table_tokens, BLOCK_SIZE, BLOCK_N, True
    )
    seq_len = tl.load(seq_lens_ptr + seq)

    group_rows = tl.arange(0, GROUP_BLOCK)
    row_mask = group_rows < GROUP_SIZE
    head = kv_head * GROUP_SIZE + group_rows  # [GROUP_BLOCK]
    dims = tl.arange(0, HEAD_DIM)
    q_offsets = seq.to(tl.int64) * query_stride_seq + head * query_stride_head
    q = tl.load(query_ptr + q_offsets[:, None] + dims[None, :], mask=row_mask[:, None], other=0.0)
    if first_token >= seq_len:
        return  # the merge kernel reads only partitions that hold keys
    key_limit = tl.minimum(seq_len, first_token + partition_tokens)
    if DOT_IN_FP32:
        q = q.to(tl.float32)
    else:
        q = q.to(key_cache_ptr.dtype.element_ty)

    row_max = tl.full([GROUP_BLOCK], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([GROUP_BLOCK], dtype=tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], dtype=tl.float32)
    kv_head_offset = kv_head * cache_stride_head
    # Whole tiles without masks, then at most one tile that crosses key_limit.
    # Each step loads the next tile's block ids (masked by the table's width,
    # not by seq_len) before its own K/V, one tile ahead.
    full_end = first_token + ((key_limit - first_token) // BLOCK_N) * BLOCK_N
    for tile_first in range(first_token, full_end, BLOCK_N):
        block_ids = next_block_ids
        next_block_ids = load_tile_block_ids(
            block_table_row_ptr, tile_first + BLOCK_N, table_tokens, BLOCK_SIZE, BLOCK_N, True
        )
        k, v = gather_kv_tile_by_ids(
            key_cache_ptr, value_cache_ptr, block_ids, kv_head_offset, tile_first, key_limit,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, False,
            DOT_IN_FP32,
        )  # fmt: skip
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, None, scale_log2, False, DOT_PRECISION
        )
    if full_end < key_limit:
        k, v = gather_kv_tile_by_ids(
            key_cache_ptr, value_cache_ptr, next_block_ids, kv_head_offset, full_end, key_limit,
            cache_stride_block, cache_stride_slot, BLOCK_SIZE, HEAD_DIM, BLOCK_N, True,
            DOT_IN_FP32,
        )  # fmt: skip
        visible = ((full_end + tl.arange(0, BLOCK_N)) < key_limit)[None, :]
        row_max, row_sum, acc = online_softmax_step(
            q, k, v, row_max, row_sum, acc, visible, scale_log2, True, DOT_PRECISION
        )

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
        tl.store(partial_max_ptr + stat_offsets, row_max, mask=row_mask)
        tl.store(partial_sum_ptr + stat_offsets, row_sum, mask=row_mask)
        tl.store(
            partial_out_ptr + stat_offsets[:, None] * HEAD_DIM + dims[None, :],
            acc,
            mask=row_mask[:, None],
        )


def decode_v8(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    out: torch.Tensor,  # [num_seqs, num_heads, head_dim]
) -> torch.Tensor:
    """paged_decode_attention_triton's launch (same partition and option rules)
    with v8's partition kernel, which also takes the table's width in positions."""
    num_seqs, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    max_seq_len = block_tables.shape[1] * block_size
    config = _decode_config(head_dim)
    partition_tokens = choose_partition_tokens(
        num_seqs, num_kv_heads, max_seq_len, query.device, config["BLOCK_N"]
    )
    num_partitions = triton.cdiv(max_seq_len, partition_tokens)
    num_programs = num_seqs * num_kv_heads * num_partitions
    config.update(_few_short_programs_config(num_programs, partition_tokens, query.device))
    single = num_partitions == 1
    partial_shape = (1, 1, 1) if single else (num_seqs, num_heads, num_partitions)
    partial_out = torch.empty(*partial_shape, head_dim, dtype=torch.float32, device=query.device)
    partial_max = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    partial_sum = torch.empty(partial_shape, dtype=torch.float32, device=query.device)
    grid = (num_kv_heads, num_seqs, num_partitions)
    _decode_partition_kernel_v8[grid](
        query, key_cache, value_cache, block_tables, seq_lens, out,
        partial_out, partial_max, partial_sum, scale * LOG2_E, partition_tokens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        max_seq_len, num_partitions,
        BLOCK_SIZE=block_size, GROUP_SIZE=num_heads // num_kv_heads,
        GROUP_BLOCK=max(16, next_power_of_2(num_heads // num_kv_heads)), HEAD_DIM=head_dim,
        SINGLE_PARTITION=single,
        DOT_IN_FP32=dot_in_fp32(_decode_partition_kernel_v8, key_cache.dtype),
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


def decode_v7(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    return paged_decode_attention_triton(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out=out
    )


VERSIONS = {"v7": decode_v7, "v8": decode_v8}


def check_small_against_reference() -> list[str]:
    """Both versions against the torch reference at uneven lengths, the table
    wider than every sequence (padding entries poisoned), at 1 and 32 sequences."""
    failures = []
    for num_seqs in (7, 32):
        seq_lens = [(1, 15, 16, 17, 300, 1000, 2049)[i % 7] + 3 * (i // 7) for i in range(num_seqs)]
        blocks = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
        num_blocks = sum(blocks) + 5
        shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        key_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
        value_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
        order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
        # Padding entries far out of range: a kernel that used one would fault.
        table = torch.full((num_seqs, max(blocks) + 3), 1 << 30, dtype=torch.int32, device=DEVICE)
        start = 0
        for seq, count in enumerate(blocks):
            table[seq, :count] = order[start : start + count]
            start += count
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
        query = torch.randn(num_seqs, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        scale = HEAD_DIM**-0.5
        args = (query, key_cache, value_cache, table, lens, scale)
        expected = paged_decode_attention_reference(*args)
        for name, fn in VERSIONS.items():
            out = torch.full_like(query, float("nan"))
            fn(*args, out)
            torch.cuda.synchronize()
            err = rel_err(out, expected)
            ok = err <= 1e-2
            print(f"check {name} {num_seqs} seqs vs reference: {err:.2e} {'OK' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"reference {name} {num_seqs} seqs")
    return failures


def make_inputs(batch: int, context: int, copies: int):
    """A slot-major cache with `copies` block tables over disjoint shuffled blocks,
    and one query per copy."""
    blocks_per_seq = triton.cdiv(context, BLOCK_SIZE)
    needed = batch * blocks_per_seq
    num_blocks = needed * copies + 7
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    value_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    tables = [
        order[c * needed : (c + 1) * needed].view(batch, blocks_per_seq).contiguous()
        for c in range(copies)
    ]
    lens = torch.full((batch,), context, dtype=torch.int32, device=DEVICE)
    queries = [
        torch.randn(batch, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(copies)
    ]
    return key_cache, value_cache, tables, lens, queries


def bench_shape(batch: int, context: int, rounds: int) -> tuple[dict, list[str]]:
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * 2
    copies = max(1, min(MAX_COPIES, ROTATE_BYTES // kv_bytes))
    calls = 20 if kv_bytes < 1e9 else 3
    key_cache, value_cache, tables, lens, queries = make_inputs(batch, context, copies)
    scale = HEAD_DIM**-0.5

    def contiguous(cache, table):  # [batch, kv_heads, context, head_dim]
        return cache[table.long()].flatten(1, 2).transpose(1, 2).contiguous()

    dense = [(contiguous(key_cache, t), contiguous(value_cache, t)) for t in tables]
    outs = [torch.empty_like(q) for q in queries]
    state = {"i": 0}

    def pick() -> int:
        state["i"] = (state["i"] + 1) % copies
        return state["i"]

    def sdpa():
        i = pick()
        return F.scaled_dot_product_attention(
            queries[i][:, :, None], dense[i][0], dense[i][1], scale=scale, enable_gqa=True
        )

    def paged(version):
        def run():
            i = pick()
            return version(queries[i], key_cache, value_cache, tables[i], lens, scale, outs[i])

        return run

    variants = {"sdpa": sdpa, **{name: paged(fn) for name, fn in VERSIONS.items()}}
    failures = []
    expected = sdpa()[:, :, 0]  # state["i"] now names the query it used
    used = state["i"]
    for name, fn in variants.items():
        if name == "sdpa":
            continue
        outs[used].fill_(float("nan"))
        state["i"] = used - 1
        err = rel_err(fn(), expected)
        if not err <= 1e-2:
            failures.append(f"{name} b{batch} ctx{context}: {err:.2e}")
    graphs = {name: capture_graph(fn, calls) for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, graph in graphs.items():
            ms = do_bench(graph.replay, warmup=10, rep=60, return_mode="median") / calls
            times[name].append(ms)
    return {"times_ms": times, "kv_bytes": kv_bytes}, failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".", help="folder for the JSON")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--tag", default="run", help="names the JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    failures = check_small_against_reference()
    copy_gbs = copy_bandwidth_gbs(1 << 30, DEVICE)
    print(f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    results = []
    for batch, context in SHAPES:
        shape_result, shape_failures = bench_shape(batch, context, args.rounds)
        failures += shape_failures
        torch.cuda.empty_cache()
        times = shape_result["times_ms"]
        medians = {name: statistics.median(ms) for name, ms in times.items()}
        results.append({"batch": batch, "context": context, **shape_result, "median_ms": medians})
        print(json.dumps(results[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"decode_prefetch_{args.tag}.json"), "w") as f:
        summary = {"device": device_name, "copy_gbs": copy_gbs, "results": results}
        json.dump({**summary, "failures": failures}, f, indent=1)
    print(f"\n{device_name}: medians of {args.rounds} rounds, ms per call (ratio to SDPA)")
    print("| shape | SDPA | v7 | v8 | v8 / v7 | v7, v8 % of copy BW | spread v7, v8 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        m, t = r["median_ms"], r["times_ms"]
        cells = [f"{m[k]:.4f} ({m[k] / m['sdpa']:.3f})" for k in ("v7", "v8")]
        share = [100 * r["kv_bytes"] / (m[k] * 1e6) / copy_gbs for k in ("v7", "v8")]
        spread = [100 * (max(t[k]) - min(t[k])) / m[k] for k in ("v7", "v8")]
        print(
            f"| b{r['batch']} x {r['context']} | {m['sdpa']:.4f} | {' | '.join(cells)} "
            f"| {m['v8'] / m['v7']:.3f} | {share[0]:.0f}%, {share[1]:.0f}% "
            f"| {spread[0]:.1f}%, {spread[1]:.1f}% |"
        )
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")


if __name__ == "__main__":
    main()
