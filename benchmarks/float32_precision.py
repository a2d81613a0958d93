"""Float32 attention on a CUDA GPU: tl.dot's input precisions, time and error.

Run from the repository root: `python3 -m benchmarks.float32_precision
[--decode-configs]`.
The default model's attention shape (9 query / 3 kv heads x 64, block size
16): prefill of one 1,024-token prompt (no cached context) and decode of 64
sequences of 1,024 keys over shuffled block tables, each with DOT_PRECISION
"ieee" (float32 FMAs), "tf32x3" (three TF32 products per product) and "tf32"
(operands rounded to 10 mantissa bits), and the package's default; SDPA in
float32 on the same prompt as the baseline. Error: relative L2 distance from
the torch reference run in float64. Times: do_bench medians.

--decode-configs instead times decode's launch options in float32, "ieee"
against "tf32x3", at head sizes 64 (9/3 heads) and 128 (32/8 heads) and at
batch and context sizes where the launch rule picks each tile size; a
configuration that does not fit the card's shared memory reads "no fit".
"""

import argparse

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from benchmarks.gpu_timing import rel_err
from benchmarks.paged_inputs import in_float64
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton
from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16
PROMPT_TOKENS, DECODE_SEQS, DECODE_KEYS = 1024, 64, 1024
PRECISIONS = ["ieee", "tf32x3", "tf32"]


def prefill_inputs() -> tuple:
    num_blocks = PROMPT_TOKENS // BLOCK_SIZE
    cache_shape = (num_blocks + 4, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(cache_shape, device=DEVICE)
    value_cache = torch.randn(cache_shape, device=DEVICE)
    query = torch.randn(PROMPT_TOKENS, NUM_HEADS, HEAD_DIM, device=DEVICE)
    key = torch.randn(PROMPT_TOKENS, NUM_KV_HEADS, HEAD_DIM, device=DEVICE)
    value = torch.randn_like(key)
    table = torch.arange(num_blocks, device=DEVICE, dtype=torch.int32)[None]
    starts = torch.tensor([0, PROMPT_TOKENS], device=DEVICE, dtype=torch.int32)
    lens = torch.tensor([PROMPT_TOKENS], device=DEVICE, dtype=torch.int32)
    return (query, key, value, key_cache, value_cache, table, starts, lens, HEAD_DIM**-0.5)


def decode_inputs(
    num_seqs=DECODE_SEQS, num_keys=DECODE_KEYS, heads=(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM)
) -> tuple:
    num_heads, num_kv_heads, head_dim = heads
    blocks_per_seq = num_keys // BLOCK_SIZE
    num_blocks = num_seqs * blocks_per_seq
    cache_shape = (num_blocks + 4, BLOCK_SIZE, num_kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, device=DEVICE)
    value_cache = torch.randn(cache_shape, device=DEVICE)
    order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    table = order.view(num_seqs, blocks_per_seq)
    lens = torch.full((num_seqs,), num_keys, device=DEVICE, dtype=torch.int32)
    query = torch.randn(num_seqs, num_heads, head_dim, device=DEVICE)
    return (query, key_cache, value_cache, table, lens, head_dim**-0.5)


# (heads, kv heads, head size) x (sequences, keys): where the launch rule picks
# 32-key tiles, 128-key tiles in 2 stages, and in 3 stages.
DECODE_SHAPES = [
    ((9, 3, 64), (64, 1024)),
    ((9, 3, 64), (256, 1024)),
    ((9, 3, 64), (256, 4096)),
    ((32, 8, 128), (32, 1024)),
    ((32, 8, 128), (128, 1024)),
    ((32, 8, 128), (64, 4096)),
]
TILE_OPTIONS = [
    {"BLOCK_N": 32, "num_warps": 2, "num_stages": 6},
    {"BLOCK_N": 32, "num_warps": 2, "num_stages": 3},
    {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
    {"BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
]


def _sweep_shape(heads: tuple, num_seqs: int, num_keys: int) -> list[tuple]:
    """(shape, options, ms, error) of the package default and each tile option x precision."""
    inputs = decode_inputs(num_seqs, num_keys, heads)
    expected = paged_decode_attention_reference(*in_float64(inputs))
    shape = f"{heads[0]}/{heads[1]} x {heads[2]}, {num_seqs} x {num_keys}"
    configs = {"package default (ieee, the rule's tiles)": None}
    for options in TILE_OPTIONS:
        for precision in ("ieee", "tf32x3"):
            tiles = f"{options['BLOCK_N']} x {options['num_warps']} x {options['num_stages']}"
            configs[f"{precision}, {tiles}"] = {**options, "DOT_PRECISION": precision}
    rows = []
    for name, config in configs.items():

        def run(config=config):
            return paged_decode_attention_triton(*inputs, config=config)

        try:
            error = f"{rel_err(run(), expected):.2e}"
            ms = f"{do_bench(run, return_mode='median'):.4f}"
        except Exception as failure:  # OutOfResources: shared memory, registers
            error, ms = "-", f"no fit ({type(failure).__name__})"
        rows.append((shape, name, ms, error))
        print(rows[-1], flush=True)
    return rows


def decode_config_sweep() -> None:
    """Each tile option x dot precision at each DECODE_SHAPES shape: ms and error."""
    rows = []
    for heads, (num_seqs, num_keys) in DECODE_SHAPES:
        rows += _sweep_shape(heads, num_seqs, num_keys)
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}: float32 decode, launch options x dot precision\n")
    print("| shape | options | ms | error |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-configs", action="store_true", help="decode's launch options")
    torch.manual_seed(0)
    if parser.parse_args().decode_configs:
        decode_config_sweep()
        return
    prefill = prefill_inputs()
    decode = decode_inputs()
    prefill_expected = paged_attention_reference(*in_float64(prefill))
    decode_expected = paged_decode_attention_reference(*in_float64(decode))
    query, key, value = prefill[:3]
    q4, k4, v4 = (t.transpose(0, 1)[None] for t in (query, key, value))

    def sdpa():
        return F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=True)

    sdpa_out = sdpa()[0].transpose(0, 1)
    rows = [("SDPA (prefill only)", do_bench(sdpa, return_mode="median"),
             rel_err(sdpa_out, prefill_expected), None, None)]  # fmt: skip
    for precision in [None, *PRECISIONS]:
        config = None if precision is None else {"DOT_PRECISION": precision}

        def run_prefill(config=config):
            return paged_attention_triton(*prefill, config=config, cached_context=False)

        def run_decode(config=config):
            return paged_decode_attention_triton(*decode, config=config)

        name = "package default" if precision is None else precision
        rows.append((
            name,
            do_bench(run_prefill, return_mode="median"), rel_err(run_prefill(), prefill_expected),
            do_bench(run_decode, return_mode="median"), rel_err(run_decode(), decode_expected),
        ))  # fmt: skip
    print(
        f"\n{torch.cuda.get_device_name()}: float32 attention, {NUM_HEADS}/{NUM_KV_HEADS} heads x"
    )
    print(f"{HEAD_DIM}; prefill 1 x {PROMPT_TOKENS}, decode {DECODE_SEQS} x {DECODE_KEYS}\n")
    print("| dot precision | prefill ms | prefill error | decode ms | decode error |")
    print("|---|---|---|---|---|")
    for name, prefill_ms, prefill_error, decode_ms, decode_error in rows:
        decode_cells = "- | -" if decode_ms is None else f"{decode_ms:.4f} | {decode_error:.2e}"
        print(f"| {name} | {prefill_ms:.4f} | {prefill_error:.2e} | {decode_cells} |")


if __name__ == "__main__":
    main()
