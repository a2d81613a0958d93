"""The kernel benchmarks' shared table: timing helpers, the rows measured,
the checks that failed, and the markdown table printed last."""

from __future__ import annotations

import json

import torch
from triton.testing import do_bench

from benchmarks.gpu_timing import capture_graph

ROWS: list[dict] = []  # the table
FAILURES: list[str] = []


def bench_ms(fn) -> float:
    """Median time of fn in ms (do_bench flushes L2 before each call)."""
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def bench_graph_ms(fn, calls: int) -> float:
    """Median ms per call of `calls` calls captured in one CUDA graph.

    Decode runs as replayed CUDA graphs in production, so this leaves out the
    host's launch overhead; each captured call takes the next rotated input.
    """
    try:
        graph = capture_graph(fn, calls)  # compiles and warms up outside the capture
    except RuntimeError as error:
        print(f"graph capture failed ({error}); timing eagerly", flush=True)
        FAILURES.append("graph capture")
        return bench_ms(fn)
    return do_bench(graph.replay, warmup=25, rep=100, return_mode="median") / calls


def check(name: str, err: float, tol: float) -> None:
    ok = err <= tol  # NaN fails
    print(f"check {name}: rel_err={err:.2e} (tol {tol:.0e}) {'OK' if ok else 'FAIL'}", flush=True)
    if not ok:
        FAILURES.append(name)


def add_row(kind, shape, ms, bytes_moved, copy_gbps, baseline_ms=None, note=""):
    gbps = bytes_moved / ms / 1e6
    row = {"kernel": kind, "shape": shape, "ms": ms, "GB/s": gbps, "frac_copy_bw": gbps / copy_gbps}
    if baseline_ms is not None:
        row["vs_sdpa"] = ms / baseline_ms
        row["sdpa_ms"] = baseline_ms
    row["note"] = note
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def guarded(fn, *args) -> None:
    """Run one benchmark; a failure is recorded and the run goes on."""
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - report and keep measuring the rest
        print(f"{fn.__name__}{args[:2]}: {type(error).__name__}: {error}", flush=True)
        FAILURES.append(f"{fn.__name__}{args[:2]}")
    torch.cuda.empty_cache()


def print_table(copy_gbps) -> str:
    lines = [
        f"Copy bandwidth: {copy_gbps:.0f} GB/s (4 GiB device-to-device copy, read + written)",
        "",
        "| kernel | shape | time ms | GB/s or TFLOP/s | of copy BW | SDPA ms | ours / SDPA |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in ROWS:
        rate = f"{r['GB/s']:.0f} GB/s" if "GB/s" in r else f"{r['TFLOP/s']:.0f} TFLOP/s"
        frac = f"{r['frac_copy_bw']:.0%}" if "frac_copy_bw" in r else "-"
        sdpa = f"{r['sdpa_ms']:.4f}" if "sdpa_ms" in r else "-"
        ratio = f"{r['vs_sdpa']:.2f}" if "vs_sdpa" in r else "-"
        lines.append(
            f"| {r['kernel']} | {r['shape']} | {r['ms']:.4f} | {rate} | {frac} | {sdpa} | {ratio} |"
        )
    return "\n".join(lines)
