"""Time to first token of a prompt that arrives while a few long requests
decode, with the decode rows of the mixed steps split into parts (the
executor's plan, kernels.plan_decode_row_split) and without.

Run from the repository root:
    python -m benchmarks.mixed_step_latency --model FOLDER [--device cuda]
FOLDER holds the model's config.json (random weights; they are never read),
e.g. benchmarks/models/llama-3-8b. One engine in this process
(engine_harness), a block manager on loopback, the prefill graphs captured
as the executor captures them. --decodes requests of --context prompt tokens
are prefilled and keep decoding; then, round by round, a request of --prompt
new tokens arrives and is stepped until its first token: its chunks share
each step with the long requests' decodes. The two paths alternate over
--rounds rounds on the same engine (each round's prompt new: no prefix-cache
hits); medians. Not a test: figures depend on the machine (docs/kernels.md).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch

from benchmarks.engine_harness import EngineSettings, build_engine
from benchmarks.report import device_name, print_markdown_table
from pagedserve import kernels
from pagedserve.executor.engine import Engine
from pagedserve.executor.prefill_graphs import graph_token_counts
from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.warm_up import CompletionSink

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0}


def _no_split(q_lens, seq_lens, num_kv_heads, device) -> list[int]:
    return kernels.no_split_plan(kernels.split_capacity(num_kv_heads, device))


def _prompt(serial: int, num_tokens: int) -> list[int]:
    return [(serial * 7919 + 13 * t) % 30000 + 5 for t in range(num_tokens)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_token_ms(
    engine: Engine, device: torch.device, prompt: list[int], tag: str
) -> tuple[float, int]:
    """Submit one prompt for one token; step until it has it. (ms, steps)."""
    sink = CompletionSink(1)
    _sync(device)
    started_s = time.perf_counter()
    steps_before = engine.num_steps
    engine.submit(tag, prompt, SamplingOptions(max_tokens=1, **GREEDY), sink)
    engine._drain_inbox(block=False)
    while not sink.done.is_set():
        engine._step()
    if sink.errors:
        raise SystemExit(f"request failed: {sink.errors}")
    return (time.perf_counter() - started_s) * 1e3, engine.num_steps - steps_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder with the model's config.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", help="the model's and the cache's dtype")
    parser.add_argument("--decodes", type=int, default=2, help="long requests decoding")
    parser.add_argument("--context", type=int, default=32768, help="their prompt tokens")
    parser.add_argument("--prompt", type=int, default=8192, help="the arriving prompt's tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-blocks", type=int, default=8192)
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = EngineSettings(num_blocks=args.num_blocks, dtype=getattr(torch, args.dtype))
    engine, resources = build_engine(Path(args.model), device, settings)
    planner = kernels.plan_decode_row_split
    paths = {"split": planner, "no split": _no_split}
    times: dict[str, list[float]] = {path: [] for path in paths}
    steps = 0
    try:
        if device.type == "cuda":  # as the executor captures them at start
            report = engine.runner.capture_prefill_graphs(
                graph_token_counts(settings.max_num_batched_tokens),
                settings.max_num_seqs,
                engine.max_context_tokens,
            )
            print(f"prefill graphs: {report.sizes} in {report.seconds:.1f} s", flush=True)
        long_sink = CompletionSink(args.decodes)
        for index in range(args.decodes):  # decoding through every round
            options = SamplingOptions(max_tokens=args.rounds * 64 + 64, **GREEDY)
            engine.submit(f"long-{index}", _prompt(index, args.context), options, long_sink)
        engine._drain_inbox(block=False)
        started_s = time.perf_counter()
        while any(not seq.token_ids[seq.num_prompt_tokens :] for seq in _long_seqs(engine)):
            engine._step()
        print(
            f"{args.decodes} x {args.context} prefilled in {time.perf_counter() - started_s:.1f} s"
        )
        serials = itertools.count(1000)  # every prompt new
        for round_index in range(-1, args.rounds):  # round -1: warm-up, not counted
            for path, plan in paths.items():
                kernels.plan_decode_row_split = plan
                prompt = _prompt(next(serials), args.prompt)
                ms, steps = first_token_ms(engine, device, prompt, f"{path}-{round_index}")
                if round_index >= 0:
                    times[path].append(ms)
    finally:
        kernels.plan_decode_row_split = planner
        resources.stop()
    print(
        f"\n{device_name(device)}, {args.dtype}, {args.model}: time to first token of "
        f"{args.prompt} new tokens beside {args.decodes} decodes of {args.context}+ tokens "
        f"({steps} steps), medians of {args.rounds} rounds (ms)"
    )
    print_markdown_table(
        ["path", "ms", "all rounds"],
        [
            [path, f"{statistics.median(ms):.1f}", " ".join(f"{t:.1f}" for t in ms)]
            for path, ms in times.items()
        ],
    )


def _long_seqs(engine: Engine):
    return [
        seq
        for request in engine._requests.values()
        if request.request_id.startswith("long-")
        for seq in request.sequences
    ]


if __name__ == "__main__":
    main()
