"""Block tables as the block manager hands them out while serving, for the
decode benchmark, and how consecutive they are.

The kernel benchmark's tables are shuffled: every block of a sequence lies
anywhere in the pool. Served tables come from the real BlockManager (in
process, no gRPC), driven through a continuous-batching workload: up to
`batch` sequences run at once, each admitted with a prompt of 1/8 to 1/2 of
`context` tokens and grown a block's worth of tokens per step to exactly
`context`; finished sequences are freed and replaced, and every computed
block is registered in the prefix cache, so freed blocks stay cached and are
evicted as they would be. After 2 x batch sequences have finished, the next
`batch` admitted are the measured ones; admission stops, and the tables are
taken when all of them reach `context` (the others finishing meanwhile).
The pool is 1.25 times the measured batch's blocks.

Run alone for the statistics: `python3 -m benchmarks.served_tables` (CPU).
"""

from __future__ import annotations

import argparse
import os
import random
from concurrent.futures import ProcessPoolExecutor

from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS, DEFAULT_GROUP_EXTENTS
from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.ops import AllocateOp, AppendOp, ComputedOp, FreeOp
from pagedserve.blockmgr.pool_info import DeviceKind, PoolInfo
from pagedserve.blockmgr.stats import consecutive_block_ratio

POOL_HEADROOM = 1.25
WARM_UP_SEQUENCES_PER_SLOT = 2


def served_block_tables(
    batch: int,
    context: int,
    block_size: int,
    extent_blocks: int,
    seed: int = 0,
    group_extents: int = DEFAULT_GROUP_EXTENTS,
) -> tuple[list[list[int]], int]:
    """Block tables of `batch` sequences of `context` tokens each, and the pool's size."""
    rng = random.Random(seed)
    blocks_per_seq = -(-context // block_size)
    num_blocks = int(batch * blocks_per_seq * POOL_HEADROOM) + 1
    # A stopped clock: the lease never runs out however long the workload takes.
    manager = BlockManager(
        clock=lambda: 0.0, extent_blocks=extent_blocks, group_extents=group_extents
    )
    pool_id = manager.register_pool(
        PoolInfo(DeviceKind.CPU, num_blocks=num_blocks, block_size_tokens=block_size)
    )
    executor_id = manager.register_executor(pool_id).executor_id
    lengths: dict[int, int] = {}  # running sequence -> tokens
    measured: list[int] = []
    next_seq_id = 0
    num_finished = 0
    warm_up = WARM_UP_SEQUENCES_PER_SLOT * batch
    while len(measured) < batch or any(lengths[seq_id] < context for seq_id in measured):
        ops: list = []
        admitting = len(measured) < batch
        while admitting and len(lengths) < batch:
            prompt = rng.randint(max(1, context // 8), max(1, context // 2))
            ops.append(AllocateOp(next_seq_id, [rng.randrange(1 << 20) for _ in range(prompt)]))
            lengths[next_seq_id] = prompt
            if num_finished >= warm_up:
                measured.append(next_seq_id)
                admitting = len(measured) < batch
            next_seq_id += 1
        for seq_id, length in list(lengths.items()):
            ops.append(ComputedOp(seq_id, length))
            if length == context:
                if seq_id not in measured:
                    ops.append(FreeOp(seq_id))
                    del lengths[seq_id]
                    num_finished += 1
                continue
            grown = min(block_size, context - length)
            ops.append(AppendOp(seq_id, [rng.randrange(1 << 20) for _ in range(grown)]))
            lengths[seq_id] = length + grown
        step = manager.step(executor_id, ops)
        assert all(result.ok for result in step.results), "the pool is sized never to run short"
    sequences = manager.sequences(executor_id)
    return [sequences[seq_id].block_ids() for seq_id in measured], num_blocks


def served_tables_in_parallel(
    keys: list[tuple[int, int, int, int]], block_size: int
) -> dict[tuple[int, int, int, int], tuple[list[list[int]], int]]:
    """served_block_tables of each (batch, context, extent_blocks,
    group_extents), on the host's cores."""
    if not keys:
        return {}
    with ProcessPoolExecutor(max_workers=min(len(keys), os.cpu_count() or 1)) as pool:
        futures = {
            key: pool.submit(
                served_block_tables, key[0], key[1], block_size, key[2], group_extents=key[3]
            )
            for key in keys
        }
        return {key: future.result() for key, future in futures.items()}


def mean_run_blocks(tables: list[list[int]]) -> float:
    """Mean length of the runs of consecutive block ids in the tables."""
    runs = sum(
        1 + sum(1 for a, b in zip(table, table[1:], strict=False) if b != a + 1) for table in tables
    )
    return sum(len(table) for table in tables) / max(1, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--context", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument(
        "--extent-blocks", type=int, nargs="+", default=[1, 16, DEFAULT_EXTENT_BLOCKS]
    )
    parser.add_argument("--group-extents", type=int, nargs="+", default=[1, DEFAULT_GROUP_EXTENTS])
    args = parser.parse_args()
    print(
        "| batch x context | extent blocks | group extents | pool blocks "
        "| consecutive pairs | mean run blocks |"
    )
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        for context in args.context:
            for extent in args.extent_blocks:
                for group in args.group_extents:
                    tables, num_blocks = served_block_tables(
                        batch, context, 16, extent, group_extents=group
                    )
                    print(
                        f"| {batch} x {context} | {extent} | {group} | {num_blocks} | "
                        f"{consecutive_block_ratio(tables):.3f} | {mean_run_blocks(tables):.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
