"""Block manager benchmarks: in-process allocator throughput and the cost of a
decode Step in process and over gRPC on loopback.

Run from the repository root:  python -m benchmarks.blockmgr_bench [--quick]
Not a test: figures depend on the machine (see docs/blockmgr.md).
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable

# isort: off
import pagedserve  # noqa: F401  before grpc, as in every pagedserve process (common/grpc_core.py)
import grpc

# isort: on

from benchmarks.blockmgr_process import start_blockmgr_process, stop_blockmgr_process
from pagedserve.blockmgr import convert, step_codec
from pagedserve.blockmgr.block_pool import BlockPool
from pagedserve.blockmgr.client import BlockManagerClient
from pagedserve.blockmgr.journal import Journal
from pagedserve.blockmgr.manager import BlockManager
from pagedserve.blockmgr.ops import AllocateOp, AppendBatchOp, AppendOp, FreeOp
from pagedserve.blockmgr.pool_info import DeviceKind, PoolInfo
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.blockmgr.v1 import blockmgr_pb2_grpc as pb_grpc

BLOCK_SIZE_TOKENS = 16
PROMPT_TOKENS = 100


def prompt_for(seq_id: int) -> list[int]:
    """Prompt lengths differ by a token from one sequence to the next, so that
    sequences cross block boundaries at different steps, as in real decoding
    (equal lengths would make every 16th step allocate for all of them)."""
    return list(range(PROMPT_TOKENS + seq_id % BLOCK_SIZE_TOKENS))


def pool_info(num_blocks: int) -> PoolInfo:
    return PoolInfo(DeviceKind.CPU, num_blocks=num_blocks, block_size_tokens=BLOCK_SIZE_TOKENS)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(action: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, GC paused so a collection does not land in one sample."""
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            action()
            samples.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return samples


def bench_block_pool(num_pairs: int) -> float:
    """allocate(1) + release pairs per second on the bare block pool."""
    journal = Journal()
    pool = BlockPool(1024, journal)
    gc.freeze()  # as the service does once a pool is registered
    allocate, release, commit = pool.allocate, pool.release, journal.commit
    start = time.perf_counter()
    for index in range(num_pairs):
        (block,) = allocate(1)
        release(block)
        if index & 1023 == 0:
            commit()  # a step boundary: the journal is emptied
    return num_pairs / (time.perf_counter() - start)


def bench_manager_allocate_free(num_seqs: int, rounds: int, prompt_tokens: int) -> float:
    """Allocate + free ops per second through BlockManager.step, batched like an
    executor does (one step allocating num_seqs prompts, one freeing them)."""
    manager = BlockManager()
    pool_id = manager.register_pool(pool_info(num_seqs * 8))
    ex = manager.register_executor(pool_id).executor_id
    prompt = list(range(prompt_tokens))
    allocates = [AllocateOp(seq_id, prompt, use_prefix_cache=False) for seq_id in range(num_seqs)]
    frees = [FreeOp(seq_id) for seq_id in range(num_seqs)]
    start = time.perf_counter()
    for _ in range(rounds):
        manager.step(ex, allocates)
        manager.step(ex, frees)
    return 2 * num_seqs * rounds / (time.perf_counter() - start)


def decode_setup(manager: BlockManager, num_seqs: int, num_steps: int) -> str:
    blocks_per_seq = -(-(PROMPT_TOKENS + BLOCK_SIZE_TOKENS + num_steps) // BLOCK_SIZE_TOKENS)
    pool_id = manager.register_pool(pool_info(num_seqs * blocks_per_seq + 16))
    ex = manager.register_executor(pool_id, lease_ms=600_000).executor_id
    manager.step(ex, [AllocateOp(seq_id, prompt_for(seq_id)) for seq_id in range(num_seqs)])
    return ex


def decode_request(ex: str, num_seqs: int) -> pb.StepRequest:
    return pb.StepRequest(
        executor_id=ex,
        ops=[pb.BlockOp(append=pb.AppendOp(seq_id=s, token_ids=[7])) for s in range(num_seqs)],
    )


def bench_decode_in_process(num_seqs: int, num_steps: int) -> dict[str, list[float]]:
    """Per-step seconds: core only, and core plus protobuf conversion both ways."""
    manager = BlockManager()
    # Three timed runs of num_steps appends each; the pool must never run out.
    ex = decode_setup(manager, num_seqs, 3 * num_steps + 16)
    ops = [AppendOp(seq_id, [7]) for seq_id in range(num_seqs)]
    core = timed(lambda: manager.step(ex, ops), num_steps)
    request = decode_request(ex, num_seqs)

    payload = request.SerializeToString()

    def with_conversion() -> bytes:
        parsed = pb.StepRequest.FromString(payload)
        tagged = convert.tagged_ops_from_pb(parsed.ops)
        return step_codec.step_result_to_bytes(manager.step_tagged(parsed.executor_id, tagged))

    batch = convert.step_request_to_pb(ex, ops).SerializeToString()

    def packed_with_conversion() -> bytes:
        parsed = pb.StepRequest.FromString(batch)
        tagged = convert.tagged_ops_from_pb(parsed.ops)
        return step_codec.step_result_to_bytes(manager.step_tagged(parsed.executor_id, tagged))

    results = {
        "core": core,
        "core+convert": timed(with_conversion, num_steps),
        "core+convert packed": timed(packed_with_conversion, num_steps),
    }
    pool_id = manager.list_pools()[0].pool_id
    assert manager.get_stats(pool_id).free_blocks > 0, "the pool ran out during the benchmark"
    return results


def bench_decode_grpc(num_seqs: int, num_steps: int) -> dict[str, list[float]]:
    """Per-step seconds over loopback to a server in another process: an empty
    Step (the transport floor), a prebuilt request of one AppendOp per sequence
    on the raw stub, the typed client building the request from one AppendOp
    object per sequence every step (it packs them into one AppendBatchOp), and
    the typed client sent one AppendBatchOp, as the executor sends its decode
    appends."""
    process, target = start_blockmgr_process()
    try:
        with BlockManagerClient(target) as client:
            # Room for every token the timed steps append: running out would
            # turn appends into ok=false results and measure something else.
            blocks_per_seq = -(
                -(PROMPT_TOKENS + BLOCK_SIZE_TOKENS + 2 * num_steps + 40) // BLOCK_SIZE_TOKENS
            )
            pool_id = client.register_pool(pool_info(num_seqs * blocks_per_seq + 64))
            ex = client.register_executor(pool_id, lease_ms=600_000).executor_id
            client.step(ex, [AllocateOp(seq_id, prompt_for(seq_id)) for seq_id in range(num_seqs)])
            channel = grpc.insecure_channel(target)
            step = pb_grpc.BlockManagerStub(channel).Step
            empty = pb.StepRequest(executor_id=ex)
            request = decode_request(ex, num_seqs)
            ops = [AppendOp(seq_id, [7]) for seq_id in range(num_seqs)]
            seq_ids = list(range(num_seqs))
            for _ in range(20):
                step(empty)
            floor = timed(lambda: step(empty), num_steps)
            raw = timed(lambda: step(request), num_steps // 2)
            typed = timed(lambda: client.step(ex, ops), num_steps // 2)
            # What an executor holds each step: the running ids and their new tokens.
            batch = timed(
                lambda: client.step(ex, [AppendBatchOp(seq_ids, [7] * num_seqs)]), num_steps // 2
            )
            channel.close()
            stats = client.get_stats(pool_id)
            assert stats.free_blocks > 0, "the pool ran out during the benchmark"
        return {
            "grpc empty step": floor,
            "grpc raw AppendOps": raw,
            "grpc client (packed)": typed,
            "grpc AppendBatchOp": batch,
        }
    finally:
        stop_blockmgr_process(process)


def walk_stats(manager: BlockManager, pool_id: str) -> tuple[int, int, int, float]:
    """Used, shared and logical blocks and KV utilization by their definition:
    a walk over every block of the pool and of every table (what get_stats did
    before it kept counts)."""
    pool = manager.allocator(pool_id).block_pool
    used = [block for block in pool.blocks if block.ref_count > 0]
    filled: dict[int, int] = {}
    for executor_id in manager.executor_ids():
        for seq in manager.sequences(executor_id).values():
            for index, block in enumerate(seq.block_table):
                in_block = len(seq.token_ids) - index * BLOCK_SIZE_TOKENS
                filled[block.block_id] = min(BLOCK_SIZE_TOKENS, in_block)
    slots = len(used) * BLOCK_SIZE_TOKENS
    return (
        len(used),
        sum(1 for block in used if block.ref_count > 1),
        sum(block.ref_count for block in used),
        sum(filled.values()) / slots,
    )


def bench_stats(num_blocks: int, num_seqs: int, tokens_per_seq: int, repeats: int):
    """get_stats (what a metrics scrape takes the service's lock for) against
    the walk by definition, on a large pool: (get_stats seconds, walk seconds)."""
    manager = BlockManager()
    pool_id = manager.register_pool(pool_info(num_blocks))
    ex = manager.register_executor(pool_id).executor_id
    ops = [
        AllocateOp(s, [s * tokens_per_seq + t for t in range(tokens_per_seq)])
        for s in range(num_seqs)
    ]
    assert all(result.ok for result in manager.step(ex, ops).results)
    stats = manager.get_stats(pool_id)
    by_definition = walk_stats(manager, pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.logical_blocks) == by_definition[:3]
    assert stats.kv_utilization == by_definition[3]
    return (
        timed(lambda: manager.get_stats(pool_id), repeats),
        timed(lambda: walk_stats(manager, pool_id), repeats),
    )


def report(label: str, samples: list[float]) -> str:
    p50 = percentile(samples, 0.50) * 1e3
    p99 = percentile(samples, 0.99) * 1e3
    mean = statistics.fmean(samples) * 1e3
    return f"  {label:<20} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   mean {mean:7.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    print(f"python {platform.python_version()} on {platform.machine()}")
    pairs = bench_block_pool(int(1_000_000 * scale))
    print(f"block pool allocate(1)+release: {pairs:,.0f} pairs/s ({2 * pairs:,.0f} ops/s)")
    for prompt_tokens in (BLOCK_SIZE_TOKENS, PROMPT_TOKENS):
        rate = bench_manager_allocate_free(256, int(100 * scale) or 1, prompt_tokens)
        print(
            f"manager.step allocate+free ({prompt_tokens}-token prompts, 256 per step): "
            f"{rate:,.0f} ops/s"
        )
    num_blocks, num_seqs, tokens = 200_000, 256, 8_000
    stats_s, walk_s = bench_stats(num_blocks, num_seqs, tokens, max(3, int(20 * scale)))
    print(f"get_stats, {num_blocks:,} blocks, {num_seqs} sequences of {tokens:,} tokens:")
    print(report("get_stats", stats_s))
    print(report("walk (definition)", walk_s))
    num_steps = max(50, int(1000 * scale))
    for num_seqs in (256, 1024):
        print(f"decode step, {num_seqs} sequences appending one token ({num_steps} steps):")
        results = {
            **bench_decode_in_process(num_seqs, num_steps),
            **bench_decode_grpc(num_seqs, num_steps),
        }
        for label, samples in results.items():
            print(report(label, samples))
        core = percentile(results["core"], 0.5)
        wire = percentile(results["grpc AppendBatchOp"], 0.5)
        print(
            f"  per step p50: {core * 1e3:.3f} ms in process vs {wire * 1e3:.3f} ms over gRPC "
            f"({wire / core:.1f}x); per sequence {core / num_seqs * 1e6:.2f} us vs "
            f"{wire / num_seqs * 1e6:.2f} us"
        )


if __name__ == "__main__":
    main()
