"""Capturing a forward pass per padded size into CUDA graphs (decode_graphs.py,
prefill_graphs.py): what both kinds share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class CaptureReport:
    sizes: list[int]  # batch sizes (decode) or token counts (prefill), ascending
    seconds: float
    # Device memory the graphs hold (their share of the pool), beyond the static buffers.
    memory_bytes: int


def capture_graphs(
    device: torch.device,
    sizes: list[int],
    forward: Callable[[int], None],  # runs the forward pass on the static buffers at a size
    fill_padding: Callable[[], None],  # makes every row a padding row (writes nothing to the pool)
    memory_pool=None,  # torch.cuda.graph_pool_handle() shared with other graphs; None: a new one
) -> tuple[dict[int, torch.cuda.CUDAGraph], CaptureReport]:
    """One graph per size, largest first, into memory_pool: graphs are replayed
    one at a time, so their intermediates may share memory, and the largest
    one's allocations serve the smaller ones. Each size runs once eagerly
    first, so that Triton and cuBLAS load its kernels outside the capture;
    every graph is replayed once at the end (see _replay_each_once). Raises
    ValueError off CUDA; torch's RuntimeError if an operation is not capturable."""
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
    started_s = time.monotonic()
    if memory_pool is None:
        memory_pool = torch.cuda.graph_pool_handle()
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    with torch.cuda.device(device):
        fill_padding()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved_before = torch.cuda.memory_reserved()
        stream = torch.cuda.Stream()
        for size in sorted(sizes, reverse=True):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                forward(size)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory_pool, stream=stream):
                forward(size)
            graphs[size] = graph
        _replay_each_once(graphs)
        torch.cuda.synchronize()
        # What stays reserved is the graphs' pool: the eager runs' memory went back.
        torch.cuda.empty_cache()
        memory_bytes = torch.cuda.memory_reserved() - reserved_before
    report = CaptureReport(sorted(sizes), time.monotonic() - started_s, memory_bytes)
    return graphs, report


def _replay_each_once(graphs: dict[int, torch.cuda.CUDAGraph]) -> None:
    """The first launch of a graph also uploads it to the device (measured on
    an H100, default model: about 1 ms more than a replay, per graph): done
    here, not in a user's step. The buffers hold padding rows only, so nothing
    is written to the pool."""
    for graph in graphs.values():
        graph.replay()


def replay(graph: torch.cuda.CUDAGraph, device: torch.device) -> None:
    # The graph launches on the current device's stream: make it the pool's.
    with torch.cuda.device(device):
        graph.replay()
