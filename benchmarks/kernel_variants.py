"""Kernel variants on one CUDA GPU: does kernels.precompile leave anything to compile?

Run from the repository root: `python3 benchmarks/kernel_variants.py [--out DIR] [--steps N]`.
(1) kernels.precompile for two model shapes (the default model's 9/3 heads x 64
in float32, and 32/8 heads x 128 in bf16), timed; (2) a randomized sweep of
executor steps per shape (decode at batch 1-256 and contexts 1-8k with a few
up to 32k, mixed prefill batches with and without cached context, cache writes,
copy-on-write copies on a pool of another size), counting the variants Triton
compiles after precompile (target: 0); (3) a few shapes of kernels_bench.py
timed with the kernels as they are (integers not specialized) and with twins
compiled from the same source with Triton's default specialization, alternated
in the same run. The table is printed last and written to --out.
"""

import argparse
import importlib
import json
import os
import random
import sys
import time

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pagedserve import kernels  # noqa: E402

# The modules, not the dispatchers of the same names that pagedserve.kernels exports.
prefill_module = importlib.import_module("pagedserve.kernels.paged_attention")
decode_module = importlib.import_module("pagedserve.kernels.paged_decode_attention")
from pagedserve.kernels.precompile import EXECUTOR_KERNELS  # noqa: E402

DEVICE = torch.device("cuda")
BLOCK_SIZE = 16
SHAPES = {  # name: (num_heads, num_kv_heads, head_dim, dtype)
    "9/3x64 fp32": (9, 3, 64, torch.float32),
    "32/8x128 bf16": (32, 8, 128, torch.bfloat16),
}
POOL_BLOCKS = 8192  # the sweep's cache: block tables point anywhere in it
MAX_BATCHED_TOKENS = 8192  # new tokens per prefill step


def random_decode(rng, num_kv_heads):
    batch = rng.choice([1, 2, 3, 7, 16, 31, 32, 33, 64, 100, 128, 200, 256])
    longest = rng.choice([rng.randint(1, 1024), rng.randint(1, 8192), rng.randint(1, 8192)])
    if rng.random() < 0.1:
        longest, batch = rng.randint(8192, 32768), rng.choice([1, 2, 4])
    seq_lens = [rng.randint(1, longest) for _ in range(batch - 1)] + [longest]
    return seq_lens, [1] * batch


def random_prefill(rng):
    """A mixed step: fresh prompts, chunks after cached context, a few decodes."""
    seq_lens, new_tokens, budget = [], [], rng.randint(1, MAX_BATCHED_TOKENS)
    fresh_only = rng.random() < 0.4
    while budget > 0 and len(seq_lens) < 256:
        kind = "fresh" if fresh_only else rng.choice(["fresh", "chunk", "decode"])
        if kind == "decode":
            context, new = rng.randint(1, 8192), 1
        else:
            new = min(budget, rng.choice([rng.randint(1, 64), rng.randint(1, 2048)]))
            context = 0 if kind == "fresh" else rng.randint(1, 8192 - new)
        seq_lens.append(context + new)
        new_tokens.append(new)
        budget -= new
    return seq_lens, new_tokens


def step_tensors(seq_lens, new_tokens, shape, cache_width_slack):
    num_heads, num_kv_heads, head_dim, dtype = shape
    width = max(triton.cdiv(n, BLOCK_SIZE) for n in seq_lens) + cache_width_slack
    table = torch.randint(0, POOL_BLOCKS, (len(seq_lens), width), dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    num_tokens = sum(new_tokens)
    query = torch.randn(num_tokens, num_heads, head_dim, dtype=dtype, device=DEVICE)
    key = torch.randn(num_tokens, num_kv_heads, head_dim, dtype=dtype, device=DEVICE)
    value = torch.randn_like(key)
    starts = torch.tensor([0] + new_tokens, device=DEVICE).cumsum(0).to(torch.int32)
    slots = torch.randint(0, POOL_BLOCKS * BLOCK_SIZE, (num_tokens,), device=DEVICE)
    return table, lens, query, key, value, starts, slots


def sweep(shape, num_steps, seed) -> tuple[dict, list[str]]:
    """Runs num_steps random steps; returns the variants compiled per kernel
    during the sweep and the new cache keys (for a diagnosis)."""
    num_heads, num_kv_heads, head_dim, dtype = shape
    cache_shape = (POOL_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, dtype=dtype, device=DEVICE)
    value_cache = torch.randn(cache_shape, dtype=dtype, device=DEVICE)
    # [layers, 2, blocks, ...] of a size no scratch pool has (num_blocks 1001)
    pool = torch.randn(3, 2, 1001, BLOCK_SIZE, num_kv_heads, head_dim, dtype=dtype, device=DEVICE)
    before = kernels.compiled_variant_counts(DEVICE)
    keys_before = {
        name: set(k.device_caches[DEVICE.index or 0][0]) for name, k in EXECUTOR_KERNELS.items()
    }
    rng = random.Random(seed)
    scale = head_dim**-0.5
    for step in range(num_steps):
        decode = rng.random() < 0.5
        seq_lens, new_tokens = random_decode(rng, num_kv_heads) if decode else random_prefill(rng)
        slack = rng.choice([0, 0, 0, 1, 3])
        table, lens, query, key, value, starts, slots = step_tensors(
            seq_lens, new_tokens, shape, slack
        )
        kernels.write_kv_cache(key, value, key_cache, value_cache, slots)
        if decode:
            kernels.paged_decode_attention(query, key_cache, value_cache, table, lens, scale)
        else:
            cached = any(n > q for n, q in zip(seq_lens, new_tokens, strict=True))
            kernels.paged_attention(
                query, key, value, key_cache, value_cache, table, starts, lens, scale,
                cached_context=cached,
            )  # fmt: skip
        if step % 4 == 0:
            num_copies = rng.randint(1, 40)
            ids = torch.randperm(1001)[: 2 * num_copies].tolist()
            # Fresh id tensors, as the executor builds them (a slice at an odd
            # offset would be another pointer-alignment variant).
            src = torch.tensor(ids[:num_copies], dtype=torch.int64, device=DEVICE)
            dst = torch.tensor(ids[num_copies:], dtype=torch.int64, device=DEVICE)
            kernels.copy_blocks(pool, src, dst)
    torch.cuda.synchronize()
    after = kernels.compiled_variant_counts(DEVICE)
    new_keys = []
    for name, kernel in EXECUTOR_KERNELS.items():
        for key in set(kernel.device_caches[DEVICE.index or 0][0]) - keys_before[name]:
            new_keys.append(f"{name}: {str(key)[:400]}")
    return {name: after[name] - before[name] for name in after}, new_keys


# ---- timing: the kernels as they are against twins with default specialization


def specialized_twins() -> dict:
    """(module, attribute) -> a JITFunction of the same source without do_not_specialize."""
    twins = {}
    for module, name in (
        (prefill_module, "_paged_attention_kernel"),
        (decode_module, "_decode_partition_kernel"),
        (decode_module, "_decode_merge_kernel"),
    ):
        twins[(module, name)] = triton.jit(getattr(module, name).fn)
    return twins


class Swapped:
    """Within the block, the launchers call the twins."""

    def __init__(self, twins):
        self.twins, self.saved = twins, {}

    def __enter__(self):
        for (module, name), twin in self.twins.items():
            self.saved[(module, name)] = getattr(module, name)
            setattr(module, name, twin)

    def __exit__(self, *exc):
        for (module, name), kernel in self.saved.items():
            setattr(module, name, kernel)


def timing_cases():
    """(name, fn) at the shape of kernels_bench.py (32/8 heads x 128, bf16)."""
    num_heads, num_kv_heads, head_dim, dtype = SHAPES["32/8x128 bf16"]
    scale = head_dim**-0.5
    cases = []

    def paged(seq_lens):
        blocks = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
        num_blocks = sum(blocks)
        shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
        k = torch.randn(shape, dtype=dtype, device=DEVICE)
        v = torch.randn(shape, dtype=dtype, device=DEVICE)
        order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
        table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEVICE)
        for seq, ids in enumerate(order.split(blocks)):
            table[seq, : len(ids)] = ids
        return k, v, table, torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)

    for batch, context in ((32, 1024), (64, 1024), (128, 1024), (32, 8192), (1, 32768)):
        k, v, table, lens = paged([context] * batch)
        q = torch.randn(batch, num_heads, head_dim, dtype=dtype, device=DEVICE)

        def decode(q=q, k=k, v=v, table=table, lens=lens):
            return decode_module.paged_decode_attention_triton(q, k, v, table, lens, scale)

        cases.append((f"decode b{batch} x {context}", decode))
    for batch, length, context in ((16, 1024, 0), (4, 4096, 0), (4, 512, 1536)):
        k, v, table, lens = paged([length + context] * batch)
        tokens = batch * length
        q = torch.randn(tokens, num_heads, head_dim, dtype=dtype, device=DEVICE)
        new_k = torch.randn(tokens, num_kv_heads, head_dim, dtype=dtype, device=DEVICE)
        new_v = torch.randn_like(new_k)
        starts = torch.arange(0, tokens + 1, length, dtype=torch.int32, device=DEVICE)

        def prefill(q=q, k=k, v=v, nk=new_k, nv=new_v, t=table, s=starts, n=lens, c=context):
            return prefill_module.paged_attention_triton(
                q, nk, nv, k, v, t, s, n, scale, cached_context=c > 0
            )

        name = f"prefill b{batch} x {length}" + (f" after {context}" if context else "")
        cases.append((name, prefill))
    return cases


def time_before_after(rounds: int, only: str | None = None) -> list[dict]:
    twins = specialized_twins()
    rows = []
    for name, fn in timing_cases():
        if only and only not in name:
            continue
        now_ms, old_ms = [], []
        for _ in range(rounds):  # alternate, so drift hits both alike
            now_ms.append(do_bench(fn, warmup=25, rep=100, return_mode="median"))
            with Swapped(twins):
                old_ms.append(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        rows.append({"case": name, "unspecialized_ms": now_ms, "specialized_ms": old_ms})
        print(f"{name}: now {now_ms} old {old_ms}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--steps", type=int, default=300, help="random steps per shape")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per timed shape")
    parser.add_argument("--only-timing", default=None, help="time only cases naming this")
    args = parser.parse_args()
    card = torch.cuda.get_device_name(DEVICE)
    print(f"{card}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    results = {"card": card, "shapes": {}}
    if args.only_timing is not None:
        for row in time_before_after(args.rounds, args.only_timing):
            now, old = sorted(row["unspecialized_ms"]), sorted(row["specialized_ms"])
            print(f"{row['case']}: not specialized min {now[0]:.4f} median {now[len(now) // 2]:.4f}"
                  f" / specialized min {old[0]:.4f} median {old[len(old) // 2]:.4f}")  # fmt: skip
        return
    for shape_name, shape in SHAPES.items():
        num_heads, num_kv_heads, head_dim, dtype = shape
        started = time.monotonic()
        launches = kernels.precompile(num_heads, num_kv_heads, head_dim, dtype, BLOCK_SIZE, DEVICE)
        precompile_s = time.monotonic() - started
        variants = sum(kernels.compiled_variant_counts(DEVICE).values())
        started = time.monotonic()
        compiled, new_keys = sweep(shape, args.steps, seed=len(shape_name))
        sweep_s = time.monotonic() - started
        results["shapes"][shape_name] = {
            "precompile_s": precompile_s, "launches": launches, "variants_total": variants,
            "sweep_steps": args.steps, "sweep_s": sweep_s, "compiled_after": compiled,
            "new_keys": new_keys,
        }  # fmt: skip
        print(f"{shape_name}: precompile {precompile_s:.1f} s, {launches} launches; sweep "
              f"{sweep_s:.1f} s, compiled after precompile {compiled}", flush=True)  # fmt: skip
        for line in new_keys:
            print("  new:", line, flush=True)
    results["timing"] = time_before_after(args.rounds)
    lines = [
        f"## {card}",
        "",
        "| shape | precompile s | launches | variants | sweep steps | compiled after |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["shapes"].items():
        after = sum(row["compiled_after"].values())
        lines.append(
            f"| {name} | {row['precompile_s']:.1f} | {row['launches']} | {row['variants_total']} | {row['sweep_steps']} | {after} |"
        )
    lines += [
        "",
        "| case | not specialized ms (median of rounds) | specialized ms | ratio |",
        "|---|---|---|---|",
    ]
    for row in results["timing"]:
        now = sorted(row["unspecialized_ms"])[len(row["unspecialized_ms"]) // 2]
        old = sorted(row["specialized_ms"])[len(row["specialized_ms"]) // 2]
        lines.append(f"| {row['case']} | {now:.4f} | {old:.4f} | {now / old:.3f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernel_variants.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "kernel_variants.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
