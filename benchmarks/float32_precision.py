"""Float32 attention on a CUDA GPU: tl.dot's input precisions, time and error.

Run from the repository root: `python3 -m benchmarks.float32_precision`.
The default model's attention shape (9 query / 3 kv heads x 64, block size
16): prefill of one 1,024-token prompt (no cached context) and decode of 64
sequences of 1,024 keys over shuffled block tables, each with DOT_PRECISION
"ieee" (float32 FMAs), "tf32x3" (three TF32 products per product) and "tf32"
(operands rounded to 10 mantissa bits), and the package's default; SDPA in
float32 on the same prompt as the baseline. Error: relative L2 distance from
the torch reference run in float64. Times: do_bench medians.
"""

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from benchmarks.gpu_timing import rel_err
from benchmarks.paged_inputs import in_float64
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention import (
    paged_decode_attention_reference,
    paged_decode_attention_triton,
)

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


def decode_inputs() -> tuple:
    blocks_per_seq = DECODE_KEYS // BLOCK_SIZE
    num_blocks = DECODE_SEQS * blocks_per_seq
    cache_shape = (num_blocks + 4, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(cache_shape, device=DEVICE)
    value_cache = torch.randn(cache_shape, device=DEVICE)
    order = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    table = order.view(DECODE_SEQS, blocks_per_seq)
    lens = torch.full((DECODE_SEQS,), DECODE_KEYS, device=DEVICE, dtype=torch.int32)
    query = torch.randn(DECODE_SEQS, NUM_HEADS, HEAD_DIM, device=DEVICE)
    return (query, key_cache, value_cache, table, lens, HEAD_DIM**-0.5)


def main() -> None:
    torch.manual_seed(0)
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
