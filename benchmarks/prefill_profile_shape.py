"""Runs the package's prefill of fresh prompts and SDPA's causal attention a
few times at one shape, for a profiler.

`ncu --clock-control none --kernel-name regex:'paged_attention|fmha|flash|attention'
python3 -m benchmarks.prefill_profile_shape --batch 16 --length 1024`
profiles both on the same values (SDPA over the same keys and values stored
contiguously, as kernels_bench times it). --tiles long takes the launch options
prefill_config gives sequences of 4k and more, at any length; --config sets
others (as JSON: '{"PAIRED_TILES": false}').
"""

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.paged_inputs import DEVICE, DTYPE, HEAD_DIM, NUM_HEADS, NUM_KV_HEADS
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.prefill_options import prefill_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--tiles", choices=("default", "long"), default="default")
    parser.add_argument("--config", default="{}", help="launch options over those, as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    batch, length = args.batch, args.length
    tokens = batch * length
    query = torch.randn(tokens, NUM_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    key = torch.randn(tokens, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    value = torch.randn_like(key)
    # Fresh prompts read no cache: a one-block pool and an empty table suffice.
    cache = torch.zeros(1, 16, NUM_KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    tables = torch.zeros(batch, 1, dtype=torch.int32, device=DEVICE)
    starts = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE) * length
    lens = torch.full((batch,), length, dtype=torch.int32, device=DEVICE)
    config = prefill_config(HEAD_DIM, 1 << 20, DTYPE) if args.tiles == "long" else {}
    config.update(json.loads(args.config))
    scale = HEAD_DIM**-0.5

    def as_heads(t):  # [tokens, heads, dim] -> [batch, heads, length, dim]
        return t.view(batch, length, -1, HEAD_DIM).transpose(1, 2).contiguous()

    q4, k4, v4 = as_heads(query), as_heads(key), as_heads(value)
    for _ in range(args.calls):
        paged_attention_triton(
            query, key, value, cache, cache, tables, starts, lens, scale,
            config=config, cached_context=False,
        )  # fmt: skip
        F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scale, enable_gqa=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
