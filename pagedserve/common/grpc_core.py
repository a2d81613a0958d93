"""gRPC C-core settings that have to be chosen before `grpc` is first imported.

The C core reads GRPC_EXPERIMENTS once, when the `grpc` module loads. In the
grpcio releases measured (1.84, 1.85) its EventEngine client and listener
are on by default; they move each socket's reads and writes onto the core's own
thread pool, which adds a thread hand-off (and, for Python, a GIL hand-off) to
every call. Turning them off brings back the polling engine in which the thread
waiting for a call's completion does the I/O itself. Measured with
benchmarks/grpc_floor.py, an empty unary call on loopback went from 0.36 ms to
0.19 ms p50 on a 2-core VM (grpcio 1.85.3) and from 0.53-0.59 ms to
0.25-0.28 ms on a 16-core GPU machine (grpcio 1.84.0): most of a decode
step's block-manager call (docs/blockmgr.md, docs/gpu.md).

`pagedserve/__init__.py` calls `prefer_low_latency_io()`, so every pagedserve
process (the services, the CLI, a Python client) gets it. An operator's own
GRPC_EXPERIMENTS always wins, and other grpcio versions are left alone (their
experiment names may differ; re-measure before adding one).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

LOW_LATENCY_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
MEASURED_GRPCIO_RELEASES = ("1.84.", "1.85.")


def prefer_low_latency_io() -> bool:
    """Sets GRPC_EXPERIMENTS for low per-call latency; True if it did.

    No effect when the variable is already set, when grpc is already imported
    (too late: the core has read it) or for an unmeasured grpcio release."""
    if "GRPC_EXPERIMENTS" in os.environ or "grpc" in sys.modules:
        return False
    try:
        version = metadata.version("grpcio")
    except metadata.PackageNotFoundError:
        return False
    if not version.startswith(MEASURED_GRPCIO_RELEASES):
        return False
    os.environ["GRPC_EXPERIMENTS"] = LOW_LATENCY_EXPERIMENTS
    return True
