"""Decode against the cache layout: slot-major (the pool's) vs head-major, and SDPA.

Run from the repository root: `python3 benchmarks/decode_layout.py [--out DIR] [--runs N]`.

The pool stores a layer's keys as [blocks, block_size, kv_heads, head_dim]
(slot-major): one kv head's 16 keys in a block are 256-byte rows 2 KiB apart.
The alternative, [blocks, kv_heads, block_size, head_dim] (head-major), makes
them one 4 KiB run, as SDPA's contiguous [batch, kv_heads, context, head_dim]
cache has them. The partition kernel takes the cache's block, slot and head
strides as arguments, so the head-major copy below launches the same kernel
with head-major strides; nothing else in the pointer math changes.

Each shape builds one slot-major cache, its head-major copy (same values, same
block tables) and SDPA's contiguous copy; checks every variant's output; then
times every variant as CUDA-graph replays (as kernels_bench.py does), in
interleaved rounds so that drift hits all variants alike, and reports medians.
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

from benchmarks.gpu_timing import capture_graph, rel_err  # noqa: E402
from pagedserve.kernels._backend import dot_in_fp32, dot_precision, next_power_of_2  # noqa: E402
from pagedserve.kernels.attention_tiles import LOG2_E  # noqa: E402
from pagedserve.kernels.paged_decode_attention import (  # noqa: E402
    _decode_config,
    _decode_merge_kernel,
    _decode_partition_kernel,
    _few_short_programs_config,
    choose_partition_tokens,
    paged_decode_attention_reference,
    paged_decode_attention_triton,
)

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
ROTATE_BYTES = 512 * 1024 * 1024  # rotate inputs until they span this (L2 is 50 MB)
MAX_COPIES = 16
SHAPES = [(b, c) for b in (32, 64, 128, 256) for c in (1024, 2048, 8192)]


def decode_head_major(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, num_kv_heads, block_size, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32
    scale: float,
    out: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    heads_fastest: bool = True,
) -> torch.Tensor:
    """paged_decode_attention_triton's launch (same partition and option rules)
    over a head-major cache: only the stride arguments differ."""
    num_seqs, num_heads, head_dim = query.shape
    _, num_kv_heads, block_size, _ = key_cache.shape
    max_seq_len = block_tables.shape[1] * block_size
    config = {**_decode_config(head_dim), "HEADS_FASTEST": heads_fastest}
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
    if heads_fastest:
        grid = (num_kv_heads, num_seqs, num_partitions)
    else:
        grid = (num_seqs, num_kv_heads, num_partitions)
    _decode_partition_kernel[grid](
        query, key_cache, value_cache, block_tables, seq_lens, out,
        partial_out, partial_max, partial_sum, scale * LOG2_E, partition_tokens,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        # block, slot, head strides of the head-major cache
        key_cache.stride(0), key_cache.stride(2), key_cache.stride(1), block_tables.stride(0),
        num_partitions,
        BLOCK_SIZE=block_size, GROUP_SIZE=num_heads // num_kv_heads,
        GROUP_BLOCK=max(16, next_power_of_2(num_heads // num_kv_heads)), HEAD_DIM=head_dim,
        SINGLE_PARTITION=single,
        DOT_IN_FP32=dot_in_fp32(_decode_partition_kernel, key_cache.dtype),
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


def make_inputs(batch: int, context: int, copies: int, device: torch.device):
    """Slot-major caches with `copies` block tables over disjoint shuffled blocks,
    the head-major copies, and one query per copy."""
    blocks_per_seq = triton.cdiv(context, BLOCK_SIZE)
    needed = batch * blocks_per_seq
    num_blocks = needed * copies + 7
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, device=device, dtype=DTYPE)
    value_cache = torch.randn(shape, device=device, dtype=DTYPE)
    order = torch.randperm(num_blocks, device=device).to(torch.int32)
    tables = [
        order[c * needed : (c + 1) * needed].view(batch, blocks_per_seq).contiguous()
        for c in range(copies)
    ]
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    queries = [
        torch.randn(batch, NUM_HEADS, HEAD_DIM, device=device, dtype=DTYPE) for _ in range(copies)
    ]
    head_major = (key_cache.transpose(1, 2).contiguous(), value_cache.transpose(1, 2).contiguous())
    return key_cache, value_cache, head_major, tables, lens, queries


def check_small_against_reference(device: torch.device) -> list[str]:
    """Head-major decode against the torch reference at uneven lengths."""
    failures = []
    seq_lens = [1, 15, 16, 17, 300, 1000, 2049]
    blocks = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
    num_blocks = sum(blocks) + 5
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, device=device, dtype=DTYPE)
    value_cache = torch.randn(shape, device=device, dtype=DTYPE)
    order = torch.randperm(num_blocks, device=device).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks) + 2, dtype=torch.int32, device=device)
    start = 0
    for seq, count in enumerate(blocks):
        table[seq, :count] = order[start : start + count]
        start += count
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    query = torch.randn(len(seq_lens), NUM_HEADS, HEAD_DIM, device=device, dtype=DTYPE)
    scale = HEAD_DIM**-0.5
    expected = paged_decode_attention_reference(query, key_cache, value_cache, table, lens, scale)
    hm = (key_cache.transpose(1, 2).contiguous(), value_cache.transpose(1, 2).contiguous())
    for heads_fastest in (True, False):
        out = torch.full_like(query, float("nan"))
        decode_head_major(query, *hm, table, lens, scale, out, heads_fastest)
        err = rel_err(out, expected)
        ok = err <= 1e-2
        print(
            f"check head-major hf={heads_fastest} vs reference: {err:.2e} {'OK' if ok else 'FAIL'}"
        )
        if not ok:
            failures.append(f"reference hf={heads_fastest}")
    return failures


def bench_shape(batch: int, context: int, rounds: int) -> tuple[dict, list[str]]:
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * 2
    copies = max(1, min(MAX_COPIES, ROTATE_BYTES // kv_bytes))
    calls = 20 if kv_bytes < 1e9 else 3
    key_cache, value_cache, head_major, tables, lens, queries = make_inputs(
        batch, context, copies, DEVICE
    )
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

    def slot_major():
        i = pick()
        args = (queries[i], key_cache, value_cache, tables[i], lens, scale)
        return paged_decode_attention_triton(*args, out=outs[i])

    def head_major_fn(heads_fastest):
        def run():
            i = pick()
            args = (queries[i], *head_major, tables[i], lens, scale, outs[i])
            return decode_head_major(*args, heads_fastest=heads_fastest)

        return run

    variants = {
        "sdpa": sdpa,
        "slot-major": slot_major,
        "head-major": head_major_fn(True),
        "head-major seq-fastest": head_major_fn(False),
    }
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
    return times, failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".", help="folder for the JSON")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--tag", default="run", help="names the JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    failures = check_small_against_reference(DEVICE)
    results = []
    for batch, context in SHAPES:
        times, shape_failures = bench_shape(batch, context, args.rounds)
        failures += shape_failures
        torch.cuda.empty_cache()  # the shape's caches and graphs are gone
        medians = {name: statistics.median(ms) for name, ms in times.items()}
        results.append(
            {"batch": batch, "context": context, "times_ms": times, "median_ms": medians}
        )
        print(json.dumps(results[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"decode_layout_{args.tag}.json"), "w") as f:
        json.dump({"device": device_name, "results": results, "failures": failures}, f, indent=1)
    print(f"\n{device_name}: medians of {args.rounds} rounds, ms per call (ratio to SDPA)")
    print("| shape | SDPA | slot-major | head-major | head-major seq-fastest | head/slot |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        m = r["median_ms"]
        sdpa = m["sdpa"]
        cells = [f"{m[k]:.4f} ({m[k] / sdpa:.3f})" for k in list(m)[1:]]
        gain = m["head-major"] / m["slot-major"]
        print(f"| b{r['batch']} x {r['context']} | {sdpa:.4f} | {' | '.join(cells)} | {gain:.3f} |")
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")


if __name__ == "__main__":
    main()
