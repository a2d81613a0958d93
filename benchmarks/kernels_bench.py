"""Kernel benchmark on one CUDA GPU: full-size correctness checks, then timings.

Run from the repository root: `python3 benchmarks/kernels_bench.py [--out DIR] [--sweep]`.
Order: (1) each Triton kernel against its torch reference at full size;
(2) the card's copy bandwidth (device-to-device copy, bytes read + written);
(3) paged decode against torch SDPA on a contiguous cache at the same shapes;
(4) paged prefill against SDPA causal on the same lengths stored contiguously;
(5) copy_blocks, write_kv_cache and the layer ops (rms_norm, add_rms_norm,
silu_and_mul, rotary_embedding) against the copy bandwidth. The table is
printed last and written, with every figure, to --out.
"""

import argparse
import datetime
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_table import (  # noqa: E402
    FAILURES,
    ROWS,
    add_row,
    bench_graph_ms,
    bench_ms,
    check,
    guarded,
    print_table,
)
from benchmarks.gpu_timing import copy_bandwidth_gbs, rel_err  # noqa: E402
from benchmarks.layer_ops_bench import bench_layer_ops, check_layer_ops  # noqa: E402
from benchmarks.paged_inputs import (  # noqa: E402
    BLOCK_SIZE,
    DEVICE,
    DTYPE,
    HEAD_DIM,
    NUM_HEADS,
    NUM_KV_HEADS,
    ROTATE_BYTES,
    contiguous_kv,
    make_paged,
    new_tokens_kv,
)
from benchmarks.served_tables import served_tables_in_parallel  # noqa: E402
from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS, DEFAULT_GROUP_EXTENTS  # noqa: E402
from pagedserve.kernels.copy_blocks import copy_blocks_reference, copy_blocks_triton  # noqa: E402
from pagedserve.kernels.paged_attention import paged_attention_triton  # noqa: E402
from pagedserve.kernels.paged_attention_reference import paged_attention_reference  # noqa: E402
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton  # noqa: E402
from pagedserve.kernels.paged_decode_attention_reference import (  # noqa: E402
    paged_decode_attention_reference,
)
from pagedserve.kernels.swap_blocks import swap_blocks  # noqa: E402
from pagedserve.kernels.write_kv_cache import (  # noqa: E402
    write_kv_cache_reference,
    write_kv_cache_triton,
)

MAX_COPIES = 64
MAX_KV_BYTES = 18e9  # per layout: the paged pool and the SDPA copy must both fit
PREFILL_ROUNDS = 5  # prefill and SDPA timed in turn, medians
# Decode is also timed over the tables the block manager hands out while
# serving (served_tables.py), with its default placement (extent blocks, group
# extents) and with short extents.
SERVED_PLACEMENTS = ((DEFAULT_EXTENT_BLOCKS, DEFAULT_GROUP_EXTENTS), (16, 1))


def run_checks() -> None:
    """Each Triton kernel against its reference at serving sizes."""
    for num_heads, num_kv_heads, head_dim, dtype, tol in [
        (32, 8, 128, torch.bfloat16, 1e-2),
        (9, 3, 64, torch.float16, 2e-3),
        (16, 4, 256, torch.bfloat16, 1e-2),
    ]:
        tag = f"h{num_heads}/{num_kv_heads} d{head_dim} {str(dtype)[6:]}"
        seq_lens = [1, 15, 16, 17, 1000, 4099, 32768]
        key_cache, value_cache, tables, lens = make_paged(seq_lens, num_kv_heads, head_dim, dtype)
        query = torch.randn(len(seq_lens), num_heads, head_dim, device=DEVICE, dtype=dtype)
        args = (query, key_cache, value_cache, tables[0], lens, head_dim**-0.5)
        expected = paged_decode_attention_reference(*args)
        check(f"decode {tag}", rel_err(paged_decode_attention_triton(*args), expected), tol)
        qsl = torch.arange(len(seq_lens) + 1, dtype=torch.int32, device=DEVICE)
        new_kv = new_tokens_kv(key_cache, value_cache, tables[0], [(n, 1) for n in seq_lens])
        out = paged_attention_triton(
            query, *new_kv, key_cache, value_cache, tables[0], qsl, lens, args[-1]
        )
        check(f"varlen-as-decode {tag}", rel_err(out, expected), tol)
        # Mixed batch: decode, chunked prefill (cached context), full prefill.
        seqs = [(1, 1), (17, 17), (1000, 1000), (3000, 500), (4099, 1), (16, 16), (2048, 2048)]
        key_cache, value_cache, tables, lens = make_paged(
            [n for n, _ in seqs], num_kv_heads, head_dim, dtype
        )
        q_lens = torch.tensor([0] + [q for _, q in seqs], device=DEVICE)
        qsl = q_lens.cumsum(0).to(torch.int32)
        query = torch.randn(int(qsl[-1]), num_heads, head_dim, device=DEVICE, dtype=dtype)
        new_kv = new_tokens_kv(key_cache, value_cache, tables[0], seqs)
        args = (query, *new_kv, key_cache, value_cache, tables[0], qsl, lens, head_dim**-0.5)
        expected = paged_attention_reference(*args)
        for name, config in PREFILL_CHECKED:
            out = torch.full_like(query, float("nan"))
            out = paged_attention_triton(*args, out=out, config=config)
            check(f"prefill mixed {tag} {name}", rel_err(out, expected), tol)

    pool_shape = (4, 2, 600, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    pool = torch.randn(pool_shape, device=DEVICE, dtype=DTYPE)
    order = torch.randperm(600, device=DEVICE)
    src, dst = order[:250], order[250:500]
    expected = pool.clone()
    copy_blocks_reference(expected, src, dst)
    copy_blocks_triton(pool, src, dst)
    check("copy_blocks", 0.0 if torch.equal(pool, expected) else float("nan"), 0.0)

    slots = torch.randperm(600 * BLOCK_SIZE, device=DEVICE)[:3000]
    key = torch.randn(3000, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    value = torch.randn_like(key)
    caches = [pool[0, 0], pool[0, 1]]
    expected = [c.clone() for c in caches]
    write_kv_cache_reference(key, value, *expected, slots)
    write_kv_cache_triton(key, value, *caches, slots)
    same = all(torch.equal(a, b) for a, b in zip(caches, expected, strict=True))
    check("write_kv_cache", 0.0 if same else float("nan"), 0.0)

    host_pool = torch.randn((4, 2, 300, *pool_shape[3:]), dtype=DTYPE).pin_memory()
    host_ids = torch.randperm(300)[:100]
    device_ids = torch.randperm(600, device=DEVICE)[:100]
    swap_blocks(pool, host_pool, device_ids, host_ids)
    ok_out = torch.equal(host_pool[:, :, host_ids], pool[:, :, device_ids].cpu())
    pool[:, :, device_ids] = 0
    swap_blocks(host_pool, pool, host_ids, device_ids)
    torch.cuda.synchronize()
    ok_in = torch.equal(host_pool[:, :, host_ids], pool[:, :, device_ids].cpu())
    check("swap_blocks out+in", 0.0 if ok_out and ok_in else float("nan"), 0.0)


# Layer-op widths of Llama-3-8B (hidden 4096, MLP 14336, 32/8 heads x 128).
def rotating(items):
    """A callable's argument source that cycles through `items`."""
    state = {"i": 0}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def bench_decode(batch, context, copy_gbps, configs, served) -> None:
    """Ours against SDPA over shuffled tables (with `configs`), then the
    default launch over the block manager's served tables of each extent."""
    kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * 2
    if kv_bytes > MAX_KV_BYTES:
        print(f"decode b{batch} ctx{context}: skipped, {kv_bytes / 1e9:.0f} GB of KV", flush=True)
        return
    copies = max(1, min(MAX_COPIES, ROTATE_BYTES // kv_bytes))
    calls = 20 if kv_bytes < 1e9 else 3  # per graph replay
    queries = [
        torch.randn(batch, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(copies)
    ]
    scale = HEAD_DIM**-0.5
    pick = rotating(list(range(copies)))
    shape = f"b{batch} ctx{context}"
    sdpa_ms = sdpa_eager_ms = None
    layouts = [("", None)] + [
        (f", served e{extent} g{group}", served[batch, context, extent, group])
        for extent, group in SERVED_PLACEMENTS
        if (batch, context, extent, group) in served
    ]
    for layout_name, layout in layouts:
        key_cache, value_cache, tables, lens = make_paged(
            [context] * batch, NUM_KV_HEADS, HEAD_DIM, DTYPE, copies, served=layout
        )
        # The same K/V, contiguous [batch, kv_heads, context, head_dim], for SDPA;
        # timed over the first layout only (the values differ, the shapes not).
        dense = [
            (contiguous_kv(key_cache, t, context), contiguous_kv(value_cache, t, context))
            for t in (tables if sdpa_ms is None else tables[:1])
        ]
        if sdpa_ms is None:

            def sdpa(dense=dense):
                i = pick()
                return F.scaled_dot_product_attention(
                    queries[i][:, :, None], dense[i][0], dense[i][1], scale=scale, enable_gqa=True
                )

            sdpa_ms = bench_graph_ms(sdpa, calls)
            sdpa_eager_ms = bench_ms(sdpa)
            del sdpa
        ours = paged_decode_attention_triton(
            queries[0], key_cache, value_cache, tables[0], lens, scale
        )
        theirs = F.scaled_dot_product_attention(
            queries[0][:, :, None], *dense[0], scale=scale, enable_gqa=True
        )
        check(f"decode {shape}{layout_name} vs sdpa", rel_err(ours, theirs[:, :, 0]), 1e-2)
        del dense, ours, theirs
        for name, config, partition in configs if layout is None else DECODE_DEFAULT:
            if partition == "v3":
                partition = v3_partition_tokens(batch, tables[0].shape[1] * BLOCK_SIZE)

            def ours_fn(
                config=config, partition=partition, paged=(key_cache, value_cache, tables, lens)
            ):
                i = pick()
                return paged_decode_attention_triton(
                    queries[i], paged[0], paged[1], paged[2][i], paged[3], scale,
                    partition_tokens=partition, config=config,
                )  # fmt: skip

            eager = f"eager (do_bench, L2 flushed): ours {bench_ms(ours_fn):.4f} ms, sdpa {sdpa_eager_ms:.4f} ms"
            ms = bench_graph_ms(ours_fn, calls)
            add_row(f"decode {name}{layout_name}", shape, ms, kv_bytes, copy_gbps, sdpa_ms, eager)
        del key_cache, value_cache, tables, ours_fn
        torch.cuda.empty_cache()


def v3_partition_tokens(num_seqs: int, max_seq_len: int) -> int:
    """v3's rule: about 4 programs per multiprocessor, partitions of >= 256 keys."""
    num_sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    wanted = triton.cdiv(4 * num_sms, num_seqs * NUM_KV_HEADS)
    num_partitions = max(1, min(wanted, 64, triton.cdiv(max_seq_len, 256)))
    return triton.cdiv(triton.cdiv(max_seq_len, num_partitions), 64) * 64


def bench_prefill(batch, length, configs) -> None:
    key_cache, value_cache, tables, lens = make_paged(
        [length] * batch, NUM_KV_HEADS, HEAD_DIM, DTYPE
    )
    query = torch.randn(batch * length, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    qsl = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE) * length
    scale = HEAD_DIM**-0.5
    q4 = query.view(batch, length, NUM_HEADS, HEAD_DIM).transpose(1, 2).contiguous()

    k4 = contiguous_kv(key_cache, tables[0], length)  # [batch, kv_heads, length, dim]
    v4 = contiguous_kv(value_cache, tables[0], length)
    new_key = k4.transpose(1, 2).flatten(0, 1).contiguous()  # [batch * length, kv_heads, dim]
    new_value = v4.transpose(1, 2).flatten(0, 1).contiguous()
    args = (query, new_key, new_value, key_cache, value_cache, tables[0], qsl, lens, scale)
    group = NUM_HEADS // NUM_KV_HEADS
    k4x, v4x = k4.repeat_interleave(group, 1), v4.repeat_interleave(group, 1)
    timed = {
        "sdpa gqa": lambda: F.scaled_dot_product_attention(
            q4, k4, v4, is_causal=True, scale=scale, enable_gqa=True
        ),
        "sdpa mha": lambda: F.scaled_dot_product_attention(
            q4, k4x, v4x, is_causal=True, scale=scale
        ),
    }
    theirs = F.scaled_dot_product_attention(q4, k4x, v4x, is_causal=True, scale=scale)
    theirs = theirs.transpose(1, 2).flatten(0, 1)
    flops = 4 * batch * NUM_HEADS * HEAD_DIM * length * (length + 1) / 2

    # Fresh prompts: the executor passes cached_context=False for such a batch.
    def ours_fn(config):
        return paged_attention_triton(*args, config=config, cached_context=False)

    for name, config in configs:
        check(f"prefill {name} b{batch} L{length} vs sdpa", rel_err(ours_fn(config), theirs), 1e-2)
        timed[name] = lambda config=config: ours_fn(config)
    # Interleaved rounds, medians: SDPA's time for one shape moved by up to 8%
    # between single timings seconds apart (docs/kernels.md), ours by under 1%.
    times = {name: [] for name in timed}
    for _ in range(PREFILL_ROUNDS):
        for name, fn in timed.items():
            times[name].append(bench_ms(fn))
    median = {name: statistics.median(ms) for name, ms in times.items()}
    gqa_ms, mha_ms = median.pop("sdpa gqa"), median.pop("sdpa mha")
    sdpa_ms = min(gqa_ms, mha_ms)
    # One launch's host work (Python, tensor descriptors) can exceed a short
    # prefill's GPU time; replayed from a graph, that host work is gone.
    graph_ms = {name: bench_graph_ms(fn, 10) for name, fn in timed.items()}
    for name, ms in median.items():
        ratios = [
            ours / min(a, b)
            for ours, a, b in zip(times[name], times["sdpa gqa"], times["sdpa mha"], strict=True)
        ]
        row = {"kernel": f"prefill {name}", "shape": f"b{batch} L{length}", "ms": ms,
               "TFLOP/s": flops / ms / 1e9, "sdpa_ms": sdpa_ms, "vs_sdpa": ms / sdpa_ms,
               "note": f"medians of {PREFILL_ROUNDS} rounds; sdpa gqa {gqa_ms:.4f} ms, "
               f"mha-expanded {mha_ms:.4f} ms; ratio per round {min(ratios):.3f}-{max(ratios):.3f}; "
               f"graph-replayed: ours {graph_ms[name]:.4f} ms, sdpa gqa "
               f"{graph_ms['sdpa gqa']:.4f} ms, mha {graph_ms['sdpa mha']:.4f} ms"}  # fmt: skip
        ROWS.append(row)
        print(json.dumps(row), flush=True)


def bench_copy_blocks(copy_gbps) -> None:
    num_layers, num_blocks = 32, 4096
    pool = torch.randn(
        num_layers, 2, num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE
    )
    block_bytes = BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM * 2
    for num_copies in (1024, 2048):
        order = torch.randperm(num_blocks, device=DEVICE)
        src, dst = order[:num_copies], order[num_copies : 2 * num_copies]
        moved = 2 * num_copies * num_layers * 2 * block_bytes
        shape = f"{num_copies} blocks x {num_layers} layers"
        add_row(
            "copy_blocks triton",
            shape,
            bench_ms(lambda src=src, dst=dst: copy_blocks_triton(pool, src, dst)),
            moved,
            copy_gbps,
        )
        add_row(
            "copy_blocks torch",
            shape,
            bench_ms(lambda src=src, dst=dst: copy_blocks_reference(pool, src, dst)),
            moved,
            copy_gbps,
        )


def bench_write_kv_cache(copy_gbps) -> None:
    num_blocks = 65536
    caches = [
        torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        for _ in range(2)
    ]
    for num_tokens in (256, 16384):
        key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
        value = torch.randn_like(key)
        slots = torch.randperm(num_blocks * BLOCK_SIZE, device=DEVICE)[:num_tokens]
        moved = 2 * 2 * key.numel() * 2
        ms = bench_ms(lambda k=key, v=value, s=slots: write_kv_cache_triton(k, v, *caches, s))
        add_row("write_kv_cache triton", f"{num_tokens} tokens", ms, moved, copy_gbps)


DECODE_DEFAULT = [("default", None, None)]
V3_LAUNCH = {"BLOCK_N": 64, "num_warps": 2, "num_stages": 4}
DECODE_SWEEP = [
    ("v3 default", V3_LAUNCH, "v3"),  # v3's launch options and partition rule
    ("v3 launch, v4 partitions", V3_LAUNCH, None),
    ("sequence-major grid", {"HEADS_FASTEST": False}, None),
    ("n32 w2 s6", {"BLOCK_N": 32, "num_warps": 2, "num_stages": 6}, None),
    ("v4 launch (n128 w4 s3 everywhere)", {"BLOCK_N": 128, "num_warps": 4, "num_stages": 3}, None),
]
PARTITION_SWEEP = [(f"part{p}", None, p) for p in (256, 512, 1024, 2048)]
PREFILL_DEFAULT = [("default", None)]
LONG_TILES = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
SHORT_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
# Checked at full size against the reference before any timing, at every
# head size (the tile sizes stay those of the default for the shape).
PREFILL_CHECKED = [
    ("default", None),
    ("pointers", {"NEW_KV_DESCRIPTORS": False}),
    ("paired", {"PAIRED_TILES": True}),
    ("single", {"PAIRED_TILES": False}),
]
PREFILL_SWEEP = [
    ("with context path (v4)", {"CACHED_CONTEXT": True}),
    ("pointers", {"NEW_KV_DESCRIPTORS": False}),
    ("m128 n128 w8 s3 single", {**LONG_TILES, "PAIRED_TILES": False}),
    ("m64 n64 w4 s3 paired", {**SHORT_TILES, "PAIRED_TILES": True}),
    ("m64 n64 w4 s3 single", {**SHORT_TILES, "PAIRED_TILES": False}),
    ("m128 n64 w8 s3 single", {**LONG_TILES, "BLOCK_N": 64, "PAIRED_TILES": False}),
    # v12: short prompts (b16 x 1k) at other tile, stage and pairing choices
    (
        "m64 n128 w4 s2 paired",
        {**SHORT_TILES, "BLOCK_N": 128, "num_stages": 2, "PAIRED_TILES": True},
    ),
    ("m64 n64 w4 s2 paired", {**SHORT_TILES, "num_stages": 2, "PAIRED_TILES": True}),
    ("m64 n64 w4 s4 paired", {**SHORT_TILES, "num_stages": 4, "PAIRED_TILES": True}),
    ("m64 n32 w4 s4 paired", {**SHORT_TILES, "BLOCK_N": 32, "num_stages": 4, "PAIRED_TILES": True}),
    ("m128 n64 w8 s3 paired", {**LONG_TILES, "BLOCK_N": 64, "PAIRED_TILES": True}),
    ("m64 n64 w8 s3 paired", {**SHORT_TILES, "num_warps": 8, "PAIRED_TILES": True}),
    # v21: query tiles through a tensor descriptor
    ("query descriptor", {"QUERY_DESCRIPTOR": True}),
    # v21: three programs a multiprocessor (64 x 32 tiles, registers capped)
    ("m64 n32 w4 s3 paired", {**SHORT_TILES, "BLOCK_N": 32, "PAIRED_TILES": True}),
    ("m64 n32 w4 s3 paired r168", {**SHORT_TILES, "BLOCK_N": 32, "maxnreg": 168}),
    ("m64 n32 w4 s2 paired r168", {**SHORT_TILES, "BLOCK_N": 32, "num_stages": 2, "maxnreg": 168}),
    ("m64 n32 w4 s2 paired r128", {**SHORT_TILES, "BLOCK_N": 32, "num_stages": 2, "maxnreg": 128}),
]
DECODE_SWEEP_SHAPES = {
    (1, 32768),
    (32, 1024),
    (32, 2048),
    (32, 8192),
    (64, 1024),
    (128, 1024),
    (256, 2048),
    (128, 8192),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".", help="folder for the table and the JSON")
    parser.add_argument("--sweep", action="store_true", help="also time tile/partition variants")
    parser.add_argument(
        "--prefill-variants",
        default="",
        help="comma-separated names from the prefill sweep to time beside the default",
    )
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument(
        "--only",
        default="decode,prefill,copy_blocks,write_kv_cache,layer_ops",
        help="comma-separated sections to time (default: all)",
    )
    parser.add_argument(
        "--no-served-tables",
        dest="served_tables",
        action="store_false",
        help="time decode over shuffled tables only, not also the block manager's",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name()
    versions = (
        f"torch {torch.__version__}, triton {triton.__version__}, Python {sys.version.split()[0]}"
    )
    print(f"{device_name}; {versions}", flush=True)
    if not args.skip_checks:
        guarded(run_checks)
        guarded(check_layer_ops)
    copy_gbps = copy_bandwidth_gbs(device=DEVICE)
    print(f"copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    decode_shapes = [
        (batch, context)
        for batch in (1, 32, 64, 128, 256)
        for context in (1024, 2048, 8192, 32768)
        # batch 64: only where the decode launch rule changes
        if batch != 64 or context == 1024
    ]
    sections = set(args.only.split(","))
    if "decode" not in sections:
        decode_shapes = []
    served = served_tables_in_parallel(
        [(b, c, *placement) for b, c in decode_shapes for placement in SERVED_PLACEMENTS]
        if args.served_tables
        else [],
        BLOCK_SIZE,
    )
    for batch, context in decode_shapes:
        configs = DECODE_DEFAULT
        if args.sweep and (batch, context) in DECODE_SWEEP_SHAPES:
            configs = DECODE_DEFAULT + DECODE_SWEEP + (PARTITION_SWEEP if batch <= 32 else [])
        guarded(bench_decode, batch, context, copy_gbps, configs, served)
    picked = set(args.prefill_variants.split(","))
    for batch, length in ((1, 2048), (1, 8192), (4, 4096), (16, 1024)):
        configs = PREFILL_DEFAULT + [
            (name, config) for name, config in PREFILL_SWEEP if args.sweep or name in picked
        ]
        if "prefill" in sections:
            guarded(bench_prefill, batch, length, configs)
    for name, bench in (
        ("copy_blocks", bench_copy_blocks),
        ("write_kv_cache", bench_write_kv_cache),
        ("layer_ops", bench_layer_ops),
    ):
        if name in sections:
            guarded(bench, copy_gbps)
    table = print_table(copy_gbps)
    header = f"{device_name}, {datetime.date.today().isoformat()}, {versions}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_table.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "kernels_bench.json"), "w") as f:
        json.dump(
            {
                "device": device_name,
                "versions": versions,
                "copy_gbps": copy_gbps,
                "rows": ROWS,
                "failures": FAILURES,
            },
            f,
            indent=1,
        )
    print("\n" + header + "\n" + table)
    print("FAILED CHECKS: " + ", ".join(FAILURES) if FAILURES else "all checks passed")


if __name__ == "__main__":
    main()
