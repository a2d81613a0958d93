"""Prefix-cache hit rate under each placement: what placement costs the cache.

Placement (blockmgr/extents.py) decides which free block a sequence takes,
and so which cached block is evicted. Plain least-recently-used order
(extents of one block) evicts the block freed longest ago; extents evict a
whole extent at a time, by its most recently freed block; groups let long
runs take open groups and keep new sequences out of them. This drives the
real BlockManager (in process, no gRPC) through a workload whose hits depend
on what eviction keeps, and prints the hit rate of each placement.

Workload: up to `--batch` sequences run at once; each prompt is one of
`--prefixes` shared prefixes (256 to 2,048 tokens, drawn with Zipf
popularity) and a suffix of its own (16 to 256 tokens); each sequence then
grows a block of tokens per step for 64 to `--max-output` tokens and is
freed. Every computed block is registered, so freed blocks stay cached until
evicted. The pool holds about a third of all prefixes' blocks. Hit rate =
prompt tokens found in the cache over prompt tokens looked up, after
`--warm-up` requests, over the next `--requests`.

Run: `python3 -m benchmarks.prefix_hits` (CPU).
"""

from __future__ import annotations

import argparse
import os
import random
from concurrent.futures import ProcessPoolExecutor

from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.ops import AllocateOp, AppendOp, ComputedOp, FreeOp
from pagedserve.blockmgr.pool_info import DeviceKind, PoolInfo

BLOCK_SIZE = 16
ZIPF_EXPONENT = 1.1


def prefix_hit_rate(
    extent_blocks: int,
    group_extents: int,
    *,
    seed: int,
    batch: int,
    num_prefixes: int,
    max_output: int,
    warm_up: int,
    requests: int,
) -> float:
    """The prefix cache's hit rate over `requests` after `warm_up` (module docstring)."""
    rng = random.Random(seed)
    prefixes = [
        [rng.randrange(1 << 20) for _ in range(rng.randint(256, 2048))] for _ in range(num_prefixes)
    ]
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(num_prefixes)]
    prefix_blocks = sum(len(prefix) for prefix in prefixes) // BLOCK_SIZE
    running_blocks = batch * (2048 + 256 + max_output) // BLOCK_SIZE
    num_blocks = prefix_blocks // 3 + running_blocks
    manager = BlockManager(
        clock=lambda: 0.0, extent_blocks=extent_blocks, group_extents=group_extents
    )
    pool_id = manager.register_pool(
        PoolInfo(DeviceKind.CPU, num_blocks=num_blocks, block_size_tokens=BLOCK_SIZE)
    )
    executor_id = manager.register_executor(pool_id).executor_id
    allocator = manager.allocator(pool_id)
    remaining: dict[int, int] = {}  # running sequence -> tokens still to grow
    lengths: dict[int, int] = {}
    admitted = 0
    counted_from = None
    while admitted < warm_up + requests or remaining:
        ops: list = []
        while len(remaining) < batch and admitted < warm_up + requests:
            if admitted == warm_up:
                counted_from = (allocator.prompt_tokens_looked_up, allocator.prompt_tokens_hit)
            prefix = rng.choices(prefixes, weights)[0]
            prompt = prefix + [rng.randrange(1 << 20) for _ in range(rng.randint(16, 256))]
            ops.append(AllocateOp(admitted, prompt))
            remaining[admitted] = rng.randint(64, max_output)
            lengths[admitted] = len(prompt)
            admitted += 1
        for seq_id in list(remaining):
            ops.append(ComputedOp(seq_id, lengths[seq_id]))
            if remaining[seq_id] == 0:
                ops.append(FreeOp(seq_id))
                del remaining[seq_id], lengths[seq_id]
                continue
            grown = min(BLOCK_SIZE, remaining[seq_id])
            ops.append(AppendOp(seq_id, [rng.randrange(1 << 20) for _ in range(grown)]))
            remaining[seq_id] -= grown
            lengths[seq_id] += grown
        step = manager.step(executor_id, ops)
        assert all(result.ok for result in step.results), "the pool is sized never to run short"
    looked_up = allocator.prompt_tokens_looked_up - counted_from[0]
    return (allocator.prompt_tokens_hit - counted_from[1]) / looked_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prefixes", type=int, default=256)
    parser.add_argument("--max-output", type=int, default=2048)
    parser.add_argument("--warm-up", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--placements",
        default="1x1,16x1,64x1,64x4,64x8,64x16",
        help="extent blocks x group extents, comma-separated (the default: 64x8)",
    )
    args = parser.parse_args()
    placements = [tuple(int(n) for n in p.split("x")) for p in args.placements.split(",")]
    workload = dict(
        batch=args.batch,
        num_prefixes=args.prefixes,
        max_output=args.max_output,
        warm_up=args.warm_up,
        requests=args.requests,
    )
    jobs = [(placement, seed) for placement in placements for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        futures = {
            job: pool.submit(prefix_hit_rate, *job[0], seed=job[1], **workload) for job in jobs
        }
        rates = {job: future.result() for job, future in futures.items()}
    print("| extent blocks | group extents | hit rate by seed |")
    print("|---|---|---|")
    for placement in placements:
        by_seed = ", ".join(f"{rates[placement, seed]:.3f}" for seed in range(args.seeds))
        print(f"| {placement[0]} | {placement[1]} | {by_seed} |")


if __name__ == "__main__":
    main()
