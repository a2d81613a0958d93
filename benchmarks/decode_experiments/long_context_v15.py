"""v15: batch 32 x 32k, the one target shape still slower than SDPA over the
block manager's tables (1.005-1.007, docs/kernels-notes.md v11, v14).

There, 256 programs (32 sequences x 8 kv heads) each read 32k keys; the 8
programs of a sequence share every 2 KiB slot row of a block (256 bytes
each). In step at first, they may drift apart over 32k keys, so that a DRAM
row is opened once per program instead of once per block. Questions:
- Is it placement? v7 over fully consecutive blocks (`v7-ordered-blocks`).
- Is it the shared rows? The same kernel over a head-major copy of the
  served-64 pool (each program's 16 keys of a block one private 4 KiB run),
  kv-head-major and sequence-major grids.
- Is it the launch? Small tiles with 2 partitions (512 programs, all
  resident), and tile options the v11 sweep did not cover at this length.
"""

from __future__ import annotations

from benchmarks.decode_experiments.head_major_v7 import _head_major
from benchmarks.decode_experiments.ordered_blocks import (
    _decode_in_served_tables,
    over_served_tables,
)

_SMALL = {"BLOCK_N": 32, "num_warps": 2, "num_stages": 6, "HEADS_FASTEST": True}


_LAUNCHES = {
    "seq-major": ({**_SMALL, "HEADS_FASTEST": False}, None),
    "small part16384": (_SMALL, 16384),
    "n32 w2 s8": ({**_SMALL, "num_stages": 8}, None),
    "n32 w2 s4": ({**_SMALL, "num_stages": 4}, None),
    "n32 w4 s6": ({**_SMALL, "num_warps": 4}, None),
    "n64 w2 s4": ({**_SMALL, "BLOCK_N": 64, "num_stages": 4}, None),
}
VARIANTS = {
    "v15-served-64 head-major": over_served_tables(_head_major(True)),
    "v15-served-64 head-major seq-major": over_served_tables(_head_major(False)),
    **{
        f"v15-served-64 {name}": _decode_in_served_tables(64, config, partition)
        for name, (config, partition) in _LAUNCHES.items()
    },
}
