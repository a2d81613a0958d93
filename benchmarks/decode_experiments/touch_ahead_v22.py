"""v22: batch 32 x 32k, touching the pages ahead of the key loop.

Over the block manager's tables, b32 x 32k reads 1.005-1.009 of SDPA, and
the same values over fully consecutive blocks 0.995 (v15). Not the streams
reading in step (v21), not the shared slot rows (v15), not the launch (v11,
v15). A served-64 table is a run of 64 blocks (one 2 MiB page of keys, one of
values) after another at random places; consecutive blocks cross into the
neighbouring page. Hypothesis: crossing into a page whose translation is not
cached stalls the stream, and adjacent pages are cheaper to translate.

v10 prefetched every block of a tile steps ahead, over shuffled tables (a
page per block), and lost 0.5-8.5%. Here each step touches one block,
`D` blocks ahead (at 32 keys a step, one in two blocks, so at least one in
each run of 64): with a load whose value is first used a step later, or a
prefetch into L2 (which may be dropped, not translated, on a miss).
Prediction if the hypothesis holds: served-64 with touches near "ordered".

v22b: the first call (ids loaded in the step that touches) cost 2-18%, the
prefetch 0.4-5%. Each touch's block id is now loaded a step before it.
"""

from __future__ import annotations

from functools import partial

from benchmarks.decode_experiments.load_latency import _decode_v9
from benchmarks.decode_experiments.ordered_blocks import over_served_tables


def _touching(blocks_ahead: int, load: bool):
    return over_served_tables(
        partial(_decode_v9, prefetch=False, early=False, touch_ahead=blocks_ahead, touch_load=load)
    )


VARIANTS = {
    "v22-served-64 touch-16": _touching(16, True),
    "v22-served-64 touch-64": _touching(64, True),
    "v22-served-64 touch-128": _touching(128, True),
    "v22-served-64 prefetch-64": _touching(64, False),
    "v22-served-64 v9-off": _touching(0, True),
}
