"""The cost of one empty unary gRPC call on loopback, with gRPC's default I/O
engine and with the setting every pagedserve process uses
(pagedserve/common/grpc_core.py), each side in a fresh process.

Run from the repository root:  python -m benchmarks.grpc_floor [--calls N] [--rounds R]
With --idle-ms 0,3,10: the same call with pagedserve's setting when both
sides have been idle that long before it (the client sleeps between calls),
as an executor's Step call is after a decode step on the GPU.
Not a test: figures depend on the machine (see docs/blockmgr.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import threading
import time
from importlib import metadata

ENGINES = {
    "grpc default": None,
    "pagedserve (EventEngine client/listener off)": "LOW_LATENCY",
}
METHOD = "/floor.Floor/Empty"


def serve() -> None:
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("floor.Floor", {"Empty": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    threading.Event().wait()


def measure(port: int, num_calls: int, idle_us: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        for _ in range(200):
            call(b"")
        samples = []
        gc.disable()
        for _ in range(num_calls):
            if idle_us:
                time.sleep(idle_us / 1e6)
            start = time.perf_counter()
            call(b"")
            samples.append(time.perf_counter() - start)
    samples.sort()
    print(samples[len(samples) // 2] * 1e3, samples[int(0.99 * len(samples))] * 1e3)


def environment(engine: str | None) -> dict[str, str]:
    from pagedserve.common.grpc_core import LOW_LATENCY_EXPERIMENTS

    env = dict(os.environ)
    env.pop("GRPC_EXPERIMENTS", None)
    if engine is not None:
        env["GRPC_EXPERIMENTS"] = LOW_LATENCY_EXPERIMENTS
    return env


def one_round(engine: str | None, num_calls: int, idle_us: int = 0) -> tuple[float, float]:
    # Without `import pagedserve`: the variable is set (or not) here, explicitly.
    env = environment(engine)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        port = int(server.stdout.readline())
        client = subprocess.run(
            [sys.executable, __file__, "--measure", str(port), str(num_calls), str(idle_us)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        p50, p99 = (float(value) for value in client.stdout.split())
        return p50, p99
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--idle-ms", default="", help="comma-separated idle gaps, ms")
    parser.add_argument("--measure", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.measure:
        measure(*args.measure)
        return
    print(
        f"python {platform.python_version()}, grpcio {metadata.version('grpcio')}, "
        f"{os.cpu_count()} cpus; empty unary call on 127.0.0.1, {args.calls} calls a round"
    )
    if args.idle_ms:
        gaps_ms = [float(gap) for gap in args.idle_ms.split(",")]
        for round_index in range(args.rounds):
            for gap_ms in gaps_ms:
                # Fewer calls when each waits: the round stays under a minute.
                num_calls = min(args.calls, 300) if gap_ms else args.calls
                p50, p99 = one_round("LOW_LATENCY", num_calls, round(gap_ms * 1000))
                print(
                    f"  round {round_index + 1}  idle {gap_ms:5.1f} ms before each call"
                    f"  p50 {p50:.3f} ms  p99 {p99:.3f} ms"
                )
        return
    for round_index in range(args.rounds):  # interleaved, so drift hits both alike
        for label, engine in ENGINES.items():
            p50, p99 = one_round(engine, args.calls)
            print(f"  round {round_index + 1}  {label:<46} p50 {p50:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
