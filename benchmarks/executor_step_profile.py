"""Where an executor's decode step goes, with decode graphs off and on: wall
time per step, the device's own kernel time and launches (torch.profiler),
optionally the host profile (cProfile), for a model built from a config with
random weights, one process, a block manager on loopback.

Run from the repository root:
    python -m benchmarks.executor_step_profile --model FOLDER [--device cuda]
FOLDER holds the model's config.json (weights are not read). For each batch
size of --num-seqs, the same requests (greedy, or drawn with --temperature and
--top-p, seeded per request) run twice on the same engine, decode eager then
from the decode graphs (captured once at start on CUDA; on the CPU the padded
path runs eagerly), and every output token of the two runs is compared (drawn
tokens may part where the two paths' logits differ in their last bits). Not a
test: figures depend on the machine (see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.engine_harness import EngineSettings, build_engine
from pagedserve.executor import engine as engine_module
from pagedserve.executor import model_runner, step_graphs
from pagedserve.executor.decode_graphs import DecodeGraphs, graph_batch_sizes
from pagedserve.executor.engine import Engine
from pagedserve.executor.request import SamplingOptions

MAX_NUM_SEQS = 256
WARM_STEPS = 5
PROFILED_STEPS = 5
TOP_KERNELS = 15  # the kernels printed, by device time


class _TokenSink:
    """Every output token of every request, by request id."""

    def __init__(self):
        self.tokens: dict[str, list[int]] = defaultdict(list)

    def deliver(self, events) -> None:
        for event in events:
            self.tokens[event.request_id].extend(event.token_ids)


def decode_graphs(engine: Engine, device: torch.device) -> DecodeGraphs:
    """Captured on CUDA (the report printed); on the CPU, uncaptured (the padded path, eager)."""
    runner = engine.runner
    sizes = graph_batch_sizes(MAX_NUM_SEQS)
    if device.type == "cuda":
        report = runner.capture_decode_graphs(sizes, engine.max_context_tokens)
        print(
            f"decode graphs: {len(report.sizes)} sizes captured in {report.seconds:.2f} s, "
            f"graph memory {report.memory_bytes / 2**20:.1f} MiB"
        )
        return runner.decode_graphs
    block_size = runner.block_size
    return DecodeGraphs(runner.model, runner.kv_pool, block_size, sizes, engine.max_context_tokens)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sequences(engine: Engine):
    for request in engine.scheduler.running + list(engine.scheduler.waiting):
        yield from request.sequences


def device_profile(engine: Engine, device: torch.device) -> tuple[float, float]:
    """(device kernel ms, kernel and graph launches) per step, over PROFILED_STEPS steps."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as device_profile:
        for _ in range(PROFILED_STEPS):
            engine._step()
        synchronize(device)
    averages = device_profile.key_averages()
    # Kernels only: the aten operators that launched them carry the same time.
    device_ms = sum(
        event.self_device_time_total
        for event in averages
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    launch_names = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cudaGraphLaunch")
    launches = sum(event.count for event in averages if event.key in launch_names)
    kernels = sorted(
        (e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: e.self_device_time_total,
        reverse=True,
    )
    print(f"top kernels of {PROFILED_STEPS} steps (us per step, calls per step, name):")
    for event in kernels[:TOP_KERNELS]:
        per_step_us = event.self_device_time_total / PROFILED_STEPS
        print(f"  {per_step_us:9.1f} {event.count / PROFILED_STEPS:6.1f}  {event.key[:90]}")
    return device_ms / 1e3 / PROFILED_STEPS, launches / PROFILED_STEPS


class PhaseTimes:
    """Wall time spent inside some functions of the step, no syncs added: a
    phase that waits for the device shows the wait. Phases nest (prepare
    holds flatten and the copies), so they do not add up to the step."""

    def __init__(self, engine: Engine):
        self.seconds: dict[str, float] = defaultdict(float)
        self._patched: list[tuple[object, str, object]] = []
        scheduler, runner = engine.scheduler, engine.runner
        self._wrap(scheduler, "schedule", "schedule (block manager's Step call included)")
        self._wrap(scheduler, "_step_call", "  the block manager's Step call")
        self._wrap(runner, "prepare", "prepare the inputs")
        self._wrap(model_runner, "_flatten", "  flatten the chunks to host lists")
        self._wrap(step_graphs.StepGraphs, "load", "  host lists to the static buffers")
        self._wrap(runner, "run", "run (launch, or eager forward)")
        self._wrap(engine_module, "sample", "sample (waits for the device)")
        self._wrap(engine, "_deliver", "deliver the events")

    def _wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - started

        raw = owner.__dict__.get(name)
        self._patched.append((owner, name, raw))
        setattr(owner, name, staticmethod(timed) if isinstance(raw, staticmethod) else timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def run_workload(engine: Engine, device: torch.device, num_seqs: int, args, tag: str) -> dict:
    """num_seqs requests to the end; times steady decode steps of the whole batch."""
    sink = _TokenSink()
    # Enough new tokens that the batch stays whole through the timed steps,
    # however many steps the prefills (and early decodes beside them) take.
    num_prefill_steps = -(-num_seqs * args.prompt_tokens // 2048) + 2
    max_tokens = num_prefill_steps + WARM_STEPS + 2 * args.steps + 2 * PROFILED_STEPS + 5
    # Greedy by default; with --temperature the tokens are drawn (each request
    # seeded, so that the eager and the graph runs draw alike).
    sampling = SamplingOptions(
        max_tokens=max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=0, seed=0
    )
    for index in range(num_seqs):
        prompt = [(7 * position + index) % 1000 + 5 for position in range(args.prompt_tokens)]
        engine.submit(f"{index}", prompt, dataclasses.replace(sampling, seed=index), sink)
    engine._drain_inbox(block=False)
    if engine.num_active_requests() != num_seqs:
        raise SystemExit("requests were refused (see the log): check --prompt-tokens and the model")
    while any(seq.num_computed_tokens < seq.num_tokens - 1 for seq in _sequences(engine)):
        engine._step()  # the prefills (and any JIT compile)
    for _ in range(WARM_STEPS):
        engine._step()
    synchronize(device)
    if sum(1 for _ in _sequences(engine)) != num_seqs:
        raise SystemExit(f"the batch of {num_seqs} did not stay whole: raise max_tokens")
    started_s = time.perf_counter()
    for _ in range(args.steps):
        engine._step()
    synchronize(device)
    step_ms = (time.perf_counter() - started_s) / args.steps * 1e3
    result = {"step_ms": step_ms}
    if num_seqs == args.profile_seqs:
        result["device_ms"], result["launches"] = device_profile(engine, device)
        if args.phases:
            phases = PhaseTimes(engine)
            started_s = time.perf_counter()
            for _ in range(args.steps):
                engine._step()
            synchronize(device)
            phases.seconds["the step"] = time.perf_counter() - started_s
            phases.restore()
            print(f"phases, {tag}, {num_seqs} sequences (ms per step):")
            for phase, seconds in phases.seconds.items():
                print(f"  {seconds / args.steps * 1e3:8.3f}  {phase}")
        if args.host_profile:
            host = cProfile.Profile()
            host.enable()
            for _ in range(PROFILED_STEPS):
                engine._step()
            host.disable()
            text = io.StringIO()
            stats = pstats.Stats(host, stream=text)
            stats.sort_stats("tottime").print_stats(15)
            # The step's phases: the package's own functions by cumulative time.
            stats.sort_stats("cumulative").print_stats(r"pagedserve/(executor|kernels)", 25)
            print(f"host profile, {tag}, {num_seqs} sequences:\n{text.getvalue()}")
    while engine.num_active_requests() or engine.scheduler.has_work():
        engine._step()
    result["tokens"] = dict(sink.tokens)
    return result


def _first_difference(eager: dict[str, list[int]], graphs: dict[str, list[int]]) -> str:
    """'equal', or where the first request differs (request id, token index)."""
    for request_id, tokens in eager.items():
        other = graphs.get(request_id, [])
        if tokens != other:
            index = next(
                (i for i, (a, b) in enumerate(zip(tokens, other, strict=False)) if a != b),
                min(len(tokens), len(other)),
            )
            return f"differ: request {request_id} at token {index}"
    return "equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="folder with the model's config.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", help="the model's and the cache's dtype")
    parser.add_argument("--num-seqs", default="8,64,200", help="batch sizes, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--profile-seqs", type=int, default=64, help="batch size profiled")
    parser.add_argument("--host-profile", action="store_true", help="also print cProfile")
    parser.add_argument("--phases", action="store_true", help="also time the step's phases")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    settings = EngineSettings(num_blocks=8192, dtype=getattr(torch, args.dtype))
    engine, resources = build_engine(Path(args.model), device, settings)
    try:
        started_s = time.monotonic()
        graphs = decode_graphs(engine, device)
        rows = []
        for num_seqs in (int(n) for n in args.num_seqs.split(",")):
            results = {}
            for mode, decode_graphs_or_none in (("eager", None), ("graphs", graphs)):
                engine.runner.decode_graphs = decode_graphs_or_none
                results[mode] = run_workload(engine, device, num_seqs, args, mode)
            tokens = _first_difference(results["eager"]["tokens"], results["graphs"]["tokens"])
            num_tokens = sum(len(t) for t in results["eager"]["tokens"].values())
            rows.append((num_seqs, results, tokens, num_tokens))
        print(f"all runs, capture included: {time.monotonic() - started_s:.1f} s")
        print(
            "\n| sequences | eager ms/step | graphs ms/step | speed-up | output tokens, eager vs graphs |"
        )
        print("|---|---|---|---|---|")
        for num_seqs, results, tokens, num_tokens in rows:
            eager_ms, graph_ms = results["eager"]["step_ms"], results["graphs"]["step_ms"]
            print(
                f"| {num_seqs} | {eager_ms:.2f} | {graph_ms:.2f} | {eager_ms / graph_ms:.2f}x "
                f"| {tokens} ({num_tokens} a run) |"
            )
        for num_seqs, results, _, _ in rows:
            if "device_ms" in results["eager"]:
                for mode in ("eager", "graphs"):
                    print(
                        f"{mode}, {num_seqs} sequences: device kernels "
                        f"{results[mode]['device_ms']:.2f} ms/step, "
                        f"{results[mode]['launches']:.0f} launches/step"
                    )

    finally:
        resources.stop()


if __name__ == "__main__":
    main()
