"""Where an executor's decode step goes: wall time per step, the host profile
(cProfile) and the device's own kernel time (torch.profiler), for a model built
from a config with random weights, one process, a block manager on loopback.

Run from the repository root:
    python -m benchmarks.executor_step_profile --model FOLDER [--device cuda]
FOLDER holds the model's config.json (weights are not read). Not a test:
figures depend on the machine (see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.service import serve
from pagedserve.executor.blockmgr_link import BlockManagerLink
from pagedserve.executor.engine import Engine
from pagedserve.executor.kv_pool import PoolSpec, create_pool
from pagedserve.executor.model_config import load_model_config
from pagedserve.executor.model_loader import load_model
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.scheduler import Scheduler, SchedulerConfig

BLOCK_SIZE_TOKENS = 16


class _DiscardingSink:
    def deliver(self, events) -> None:
        pass


def build_engine(model_folder: Path, device: torch.device, num_blocks: int):
    """(engine, block manager server); keep the server referenced while the engine runs."""
    config = load_model_config(model_folder)
    blockmgr = serve(BlockManagerConfig(port=0))
    spec = PoolSpec(
        config.num_layers,
        num_blocks,
        BLOCK_SIZE_TOKENS,
        config.num_kv_heads,
        config.head_dim,
        torch.float32,
    )
    pool = create_pool(spec, device)
    link = BlockManagerLink(f"127.0.0.1:{blockmgr.port}")
    pool_id = link.register_pool(spec, device.type, 0, pool.handle, "profile")
    registered = link.register_executor(pool_id)
    link.start_heartbeat(registered.executor_id, 1.0)
    model = load_model(config, None, device, torch.float32)
    scheduler = Scheduler(
        SchedulerConfig(256, 2048, BLOCK_SIZE_TOKENS, num_blocks, num_blocks // 100),
        registered.executor_id,
        link.step,
    )
    runner = ModelRunner(model, pool.tensor, BLOCK_SIZE_TOKENS)
    return Engine(scheduler, runner, config.vocab_size, config.max_context_tokens), blockmgr


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="folder with the model's config.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    engine, _blockmgr = build_engine(Path(args.model), device, num_blocks=8192)
    # Enough new tokens for every step below, so that the batch stays whole.
    max_tokens = 5 + 2 * args.steps + 20
    greedy = SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0)
    for index in range(args.num_seqs):
        prompt = [(7 * position + index) % 1000 + 5 for position in range(args.prompt_tokens)]
        engine.submit(f"profile-{index}", prompt, greedy, _DiscardingSink())
    engine._drain_inbox(block=False)
    if engine.num_active_requests() != args.num_seqs:
        raise SystemExit("requests were refused (see the log): check --prompt-tokens and the model")
    started_s = time.monotonic()
    while any(seq.num_computed_tokens < seq.num_tokens - 1 for seq in _sequences(engine)):
        engine._step()  # the prefills (and any JIT compile)
    for _ in range(5):
        engine._step()
    synchronize(device)
    print(f"prefill and warm steps: {time.monotonic() - started_s:.1f} s")
    num_running = sum(1 for _ in _sequences(engine))
    if num_running != args.num_seqs:
        raise SystemExit(f"{num_running} sequences running, expected {args.num_seqs}")

    started_s = time.perf_counter()
    for _ in range(args.steps):
        engine._step()
    synchronize(device)
    step_ms = (time.perf_counter() - started_s) / args.steps * 1e3

    host = cProfile.Profile()
    host.enable()
    for _ in range(args.steps):
        engine._step()
    host.disable()
    text = io.StringIO()
    pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(15)
    print(text.getvalue())

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    num_profiled = 10
    with profile(activities=activities) as device_profile:
        for _ in range(num_profiled):
            engine._step()
        synchronize(device)
    averages = device_profile.key_averages()
    print(averages.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=50))
    # Kernels only: the aten operators that launched them carry the same time.
    device_ms = (
        sum(
            event.self_device_time_total
            for event in averages
            if event.device_type == torch.autograd.DeviceType.CUDA
        )
        / 1e3
        / num_profiled
    )
    launches = sum(
        event.count
        for event in averages
        if event.key in ("cudaLaunchKernel", "cudaLaunchKernelExC")
    )
    print(
        f"decode step, {args.num_seqs} sequences: {step_ms:.2f} ms wall; "
        f"device kernels {device_ms:.2f} ms; {launches / num_profiled:.0f} kernel launches"
    )


def _sequences(engine: Engine):
    for request in engine.scheduler.running + list(engine.scheduler.waiting):
        yield from request.sequences


if __name__ == "__main__":
    main()
