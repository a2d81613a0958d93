"""The harness: checks every variant, then times all of them in interleaved rounds.

Per shape: one slot-major cache, SDPA's contiguous copy of it, block tables
exactly as wide as the context over disjoint shuffled blocks, one query per
copy, inputs rotated over 512 MB so that the L2 cache holds none of them. Each
variant is checked against the torch reference at uneven lengths (table wider
than every sequence, padding entries far out of range) and against SDPA at
every timed shape, then captured as a CUDA graph of 20 calls (3 above 1 GB of
KV) and timed in interleaved rounds, so that drift hits all variants alike;
medians. The card's copy bandwidth is measured in the same run.
"""

import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from benchmarks.decode_experiments import (
    block_ids_ahead_v8,
    head_major_v7,
    launch_rule_v11,
    load_latency,
    long_context_v15,
    ordered_blocks,
    pdl_v14,
    run_length_v25,
    staggered_v21,
    touch_ahead_v22,
)
from benchmarks.gpu_timing import capture_graph, copy_bandwidth_gbs, rel_err
from benchmarks.paged_inputs import (
    BLOCK_SIZE,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    NUM_HEADS,
    NUM_KV_HEADS,
    ROTATE_BYTES,
    contiguous_kv,
)
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton
from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference

MAX_COPIES = 16
SHAPES = [(b, c) for b in (32, 64, 128, 256) for c in (1024, 2048, 8192)] + [(1, 32768)]


def decode_v7(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
    return paged_decode_attention_triton(
        query, key_cache, value_cache, block_tables, seq_lens, scale, out=out
    )


VARIANTS = {
    "v7": decode_v7,
    **head_major_v7.VARIANTS,
    **block_ids_ahead_v8.VARIANTS,
    **load_latency.VARIANTS,
    **ordered_blocks.VARIANTS,
    **launch_rule_v11.VARIANTS,
    **pdl_v14.VARIANTS,
    **long_context_v15.VARIANTS,
    **staggered_v21.VARIANTS,
    **touch_ahead_v22.VARIANTS,
    **run_length_v25.VARIANTS,
}


def check_small_against_reference(variants: dict) -> list[str]:
    """Every variant against the torch reference at uneven lengths, the table
    wider than every sequence (padding entries out of range), 7 and 32 sequences."""
    failures = []
    for num_seqs in (7, 32):
        seq_lens = [(1, 15, 16, 17, 300, 1000, 2049)[i % 7] + 3 * (i // 7) for i in range(num_seqs)]
        blocks = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
        num_blocks = sum(blocks) + 5
        shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        key_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
        value_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
        order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
        # Padding entries far out of range: a kernel that used one unclamped would fault.
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
        for name, fn in variants.items():
            out = torch.full_like(query, float("nan"))
            fn(*args, out)
            torch.cuda.synchronize()
            err = rel_err(out, expected)
            ok = err <= 1e-2
            print(f"check {name}, {num_seqs} seqs vs reference: {err:.2e} {'OK' if ok else 'FAIL'}")
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


def bench_shape(batch: int, context: int, variants: dict, rounds: int) -> tuple[dict, list[str]]:
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * 2
    copies = max(1, min(MAX_COPIES, ROTATE_BYTES // kv_bytes))
    calls = 20 if kv_bytes < 1e9 else 3
    key_cache, value_cache, tables, lens, queries = make_inputs(batch, context, copies)
    scale = HEAD_DIM**-0.5

    dense = [
        (contiguous_kv(key_cache, t, context), contiguous_kv(value_cache, t, context))
        for t in tables
    ]
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

    def paged(fn):
        def run():
            i = pick()
            return fn(queries[i], key_cache, value_cache, tables[i], lens, scale, outs[i])

        return run

    timed = {"sdpa": sdpa, **{name: paged(fn) for name, fn in variants.items()}}
    failures = []
    expected = sdpa()[:, :, 0]  # state["i"] now names the query it used
    used = state["i"]
    for name, fn in timed.items():
        if name == "sdpa":
            continue
        outs[used].fill_(float("nan"))
        state["i"] = used - 1
        err = rel_err(fn(), expected)
        if not err <= 1e-2:
            failures.append(f"{name} b{batch} ctx{context}: {err:.2e}")
        for _ in range(copies):  # a variant that copies its inputs does so now, not in a graph
            fn()
    graphs = {name: capture_graph(fn, calls) for name, fn in timed.items()}
    times = {name: [] for name in timed}
    for _ in range(rounds):
        for name, graph in graphs.items():
            ms = do_bench(graph.replay, warmup=10, rep=60, return_mode="median") / calls
            times[name].append(ms)
    return {"times_ms": times, "kv_bytes": kv_bytes}, failures


def sdpa_kernel_names() -> list[str]:
    """The kernels SDPA's decode launches (b32 x 2k), from torch.profiler."""
    query = torch.randn(32, NUM_HEADS, 1, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    key = torch.randn(32, NUM_KV_HEADS, 2048, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    F.scaled_dot_product_attention(query, key, key, enable_gqa=True)
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        F.scaled_dot_product_attention(query, key, key, enable_gqa=True)
        torch.cuda.synchronize()
    return sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--out", default=".", help="folder for the JSON")
    parser.add_argument("--tag", default="run", help="names the JSON file")
    parser.add_argument("--shapes", default="", help="BxC,... (default: every shape)")
    args = parser.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
    names = args.variants.split(",")
    if "v7" not in names:
        names.insert(0, "v7")  # every run times the package's kernel as well
    variants = {name: VARIANTS[name] for name in names}
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name()
    print(f"{device_name}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    print("SDPA decode kernels:", sdpa_kernel_names(), flush=True)
    ordered_blocks.prepare_served_tables(shapes, names)
    failures = check_small_against_reference(variants)
    copy_gbs = copy_bandwidth_gbs(1 << 30, DEVICE)
    print(f"copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    results = []
    for batch, context in shapes:
        shape_result, shape_failures = bench_shape(batch, context, variants, args.rounds)
        failures += shape_failures
        torch.cuda.empty_cache()
        medians = {name: statistics.median(ms) for name, ms in shape_result["times_ms"].items()}
        results.append({"batch": batch, "context": context, **shape_result, "median_ms": medians})
        print(json.dumps(results[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"decode_experiments_{args.tag}.json"), "w") as f:
        summary = {"device": device_name, "copy_gbs": copy_gbs, "results": results}
        json.dump({**summary, "failures": failures}, f, indent=1)
    print(f"\n{device_name}: medians of {args.rounds} rounds, ms per call (ratio to SDPA)")
    print(f"copy bandwidth {copy_gbs:.0f} GB/s; spread = (max - min) / median over the rounds")
    print("| shape | SDPA | " + " | ".join(names) + " | max spread |")
    print("| --- " * (len(names) + 3) + "|")
    for r in results:
        m, t = r["median_ms"], r["times_ms"]
        cells = [f"{m[k]:.4f} ({m[k] / m['sdpa']:.3f})" for k in names]
        spread = max(100 * (max(t[k]) - min(t[k])) / m[k] for k in t)
        print(
            f"| b{r['batch']} x {r['context']} | {m['sdpa']:.4f} | {' | '.join(cells)} "
            f"| {spread:.1f}% |"
        )
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")


if __name__ == "__main__":
    main()
