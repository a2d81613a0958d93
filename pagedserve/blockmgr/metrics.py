"""The block manager's Prometheus metrics.

Block counts, KV utilization and the prefix-cache hit rate are read from the
core's statistics at scrape time (under the service lock), so the hot path
pays nothing for them; the per-RPC latency histogram is recorded by the
service around each call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pagedserve.blockmgr.manager import BlockManager
from pagedserve.common import metrics

RPC_LATENCY = metrics.histogram(
    "pagedserve_blockmgr_rpc_latency_seconds",
    "Time to serve one block-manager RPC, lock wait included",
    buckets=metrics.RPC_BUCKETS_S,
    labels=("method",),
)

# (metric name, help, PoolStats attribute)
_POOL_GAUGES = (
    (
        "pagedserve_blockmgr_kv_blocks_free",
        "Unreferenced KV blocks without a cache entry",
        "free_blocks",
    ),
    ("pagedserve_blockmgr_kv_blocks_used", "KV blocks referenced by a sequence", "used_blocks"),
    (
        "pagedserve_blockmgr_kv_blocks_cached",
        "Unreferenced KV blocks kept for the prefix cache",
        "cached_blocks",
    ),
    (
        "pagedserve_blockmgr_kv_utilization_ratio",
        "Filled token slots over the slots of used blocks",
        "kv_utilization",
    ),
    (
        "pagedserve_blockmgr_prefix_cache_hit_rate_ratio",
        "Prompt tokens found in the prefix cache over those looked up",
        "prefix_cache_hit_rate",
    ),
    (
        "pagedserve_blockmgr_consecutive_blocks_ratio",
        "Neighbouring block-table entries of live sequences whose blocks are consecutive",
        "consecutive_block_ratio",
    ),
)


class PoolStatsCollector(Collector):
    """Gauges of every registered pool, labelled by pool_id, computed when scraped."""

    def __init__(self, manager: BlockManager, lock: threading.Lock) -> None:
        self._manager = manager
        self._lock = lock

    def collect(self):
        families = [
            (GaugeMetricFamily(name, documentation, labels=["pool_id"]), attribute)
            for name, documentation, attribute in _POOL_GAUGES
        ]
        with self._lock:
            pool_ids = [info.pool_id for info in self._manager.list_pools()]
            stats = [(pool_id, self._manager.get_stats(pool_id)) for pool_id in pool_ids]
        for pool_id, pool_stats in stats:
            for family, attribute in families:
                family.add_metric([pool_id], float(getattr(pool_stats, attribute)))
        for family, _attribute in families:
            yield family


def timed(method: str, handler: Callable) -> Callable:
    """handler, recording its latency under method."""
    histogram = RPC_LATENCY.labels(method=method)

    def call(request, context):
        started_s = time.perf_counter()
        try:
            return handler(request, context)
        finally:
            histogram.observe(time.perf_counter() - started_s)

    return call
