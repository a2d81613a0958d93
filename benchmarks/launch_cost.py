"""Host time of one eager call of each attention launcher, on one CUDA GPU.

Run from the repository root: `python3 -m benchmarks.launch_cost`. A
16-token prompt (32/8 heads x 128, bf16) keeps the GPU's part tiny, so the
calls' rate is the host's: the Python launch path and Triton's launcher.
A torch add is the floor of a launch from Python, and the compiled kernel's
own launcher called directly (no argument binding, no cache lookup) the floor
of any path through Triton. Then a cProfile of the prefill call shows where
its host time goes. Host timings move between runs
(up to 30% on the H100 machine): compare within one run.
"""

import cProfile
import io
import os
import pstats
import time

import torch

from pagedserve.kernels.direct_launch import DIRECT_LAUNCH_ENV_VAR
from pagedserve.kernels.paged_attention import _paged_attention_kernel, paged_attention_triton
from pagedserve.kernels.paged_decode_attention import (
    _decode_partition_kernel,
    paged_decode_attention_triton,
)
from pagedserve.kernels.write_kv_cache import write_kv_cache_triton

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16


def prompt_inputs(num_tokens: int) -> tuple:
    """paged_attention_triton's arguments for one fresh prompt."""
    num_blocks = -(-num_tokens // BLOCK_SIZE)
    shape = (num_blocks + 4, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, device=DEVICE, dtype=DTYPE)
    value_cache = torch.randn_like(key_cache)
    table = torch.arange(num_blocks, device=DEVICE, dtype=torch.int32)[None, :]
    query = torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    value = torch.randn_like(key)
    query_start_loc = torch.tensor([0, num_tokens], device=DEVICE, dtype=torch.int32)
    seq_lens = torch.tensor([num_tokens], device=DEVICE, dtype=torch.int32)
    return (query, key, value, key_cache, value_cache, table, query_start_loc, seq_lens,
            HEAD_DIM**-0.5)  # fmt: skip


def host_us_per_call(fn, calls: int = 2000) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    started_s = time.perf_counter()
    for _ in range(calls):
        fn()
    host_us = (time.perf_counter() - started_s) / calls * 1e6
    torch.cuda.synchronize()
    return host_us


def with_direct_launch(switch: str, fn):
    """fn, run with PAGEDSERVE_DIRECT_LAUNCH set to switch."""

    def run():
        os.environ[DIRECT_LAUNCH_ENV_VAR] = switch
        return fn()

    return run


def compiled_launcher_call(launch, jit_kernel):
    """A call of the compiled kernel's launcher with the arguments that
    `launch` (already run once) last gave it through Triton's JIT path."""
    recorded = []
    compiled_kernels = list(jit_kernel.device_caches[torch.cuda.current_device()][0].values())
    # The launcher is the attribute `_run` behind a property in newer Triton, `run` in older.
    attr = "_run" if all(hasattr(c, "_run") for c in compiled_kernels) else "run"
    originals = [getattr(compiled, attr) for compiled in compiled_kernels]
    for compiled, original in zip(compiled_kernels, originals, strict=True):

        def record(*args, original=original):
            recorded.append((original, args))
            return original(*args)

        setattr(compiled, attr, record)
    try:
        launch()
    finally:
        for compiled, original in zip(compiled_kernels, originals, strict=True):
            setattr(compiled, attr, original)
    launcher, args = recorded[-1]
    return lambda: launcher(*args)


def main() -> None:
    args = prompt_inputs(16)
    query, key_cache, value_cache, table, seq_lens, scale = (
        args[0], args[3], args[4], args[5], args[7], args[8]
    )  # fmt: skip
    out = torch.empty_like(query)
    decode_query = query[:1].contiguous()
    decode_out = torch.empty_like(decode_query)

    def prefill(config=None):
        return lambda: paged_attention_triton(*args, out=out, cached_context=False, config=config)

    def decode():
        return paged_decode_attention_triton(
            decode_query, key_cache, value_cache, table, seq_lens, scale, out=decode_out
        )

    slots = torch.arange(query.shape[0], device=DEVICE)

    def write_kv():
        return write_kv_cache_triton(args[1], args[2], key_cache, value_cache, slots)

    kernel_launches = {
        "prefill, tensor descriptors": prefill(),
        "prefill, pointers": prefill({"NEW_KV_DESCRIPTORS": False}),
        "decode, batch 1": decode,
        "write_kv_cache, 16 tokens": write_kv,
    }
    launches = {}
    for dispatch, switch in (("Triton's dispatch", "0"), ("direct", "1")):
        for name, fn in kernel_launches.items():
            launches[f"{name}: {dispatch}"] = with_direct_launch(switch, fn)
    launches["torch add"] = lambda: torch.add(query, query, out=out)
    for fn in launches.values():
        fn()  # compiled, and kept by the direct launchers, before any timing
        fn()
    floors = {
        "prefill, pointers": _paged_attention_kernel,
        "decode, batch 1": _decode_partition_kernel,
    }
    for name, jit_kernel in floors.items():
        launches[f"{name}: compiled launcher only"] = compiled_launcher_call(
            with_direct_launch("0", kernel_launches[name]), jit_kernel
        )
    rows = [(name, host_us_per_call(fn)) for name, fn in launches.items()]
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(500):
        launches["prefill, tensor descriptors: direct"]()
    profile.disable()
    torch.cuda.synchronize()
    report = io.StringIO()
    pstats.Stats(profile, stream=report).sort_stats("tottime").print_stats(15)
    print(report.getvalue())
    print(f"{torch.cuda.get_device_name()}: host time per eager call\n")
    print("| launch | host us per call |\n|---|---|")
    for name, host_us in rows:
        print(f"| {name} | {host_us:.1f} |")


if __name__ == "__main__":
    main()
