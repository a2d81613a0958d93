"""Paged decode at the default model's shape (9 query / 3 KV heads, head size
64) against torch SDPA on a contiguous cache, in float32 and bfloat16, on one
CUDA GPU; each timed as 20 calls in one CUDA graph, the same run for both.

Run from the repository root: `python3 -m benchmarks.decode_default_shape`.
Shapes: the executor's decode graphs (table 512 blocks wide: the model's 8k
context) and eager batches (table as wide as the sequences), 300 and 1,000
keys. Inputs are random; block ids random over an 8,192-block pool.
"""

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from benchmarks.gpu_timing import capture_graph
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 9, 3, 64, 16, 8192
SHAPES = [(64, 300, 19), (64, 300, 512), (8, 300, 512), (256, 1000, 512)]  # batch, keys, width


def graph_us(fn) -> float:
    graph = capture_graph(fn, 20)
    return do_bench(graph.replay, warmup=10, rep=50, return_mode="median") / 20 * 1e3


def time_shape(dtype, batch: int, keys: int, width: int, device) -> tuple[float, float]:
    """(ours, SDPA) microseconds per call at one shape."""
    shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, device=device, dtype=dtype)
    value_cache = torch.randn_like(key_cache)
    table = torch.randint(0, NUM_BLOCKS, (batch, width), device=device, dtype=torch.int32)
    lens = torch.full((batch,), keys, device=device, dtype=torch.int32)
    query = torch.randn(batch, NUM_HEADS, HEAD_DIM, device=device, dtype=dtype)
    out = torch.empty_like(query)
    scale = HEAD_DIM**-0.5
    dense_k = torch.randn(batch, NUM_KV_HEADS, keys, HEAD_DIM, device=device, dtype=dtype)
    dense_v = torch.randn_like(dense_k)

    def ours():
        paged_decode_attention_triton(query, key_cache, value_cache, table, lens, scale, out=out)

    def sdpa():
        F.scaled_dot_product_attention(
            query[:, :, None], dense_k, dense_v, scale=scale, enable_gqa=True
        )

    return graph_us(ours), graph_us(sdpa)


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| dtype | batch x keys | table width | ours us | SDPA us | ours / SDPA |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for batch, keys, width in SHAPES:
            ours, sdpa = time_shape(dtype, batch, keys, width, device)
            name = str(dtype).removeprefix("torch.")
            print(
                f"| {name} | {batch} x {keys} | {width} | {ours:.1f} | {sdpa:.1f} "
                f"| {ours / sdpa:.2f} |"
            )


if __name__ == "__main__":
    main()
