"""v14: programmatic dependent launch with the prologue before the wait.

v11 tried PDL with `gdc_wait()` before a program's first load: the next
call's programs were launched early but loaded nothing until this call
ended. Here a program loads its seq_len and prefetches its table row into L1
(v9a) before it waits, since both come from the host, not from the kernel
before it; the query and the cache are read after the wait. The next call is
launched at a program's start (`-at-start`) or after its key loop
(`-after-keys`). Over the block manager's tables (served-64), against v7 over
the same tables. If the dependent load chain of v9 is what a back-to-back
call pays, these hide it behind the previous call's tail.
"""

from __future__ import annotations

from functools import partial

from benchmarks.decode_experiments.load_latency import _decode_v9
from benchmarks.decode_experiments.ordered_blocks import over_served_tables


def _decode_pdl(pdl_trigger: int):
    return over_served_tables(
        partial(_decode_v9, prefetch=True, early=False, pdl_trigger=pdl_trigger)
    )


VARIANTS = {
    "v14-served-64-prefetch": _decode_pdl(0),
    "v14-served-64-pdl-at-start": _decode_pdl(1),
    "v14-served-64-pdl-after-keys": _decode_pdl(2),
}
