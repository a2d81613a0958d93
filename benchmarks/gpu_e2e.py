"""The whole stack on a GPU: CUDA IPC pool, two executors, float32 greedy tokens equal to the CPU's.

Two modes:
  --write-expected FILE   (on the CPU) greedy continuations of the prompts by HF
                          transformers in float32, the reference;
  --expected FILE         (on the GPU) starts `pagedserve up --device cuda --dtype
                          float32 --num-executors 2`, checks every greedy output
                          against FILE, then measures output tokens/s of a batch of
                          concurrent requests beside HF generate on the same GPU.
Prints a short table last and writes the figures as JSON to --out.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import grpc

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "PagedAttention stores the key-value cache in fixed-size blocks, so that",
    "Once upon a time, in a small village at the edge of a great forest,",
    "Question: What is the boiling point of water at sea level? Answer:",
    "1, 2, 3, 4, 5,",
]
MAX_NEW_TOKENS = 32


def write_expected(model: str, path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagedserve.executor.model_store import resolve_model_path

    folder = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        with torch.inference_mode():
            out = hf.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
            )
        cases.append({"prompt_token_ids": ids, "expected": out[0, len(ids) :].tolist()})
    path.write_text(json.dumps(cases))
    print(f"wrote {len(cases)} cases to {path}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stack(
    model: str, extra: list[str], environment: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str, str]:
    gateway, blockmgr = _free_port(), _free_port()
    command = [
        sys.executable, "-m", "pagedserve.cli", "up", "--device", "cuda", "--model", model,
        "--port", str(gateway), "--blockmgr-port", str(blockmgr), "--kvpool-port", str(_free_port()),
        "--executor-port", str(_free_port()), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, **(environment or {})})
    deadline = time.monotonic() + 600
    with grpc.insecure_channel(f"127.0.0.1:{gateway}") as channel:
        ready = grpc.channel_ready_future(channel)
        while True:  # fail as soon as `up` exits (a service failed to start)
            try:
                ready.result(timeout=1.0)
                break
            except grpc.FutureTimeoutError:
                if process.poll() is not None:
                    raise SystemExit(f"pagedserve up exited with {process.returncode}") from None
                if time.monotonic() > deadline:
                    process.terminate()
                    raise SystemExit("the stack did not come up in 600 s") from None
    return process, f"127.0.0.1:{gateway}", f"127.0.0.1:{blockmgr}"


def greedy(stub, ids: list[int], max_tokens: int, ignore_eos: bool = False) -> list[int]:
    from pagedserve.v1 import generation_pb2 as pb

    request = pb.GenerateRequest(
        prompt_token_ids=pb.TokenIds(ids=ids),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos),
    )
    return list(stub.Generate(request, timeout=600).completions[0].token_ids)


def throughput_workload(
    num_requests: int, vocab_size: int, seed: int = 0
) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(100, vocab_size) for _ in range(rng.randint(128, 512))], 128)
        for _ in range(num_requests)
    ]


def measure_pagedserve(stub, workload) -> tuple[int, float]:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(workload)) as pool:
        outputs = list(
            pool.map(lambda item: greedy(stub, item[0], item[1], ignore_eos=True), workload)
        )
    return sum(len(o) for o in outputs), time.perf_counter() - started


def measure_hf(folder: Path, workload, dtype) -> tuple[int, float]:
    """HF generate, the whole workload as one left-padded static batch (its best case)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda().eval()
    longest = max(len(ids) for ids, _ in workload)
    input_ids = torch.zeros(len(workload), longest, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, (ids, _) in enumerate(workload):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids)
        mask[row, longest - len(ids) :] = 1
    new_tokens = workload[0][1]
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids.cuda(),
            attention_mask=mask.cuda(),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    del model
    torch.cuda.empty_cache()
    return len(workload) * new_tokens, elapsed


def _first_difference(ours: list[int], reference: list[int]) -> int | None:
    """Index of the first differing token, or None when equal."""
    for index, (a, b) in enumerate(zip(ours, reference, strict=False)):
        if a != b:
            return index
    return None if len(ours) == len(reference) else min(len(ours), len(reference))


def hf_greedy_on_gpu(folder: Path, cases) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    outputs = []
    for case in cases:
        ids = torch.tensor([case["prompt_token_ids"]], device="cuda")
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
            )
        outputs.append(out[0, ids.shape[1] :].tolist())
    del model
    return outputs


def margin_at_difference(folder: Path, cases, outputs) -> list[float | None]:
    """For each output that left the reference: HF's top-2 logit gap at that position on this GPU.

    A gap near float32 rounding (1e-4 or less) means the two continuations were tied
    within the arithmetic's precision, and either implementation may pick either.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    margins = []
    for case, out in zip(cases, outputs, strict=True):
        index = _first_difference(out, case["expected"])
        if index is None:
            margins.append(None)
            continue
        ids = torch.tensor([case["prompt_token_ids"] + case["expected"][:index]], device="cuda")
        with torch.inference_mode():
            top2 = model(ids).logits[0, -1].float().topk(2).values
        margins.append(float(top2[0] - top2[1]))
    del model
    return margins


def _stack_flags(args) -> list[str]:
    return [
        "--dtype",
        "float32",
        "--num-executors",
        str(args.num_executors),
        "--num-blocks",
        "8192",
    ]


def measure_eager_decode(args, workload) -> dict:
    """The throughput workload again, on a stack whose executors keep decode
    eager (PAGEDSERVE_CUDA_GRAPHS=false): the baseline of the same run. Its
    first pass is a warm-up; the second is reported."""
    from pagedserve.v1 import generation_pb2_grpc

    process, gateway, _ = start_stack(
        args.model, _stack_flags(args), {"PAGEDSERVE_CUDA_GRAPHS": "false"}
    )
    try:
        stub = generation_pb2_grpc.TextGenerationStub(grpc.insecure_channel(gateway))
        measure_pagedserve(stub, workload)
        tokens, seconds = measure_pagedserve(stub, workload)
    finally:
        process.terminate()
        process.wait(120)
    return {
        "output_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def run_on_gpu(args) -> None:
    import torch

    from pagedserve.blockmgr.v1 import blockmgr_pb2, blockmgr_pb2_grpc
    from pagedserve.executor.model_store import resolve_model_path
    from pagedserve.v1 import generation_pb2_grpc

    cases = json.loads(Path(args.expected).read_text())
    folder = resolve_model_path(args.model)
    results: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    process, gateway, blockmgr = start_stack(args.model, _stack_flags(args))
    try:
        stub = generation_pb2_grpc.TextGenerationStub(grpc.insecure_channel(gateway))
        (pool,) = (
            blockmgr_pb2_grpc.BlockManagerStub(grpc.insecure_channel(blockmgr))
            .ListPools(blockmgr_pb2.ListPoolsRequest())
            .pools
        )
        results["pool"] = {
            "device_kind": blockmgr_pb2.DeviceKind.Name(pool.device_kind),
            "executors": len(pool.executor_ids),
            "dtype": pool.dtype,
        }
        # One at a time, as HF runs them: float32 GEMMs of other batch shapes round
        # differently, which can flip a near-tie (batched results are reported below).
        outputs = [greedy(stub, case["prompt_token_ids"], MAX_NEW_TOKENS) for case in cases]
        with concurrent.futures.ThreadPoolExecutor(len(cases)) as executor:
            batched = list(
                executor.map(
                    lambda case: greedy(stub, case["prompt_token_ids"], MAX_NEW_TOKENS), cases
                )
            )
        results["batched_first_difference_from_cpu"] = [
            _first_difference(out, case["expected"])
            for out, case in zip(batched, cases, strict=True)
        ]
        matches = [out == case["expected"] for out, case in zip(outputs, cases, strict=True)]
        results["greedy_matches_cpu"] = f"{sum(matches)}/{len(matches)}"
        results["first_difference_from_cpu"] = [
            _first_difference(out, case["expected"])
            for out, case in zip(outputs, cases, strict=True)
        ]
        workload = throughput_workload(args.num_requests, 49152)
        # The first pass includes Triton compiling a kernel variant for each new
        # specialization of its integer arguments; the second is steady state.
        first_tokens, first_seconds = measure_pagedserve(stub, workload)
        results["pagedserve_float32_first_pass"] = {
            "output_tokens": first_tokens,
            "seconds": round(first_seconds, 2),
            "tokens_per_s": round(first_tokens / first_seconds, 1),
        }
        tokens, seconds = measure_pagedserve(stub, workload)
        results["pagedserve_float32"] = {
            "output_tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
        }
    finally:
        process.terminate()
        process.wait(120)
    if args.also_eager_decode:
        results["pagedserve_float32_eager_decode"] = measure_eager_decode(args, workload)
    hf_gpu = hf_greedy_on_gpu(folder, cases)
    results["hf_top2_logit_gap_where_pagedserve_differs"] = margin_at_difference(
        folder, cases, outputs
    )
    results["hf_gpu_matches_hf_cpu"] = (
        f"{sum(h == c['expected'] for h, c in zip(hf_gpu, cases, strict=True))}/{len(cases)}"
    )
    results["hf_gpu_first_difference_from_cpu"] = [
        _first_difference(h, c["expected"]) for h, c in zip(hf_gpu, cases, strict=True)
    ]
    results["pagedserve_gpu_matches_hf_gpu"] = (
        f"{sum(o == h for o, h in zip(outputs, hf_gpu, strict=True))}/{len(cases)}"
    )
    measure_hf(folder, workload[:8], torch.float32)  # warm-up
    tokens, seconds = measure_hf(folder, workload, torch.float32)
    results["hf_generate_float32"] = {
        "output_tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(
        f"\n| check | result |\n|---|---|\n| device | {results['device']} |\n| pool | {results['pool']} |"
    )
    print(
        f"| greedy float32 tokens equal to CPU HF | {results['greedy_matches_cpu']} (first differences {results['first_difference_from_cpu']}) |"
    )
    print(
        f"| HF float32 on this GPU equal to CPU HF | {results['hf_gpu_matches_hf_cpu']} (first differences {results['hf_gpu_first_difference_from_cpu']}) |"
    )
    print(f"| pagedserve on GPU equal to HF on GPU | {results['pagedserve_gpu_matches_hf_gpu']} |")
    print(
        f"| HF's top-2 logit gap where they differ | {results['hf_top2_logit_gap_where_pagedserve_differs']} |"
    )
    print(
        f"| the same {len(cases)} requests sent concurrently: first differences from CPU HF | {results['batched_first_difference_from_cpu']} |"
    )
    names = ["pagedserve_float32_first_pass", "pagedserve_float32", "hf_generate_float32"]
    if args.also_eager_decode:
        names.insert(2, "pagedserve_float32_eager_decode")
    for name in names:
        print(
            f"| {name} ({args.num_requests} requests, 128 new tokens) | {results[name]['tokens_per_s']} tokens/s |"
        )
    if not all(matches):
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--write-expected")
    parser.add_argument("--expected")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--num-executors", type=int, default=2)
    parser.add_argument(
        "--also-eager-decode",
        action="store_true",
        help="measure the throughput again with the executors' CUDA graphs off",
    )
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_e2e.json"))
    args = parser.parse_args()
    if args.write_expected:
        write_expected(args.model, Path(args.write_expected))
    else:
        run_on_gpu(args)


if __name__ == "__main__":
    main()
