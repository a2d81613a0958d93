"""Prometheus metrics: one registry and one /metrics endpoint per process.

Names follow Prometheus conventions: `pagedserve_<what>_<unit>`, counters end in
`_total`, durations are histograms in seconds. Each service defines its own
metrics in its own module with the helpers here; gauges that mirror state held
elsewhere (the block manager's block counts) are read at scrape time.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to 2 min: a token on a GPU to a long request on a CPU.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
# Block-manager RPCs are sub-millisecond when healthy.
RPC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

REGISTRY = CollectorRegistry()


def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(name, documentation, labels, registry=REGISTRY)


def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, documentation, labels, registry=REGISTRY)


def histogram(
    name: str, documentation: str, buckets=LATENCY_BUCKETS_S, labels: tuple[str, ...] = ()
) -> Histogram:
    return Histogram(name, documentation, labels, buckets=buckets, registry=REGISTRY)


def serve_metrics(host: str, port: int, service: str) -> int | None:
    """Starts the /metrics endpoint (port 0: off); returns the port, or None when off."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = server.server_port
    log.info("%s metrics on http://%s:%d/metrics", service, host, bound)
    return bound
