"""v25: batch 32 x 32k, how long a sequence's runs of blocks must be.

Over the block manager's tables (extents of 64 blocks, runs of 65 on
average at b32 x 32k) the package's kernel reads 1.005-1.009 of SDPA; over
fully consecutive blocks 0.995 (v15). v9-v10 timed runs of 4, 16 and 64
blocks, not longer. Question: which run length reaches "ordered"? The answer
sets what a placement change would have to give (longer runs for long
sequences only: at 1-2k tokens a sequence fills no more than an extent, and
larger extents leave too few wholly free ones, v15).

Variants: runs of R consecutive blocks at random places, aligned to R
(`v25-runs-R`, as v9-v10's `v7-runs-R`), and the block manager's tables
with extents of E blocks in groups of G extents (`v25-served-ExG`; groups:
blockmgr/extents.py).

Outcome (docs/kernels-notes.md v25): runs of 256 blocks take most of the
gap at b32 x 32k (0.995 of SDPA; ordered 0.989-0.993). The block manager's
groups of 8 extents of 64 (its default since) give runs of 388 blocks there
and read 0.993, against 1.006 without groups.
"""

from __future__ import annotations

from benchmarks.decode_experiments.ordered_blocks import _decode_in_runs, _decode_in_served_tables

VARIANTS = {
    **{f"v25-runs-{run}": _decode_in_runs(run) for run in (128, 256, 512, 1024)},
    **{
        f"v25-served-{extent}x1": _decode_in_served_tables(extent, group_extents=1)
        for extent in (64, 128, 256)
    },
    **{
        f"v25-served-64x{group}": _decode_in_served_tables(64, group_extents=group)
        for group in (4, 8)
    },
}
