"""Output tokens/s of an executor's engine against HF transformers `generate`,
same model shape, same requests, same GPU, same run.

Run from the repository root on a CUDA machine:
    python3 -m benchmarks.throughput_vs_hf [--model benchmarks/models/qwen3-0.6b]

The workload is nano-vllm's benchmark: --num-requests requests (256), prompt
and output lengths each uniform in 100..1,024, prompt token ids uniform in
0..10,000, seed 0, every output forced to its length (no end-of-sequence).
The model is built from FOLDER/config.json with random weights, bf16.

- HF: `generate` on all requests as one left-padded static batch (HF's best
  case; --hf-batch-size splits it where memory is short), greedy, every row
  to its batch's longest output; the figure counts only the tokens the
  requests asked for.
- pagedserve: the executor's engine in this process (scheduler, model with the
  paged KV pool, sampler; block manager on loopback gRPC; decode steps from
  CUDA graphs, kernels precompiled and warmed up first), all requests
  submitted at once. No gateway: tokenization and streaming are not timed.
Not a test: figures depend on the machine (docs/gpu.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import time
from pathlib import Path

import torch

from benchmarks.engine_harness import EngineSettings, build_engine, pool_spec
from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS
from pagedserve.executor.kv_pool import create_pool
from pagedserve.executor.model_config import ModelConfig, load_model_config
from pagedserve.executor.request import SamplingOptions
from pagedserve.executor.service import capture_cuda_graphs
from pagedserve.executor.warm_up import CompletionSink, warm_up

log = logging.getLogger("benchmarks.throughput_vs_hf")
# Bytes of the KV pool: leave room for the model and activations.
POOL_FRACTION_OF_FREE = 0.6


def workload(num_requests: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, nano-vllm's recipe."""
    rng = random.Random(seed)
    prompts = [
        [rng.randint(0, 10_000) for _ in range(rng.randint(100, 1024))] for _ in range(num_requests)
    ]
    output_lens = [rng.randint(100, 1024) for _ in range(num_requests)]
    return list(zip(prompts, output_lens, strict=True))


def pool_blocks(config: ModelConfig, args, device: torch.device) -> int:
    """KV blocks in POOL_FRACTION_OF_FREE of the device's free memory now."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info()
    else:  # a smoke run
        free_bytes = 1 << 30
    bytes_per_block = pool_spec(config, engine_settings(args, 1, 1)).bytes_per_block
    return int(free_bytes * POOL_FRACTION_OF_FREE) // bytes_per_block


def engine_settings(args, num_blocks: int, extent_blocks: int) -> EngineSettings:
    return EngineSettings(
        num_blocks=num_blocks,
        dtype=torch.bfloat16,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        extent_blocks=extent_blocks,
    )


def run_pagedserve(model_folder: Path, requests, args, settings, pool) -> dict:
    device = torch.device(args.device)
    num_blocks, extent_blocks = settings.num_blocks, settings.extent_blocks
    engine, resources = build_engine(model_folder, device, settings, pool)
    engine.start()  # the step loop's own thread, as in the executor service
    warm_up_s = warm_up(engine, timeout_s=600)
    started_s = time.monotonic()
    # as the executor does
    capture_cuda_graphs(engine, args.max_num_seqs, args.max_num_batched_tokens, log)
    capture_s = time.monotonic() - started_s
    counter = CompletionSink(len(requests))
    synchronize(device)
    started_s = time.perf_counter()
    for index, (prompt, output_len) in enumerate(requests):
        options = SamplingOptions(
            max_tokens=output_len, temperature=0.0, top_p=1.0, top_k=0, seed=0
        )
        engine.submit(str(index), prompt, options, counter)
    if not counter.done.wait(args.timeout_s):
        raise SystemExit(f"{counter.num_requests} requests unfinished after {args.timeout_s} s")
    seconds = time.perf_counter() - started_s
    if counter.errors:
        raise SystemExit("requests failed: " + "; ".join(counter.errors[:5]))
    produced = counter.num_tokens
    expected = sum(output_len for _, output_len in requests)
    result = {
        "extent_blocks": extent_blocks,
        "num_blocks": num_blocks,
        "warm_up_s": round(warm_up_s, 2),
        "graph_capture_s": round(capture_s, 2),
        "output_tokens": produced,
        "expected_tokens": expected,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(produced / seconds, 1),
        "preemptions": engine.scheduler.num_preemptions_total,
    }
    engine.stop()
    del engine
    resources.stop()
    gc.collect()  # the engine's graphs and pool, before the next run sizes its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_hf(model_folder: Path, requests, device: torch.device, batch_size: int) -> dict:
    """HF generate over the requests in static batches of batch_size (one
    batch when it holds them all), left-padded, every row to the batch's
    longest output; counts only the tokens the requests asked for."""
    import transformers

    if device.type == "cuda":
        # HF's cache grows step by step: without expandable segments a 256-row
        # batch ran out of memory with 18 GB reserved but unallocated. Only
        # for this phase: the KV pool is shared through CUDA IPC, which
        # expandable segments do not support.
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    config = transformers.AutoConfig.from_pretrained(model_folder)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to(device).eval()
    pad = 0
    generation = dict(do_sample=False, pad_token_id=pad)

    def padded(batch):
        longest = max(len(prompt) for prompt, _ in batch)
        input_ids = torch.full((len(batch), longest), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (prompt, _) in enumerate(batch):  # left padding
            input_ids[row, longest - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, longest - len(prompt) :] = 1
        return input_ids.to(device), attention_mask.to(device)

    with torch.inference_mode():
        input_ids, attention_mask = padded(requests[:2])
        model.generate(  # warm-up: CUDA context, cuBLAS
            input_ids=input_ids, attention_mask=attention_mask,
            max_new_tokens=8, min_new_tokens=8, **generation,
        )  # fmt: skip
        synchronize(device)
        started_s = time.perf_counter()
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            input_ids, attention_mask = padded(batch)
            longest_output = max(output_len for _, output_len in batch)
            # min_new_tokens: no end-of-sequence before the longest output.
            model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=longest_output, min_new_tokens=longest_output, **generation,
            )  # fmt: skip
        synchronize(device)
    seconds = time.perf_counter() - started_s
    asked = sum(output_len for _, output_len in requests)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.memory._set_allocator_settings("expandable_segments:False")
    return {
        "batch_size": batch_size,
        "output_tokens_counted": asked,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(asked / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="benchmarks/models/qwen3-0.6b")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument(
        "--hf-batch-size", type=int, default=0, help="HF's static batch (0: all requests)"
    )
    parser.add_argument("--timeout-s", type=float, default=480.0, help="for pagedserve's run")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the script")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument(
        "--extent-blocks",
        type=int,
        nargs="+",
        default=[DEFAULT_EXTENT_BLOCKS],
        help="the block manager's placement runs; several: one engine run each, in turn",
    )
    parser.add_argument("--rounds", type=int, default=1, help="engine runs per extent size")
    args = parser.parse_args()
    model_folder = Path(args.model)
    requests = workload(args.num_requests)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}; torch {torch.__version__}", flush=True)
    results = {"device": name, "torch": torch.__version__}
    results["workload"] = {
        "requests": len(requests),
        "prompt_tokens": sum(len(p) for p, _ in requests),
        "output_tokens": sum(n for _, n in requests),
    }
    # HF first: its padded cache needs the most memory.
    if not args.skip_hf:
        try:
            results["hf"] = run_hf(
                model_folder, requests, device, args.hf_batch_size or len(requests)
            )
            print("hf:", results["hf"], flush=True)
        except torch.OutOfMemoryError as error:  # recorded; pagedserve still runs
            results["hf_error"] = str(error).splitlines()[0]
            print("hf ran out of memory:", results["hf_error"], flush=True)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.memory._set_allocator_settings("expandable_segments:False")
    # Interleaved, so that drift hits every extent size alike; one pool size for all.
    config = load_model_config(model_folder)
    num_blocks = pool_blocks(config, args, device)
    pool = create_pool(pool_spec(config, engine_settings(args, num_blocks, 1)), device)
    runs = results["pagedserve_runs"] = []
    try:
        for _ in range(args.rounds):
            for extent_blocks in args.extent_blocks:
                settings = engine_settings(args, num_blocks, extent_blocks)
                runs.append(run_pagedserve(model_folder, requests, args, settings, pool))
                print("pagedserve:", runs[-1], flush=True)
    finally:
        pool.release()  # the shared-memory file of a CPU pool
    results["pagedserve"] = runs[0]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n| system | output tokens/s | seconds |\n|---|---|---|")
    if "hf" in results:
        print(f"| hf | {results['hf']['tokens_per_s']:,.1f} | {results['hf']['seconds']} |")
    for r in runs:
        name = f"pagedserve, extents of {r['extent_blocks']}"
        print(f"| {name} | {r['tokens_per_s']:,.1f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
