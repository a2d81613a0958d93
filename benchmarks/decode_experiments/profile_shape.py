"""Runs the package's decode and SDPA a few times at one shape, for a profiler.

`ncu --clock-control none --kernel-name regex:'decode|sdpa|fmha|flash'
python3 -m benchmarks.decode_experiments.profile_shape --batch 64 --context 2048`
profiles both kernels on the same values; the paged cache is laid out as the
block manager's served tables (extents of 64), as in the experiments.
"""

import argparse

import torch
import torch.nn.functional as F

from benchmarks.decode_experiments.__main__ import make_inputs
from benchmarks.decode_experiments.ordered_blocks import _in_served_tables
from benchmarks.paged_inputs import HEAD_DIM, NUM_HEADS, contiguous_kv
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    key_cache, value_cache, tables, lens, queries = make_inputs(args.batch, args.context, 1)
    keys, values, table = _in_served_tables(key_cache, value_cache, tables[0], 64)
    dense = [contiguous_kv(c, tables[0], args.context) for c in (key_cache, value_cache)]
    scale = HEAD_DIM**-0.5
    query = queries[0]
    assert query.shape[1] == NUM_HEADS
    for _ in range(args.calls):
        paged_decode_attention_triton(query, keys, values, table, lens, scale)
        F.scaled_dot_product_attention(query[:, :, None], *dense, scale=scale, enable_gqa=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
