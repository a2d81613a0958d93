"""Time to first token of an executor's prefill: eager, with the Triton kernels
launched directly and through Triton's own dispatch (PAGEDSERVE_DIRECT_LAUNCH),
and replayed from the prefill graphs (CUDA only).

Run from the repository root:
    python -m benchmarks.prefill_latency --model FOLDER [--device cuda] [--dtype bfloat16]
FOLDER holds the model's config.json (random weights; they are never read).
One engine in this process (engine_harness), a block manager on loopback. Each
workload is a batch of greedy requests of one new token, submitted at once and
stepped until every one has its token: prefill, sampling and the block
manager's Step calls, as a request's first token sees them. The paths
alternate over --rounds rounds on the same engine, each round with prompts no
earlier round sent (no prefix-cache hits); medians. Not a test: figures
depend on the machine's CPU and GPU (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import time
from pathlib import Path

import torch

from benchmarks.engine_harness import EngineSettings, build_engine
from benchmarks.report import device_name, print_markdown_table
from pagedserve.executor.engine import Engine
from pagedserve.executor.prefill_graphs import graph_token_counts
from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.warm_up import CompletionSink
from pagedserve.kernels.direct_launch import DIRECT_LAUNCH_ENV_VAR

# (requests, prompt tokens each)
WORKLOADS = [(1, 16), (1, 128), (1, 1024), (8, 128), (32, 256)]
# Path: (PAGEDSERVE_DIRECT_LAUNCH, replay the prefill graphs)
PATHS = {
    "eager, Triton's dispatch": ("0", False),
    "eager, direct": ("1", False),
    "graphs": ("1", True),
}


def first_token_ms(
    engine: Engine, device: torch.device, prompts: list[list[int]], tag: str
) -> float:
    """Submit every prompt for one token; step until each has its token (what
    a client waits for), then, untimed, until the engine is idle again."""
    one_token = SamplingOptions(max_tokens=1, temperature=0.0, top_p=1.0, top_k=0, seed=0)
    sink = CompletionSink(len(prompts))  # a request of one token ends with it
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started_s = time.perf_counter()
    for index, prompt in enumerate(prompts):
        engine.submit(f"{tag}-{index}", prompt, one_token, sink)
    engine._drain_inbox(block=False)
    while not sink.done.is_set():
        engine._step()
    if sink.errors:
        raise SystemExit(f"requests failed: {sink.errors}")
    elapsed_ms = (time.perf_counter() - started_s) * 1e3  # the token is on the host: synced
    while engine.num_active_requests() or engine.scheduler.has_work():
        engine._step()
    return elapsed_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="folder with the model's config.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="the model's and the cache's dtype")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--host-profile", action="store_true", help="also print cProfile of 1 x 16, direct"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = EngineSettings(num_blocks=8192, dtype=getattr(torch, args.dtype))
    engine, resources = build_engine(Path(args.model), device, settings)
    serial = iter(range(1 << 30))  # makes every prompt new

    def prompts(num_requests: int, num_tokens: int) -> list[list[int]]:
        firsts = [next(serial) for _ in range(num_requests)]
        return [
            [(first * 7919 + 13 * t) % 30000 + 5 for t in range(num_tokens)] for first in firsts
        ]

    prefill_graphs = None
    if device.type == "cuda":  # as the executor captures them at start
        report = engine.runner.capture_prefill_graphs(
            graph_token_counts(settings.max_num_batched_tokens),
            settings.max_num_seqs,
            engine.max_context_tokens,
        )
        prefill_graphs = engine.runner.prefill_graphs
        print(f"prefill graphs: {report.sizes} captured in {report.seconds:.2f} s", flush=True)
    paths = {name: path for name, path in PATHS.items() if prefill_graphs or not path[1]}

    def take(path: str) -> None:
        direct_launch, replay_graphs = paths[path]
        os.environ[DIRECT_LAUNCH_ENV_VAR] = direct_launch
        engine.runner.prefill_graphs = prefill_graphs if replay_graphs else None

    try:
        times = {(w, path): [] for w in WORKLOADS for path in paths}
        for workload in WORKLOADS:  # warm-up: compiles every variant these steps meet
            for path in paths:
                take(path)
                first_token_ms(engine, device, prompts(*workload), "warm")
        for round_index in range(args.rounds):
            for workload in WORKLOADS:
                for path in paths:
                    take(path)
                    ms = first_token_ms(engine, device, prompts(*workload), f"r{round_index}")
                    times[workload, path].append(ms)
        if args.host_profile:
            take("eager, direct")
            host = cProfile.Profile()
            host.enable()
            for _ in range(10):
                first_token_ms(engine, device, prompts(1, 16), "profiled")
            host.disable()
            text = io.StringIO()
            pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(25)
            print(f"host profile, 10 x (1 x 16), eager, direct:\n{text.getvalue()}")
    finally:
        resources.stop()
    print(
        f"\n{device_name(device)}, {args.dtype}: time to first token, "
        f"medians of {args.rounds} rounds (ms)"
    )
    print_markdown_table(
        ["requests x prompt tokens", *paths],
        [
            [f"{n} x {tokens}", *(f"{statistics.median(times[(n, tokens), p]):.2f}" for p in paths)]
            for n, tokens in WORKLOADS
        ],
    )


if __name__ == "__main__":
    main()
