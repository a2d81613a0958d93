"""The layer ops (rms_norm, add_rms_norm, silu_and_mul, rotary_embedding) on one
CUDA GPU: each against its torch reference, then timed against the card's copy
bandwidth at Llama-3-8B widths (hidden 4096, MLP 14336, 32/8 heads x 128), bf16.

Run from the repository root: `python3 -m benchmarks.layer_ops_bench`;
kernels_bench.py runs the same checks and timings as part of its table.
"""

from __future__ import annotations

import torch

from benchmarks.bench_table import FAILURES, ROWS, add_row, bench_ms, check, guarded, print_table
from benchmarks.gpu_timing import copy_bandwidth_gbs, rel_err
from pagedserve.kernels.rms_norm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from pagedserve.kernels.rotary_embedding import (
    rope_cos_sin_cache,
    rotary_embedding_reference,
    rotary_embedding_triton,
)
from pagedserve.kernels.silu_and_mul import silu_and_mul_reference, silu_and_mul_triton

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, DTYPE = 32, 8, 128, torch.bfloat16
HIDDEN_SIZE, INTERMEDIATE_SIZE, MAX_POSITION = 4096, 14336, 16384


def layer_op_inputs(num_tokens: int) -> dict:
    return {
        "x": torch.randn(num_tokens, HIDDEN_SIZE, device=DEVICE, dtype=DTYPE),
        "residual": torch.randn(num_tokens, HIDDEN_SIZE, device=DEVICE, dtype=DTYPE),
        "weight": torch.randn(HIDDEN_SIZE, device=DEVICE, dtype=DTYPE),
        "gate_up": torch.randn(num_tokens, 2 * INTERMEDIATE_SIZE, device=DEVICE, dtype=DTYPE),
        "positions": torch.randint(0, MAX_POSITION, (num_tokens,), device=DEVICE),
        "query": torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE),
        "key": torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE),
        "cos_sin": rope_cos_sin_cache(MAX_POSITION, HEAD_DIM, 500000.0, DEVICE),
    }


def check_layer_ops() -> None:
    """rms_norm, add_rms_norm, rotary_embedding, silu_and_mul against their references."""
    t = layer_op_inputs(3000)
    eps = 1e-5
    expected = rms_norm_reference(t["x"], t["weight"], eps)
    check("rms_norm", rel_err(rms_norm_triton(t["x"], t["weight"], eps), expected), 1e-2)
    ours = add_rms_norm_triton(t["x"], t["residual"], t["weight"], eps)
    theirs = add_rms_norm_reference(t["x"], t["residual"], t["weight"], eps)
    err = max(rel_err(a, b) for a, b in zip(ours, theirs, strict=True))
    check("add_rms_norm", err, 1e-2)
    expected = silu_and_mul_reference(*t["gate_up"].chunk(2, dim=-1))
    check(
        "silu_and_mul", rel_err(silu_and_mul_triton(*t["gate_up"].chunk(2, dim=-1)), expected), 1e-2
    )
    ours_q, ours_k = t["query"].clone(), t["key"].clone()
    rotary_embedding_triton(t["positions"], ours_q, ours_k, t["cos_sin"])
    rotary_embedding_reference(t["positions"], t["query"], t["key"], t["cos_sin"])
    err = max(rel_err(ours_q, t["query"]), rel_err(ours_k, t["key"]))
    check("rotary_embedding", err, 1e-2)


def bench_layer_ops(copy_gbps) -> None:
    """Each op's bytes: its inputs read once and its outputs written once."""
    for num_tokens in (256, 16384):
        t = layer_op_inputs(num_tokens)
        shape = f"{num_tokens} tokens"
        hidden_bytes = num_tokens * HIDDEN_SIZE * 2
        ms = bench_ms(lambda t=t: rms_norm_triton(t["x"], t["weight"], 1e-5))
        add_row("rms_norm triton", shape, ms, 2 * hidden_bytes, copy_gbps)
        ms = bench_ms(lambda t=t: add_rms_norm_triton(t["x"], t["residual"], t["weight"], 1e-5))
        add_row("add_rms_norm triton", shape, ms, 4 * hidden_bytes, copy_gbps)
        ms = bench_ms(lambda t=t: silu_and_mul_triton(*t["gate_up"].chunk(2, dim=-1)))
        add_row("silu_and_mul triton", shape, ms, 3 * num_tokens * INTERMEDIATE_SIZE * 2, copy_gbps)
        rotary_bytes = 2 * (t["query"].numel() + t["key"].numel()) * 2 + num_tokens * HEAD_DIM * 4
        ms = bench_ms(
            lambda t=t: rotary_embedding_triton(t["positions"], t["query"], t["key"], t["cos_sin"])
        )
        add_row("rotary_embedding triton", shape, ms, rotary_bytes, copy_gbps)


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), flush=True)
    guarded(check_layer_ops)
    copy_gbps = copy_bandwidth_gbs(device=DEVICE)
    guarded(bench_layer_ops, copy_gbps)
    print("\n" + print_table(copy_gbps))
    print(
        "FAILED CHECKS: " + ", ".join(FAILURES)
        if FAILURES
        else f"all checks passed ({len(ROWS)} rows)"
    )


if __name__ == "__main__":
    main()
