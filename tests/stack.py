"""Starts the real services as separate processes on free loopback ports, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc

from pagedserve.blockmgr.v1 import blockmgr_pb2, blockmgr_pb2_grpc
from pagedserve.common.security import open_channel, wait_channel_ready
from pagedserve.v1 import generation_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    """`pagedserve up` running in a child process, with the addresses of its services."""

    process: subprocess.Popen
    gateway: str
    blockmgr: str
    executors: list[str]
    channels: list[grpc.Channel] = field(default_factory=list)
    # TLS credentials for every port (a stack started with --tls-cert), None: plaintext.
    credentials: grpc.ChannelCredentials | None = None

    def channel(self, address: str, options=None) -> grpc.Channel:
        channel = open_channel(address, self.credentials, options)
        self.channels.append(channel)
        return channel

    def generation_stub(self) -> generation_pb2_grpc.TextGenerationStub:
        return generation_pb2_grpc.TextGenerationStub(self.channel(self.gateway))

    def blockmgr_stub(self) -> blockmgr_pb2_grpc.BlockManagerStub:
        return blockmgr_pb2_grpc.BlockManagerStub(self.channel(self.blockmgr))

    def pool_stats(self) -> blockmgr_pb2.GetStatsResponse:
        stub = self.blockmgr_stub()
        (pool,) = stub.ListPools(blockmgr_pb2.ListPoolsRequest()).pools
        return stub.GetStats(blockmgr_pb2.GetStatsRequest(pool_id=pool.pool_id))

    def wait_no_blocks_held(self, timeout_s: float = 10.0) -> blockmgr_pb2.GetStatsResponse:
        """Frees reach the block manager at the executor's next step: poll briefly."""
        deadline = time.monotonic() + timeout_s
        stats = self.pool_stats()
        while (stats.used_blocks or stats.num_sequences) and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.pool_stats()
        return stats

    def stop(self) -> int:
        for channel in self.channels:
            channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def start_stack(
    *extra_flags: str,
    num_executors: int = 1,
    startup_timeout_s: float = 240,
    env: dict[str, str] | None = None,
    stderr=None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Stack:
    """env: variables added to this process's environment for the stack; stderr: where
    the services' logs go (a file object; None: this process's stderr); credentials:
    how the test reaches the services when extra_flags turn TLS on."""
    ports = {name: free_port() for name in ("gateway", "blockmgr", "kvpool")}
    executor_port = free_port()
    command = [
        sys.executable,
        "-m",
        "pagedserve.cli",
        "up",
        "--port",
        str(ports["gateway"]),
        "--blockmgr-port",
        str(ports["blockmgr"]),
        "--kvpool-port",
        str(ports["kvpool"]),
        "--executor-port",
        str(executor_port),
        "--num-executors",
        str(num_executors),
        "--device",
        "cpu",
        "--shutdown-grace-s",
        "10",
        *extra_flags,
    ]
    environment = dict(
        os.environ, PAGEDSERVE_LOG_LEVEL=os.environ.get("PAGEDSERVE_LOG_LEVEL", "WARNING")
    )
    environment.update(env or {})
    process = subprocess.Popen(command, env=environment, stderr=stderr)
    gateway = f"127.0.0.1:{ports['gateway']}"
    stack = Stack(
        process,
        gateway,
        f"127.0.0.1:{ports['blockmgr']}",
        [f"127.0.0.1:{executor_port + i}" for i in range(num_executors)],
        credentials=credentials,
    )
    deadline = time.monotonic() + startup_timeout_s
    with open_channel(gateway, credentials) as channel:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"pagedserve up exited with {process.returncode}")
            try:
                wait_channel_ready(channel, 1)
                break
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    stack.stop()
                    raise
    return stack
