"""Pieces the GPU kernel benchmarks share: the card's copy bandwidth (the
anchor every memory-bound figure is a fraction of), CUDA-graph capture of
repeated calls, and the relative error every timed variant is checked with."""

from __future__ import annotations

from collections.abc import Callable

import torch
from triton.testing import do_bench


def capture_graph(fn: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph:
    """A graph of `calls` calls of fn, captured after three warm-up calls on a
    side stream (which also compile any Triton kernel outside the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN when actual is not finite."""
    if not torch.isfinite(actual).all():
        return float("nan")
    diff = (actual.double() - expected.double()).norm()
    return (diff / expected.double().norm()).item()


def copy_bandwidth_gbs(num_bytes: int = 4 << 30, device: torch.device | None = None) -> float:
    """GB/s of a device-to-device copy of num_bytes, bytes read plus written
    (do_bench median, L2 flushed before each call)."""
    source = torch.randint(0, 255, (num_bytes,), dtype=torch.uint8, device=device or "cuda")
    target = torch.empty_like(source)
    ms = do_bench(lambda: target.copy_(source), warmup=25, rep=100, return_mode="median")
    return 2 * num_bytes / ms / 1e6
