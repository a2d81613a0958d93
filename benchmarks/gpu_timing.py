"""Pieces the GPU kernel benchmarks share: CUDA-graph capture of repeated
calls, and the relative error every timed variant is checked with first."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
