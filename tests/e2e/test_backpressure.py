"""Gateway limits, and a SIGTERM under load that lets every in-flight stream finish."""

from __future__ import annotations

import os
import signal
import threading

import grpc
import pytest

from pagedserve.v1 import generation_pb2 as pb
from pagedserve.v1 import generation_pb2_grpc
from tests.stack import start_stack

NUM_STREAMS = 24
PER_CONNECTION = 20  # below NUM_STREAMS: one connection cannot hold them all
MAX_TOKENS = 24
LONG_RUN = pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)


def child_pids(pid: int) -> list[int]:
    """Direct children of pid, from /proc."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_limits_then_sigterm_under_load(tmp_path):
    log_path = tmp_path / "services.log"
    with open(log_path, "wb") as log_file:
        stack = start_stack(
            "--num-blocks",
            "256",
            "--max-queued-requests",
            str(NUM_STREAMS),
            "--max-prompt-tokens",
            "64",
            "--max-requests-per-connection",
            str(PER_CONNECTION),
            stderr=log_file,
        )
    try:
        service_pids = child_pids(stack.process.pid)
        assert len(service_pids) == 4  # blockmgr, kvpool, executor, gateway
        stub = stack.generation_stub()

        with pytest.raises(grpc.RpcError) as raised:
            stub.Generate(pb.GenerateRequest(prompt="word " * 200, sampling=LONG_RUN), timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-prompt-tokens" in raised.value.details()

        # One connection may hold PER_CONNECTION requests; the rest come on a second one.
        other_stub = generation_pb2_grpc.TextGenerationStub(
            stack.channel(stack.gateway, options=[("grpc.use_local_subchannel_pool", 1)])
        )
        streams = [
            (stub if i < PER_CONNECTION else other_stub).GenerateStream(
                pb.GenerateRequest(prompt=f"Count to {i}:", sampling=LONG_RUN), timeout=300
            )
            for i in range(NUM_STREAMS)
        ]
        # Every stream has produced a token, so all are in flight at the gateway.
        firsts = [next(stream) for stream in streams]
        assert all(first.token_ids for first in firsts)

        with pytest.raises(grpc.RpcError) as raised:
            stub.Generate(pb.GenerateRequest(prompt="Another one", sampling=LONG_RUN), timeout=60)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-requests-per-connection" in raised.value.details()

        # A third connection, under its own limit, meets the gateway's overall one.
        third_stub = generation_pb2_grpc.TextGenerationStub(
            stack.channel(stack.gateway, options=[("grpc.use_local_subchannel_pool", 1)])
        )
        with pytest.raises(grpc.RpcError) as raised:
            third_stub.Generate(
                pb.GenerateRequest(prompt="One more", sampling=LONG_RUN), timeout=60
            )
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-queued-requests" in raised.value.details()

        results: list[list] = [[] for _ in streams]

        def read(index: int) -> None:
            results[index] = [firsts[index], *streams[index]]

        readers = [threading.Thread(target=read, args=(i,)) for i in range(NUM_STREAMS)]
        for reader in readers:
            reader.start()
        stack.process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join()

        for responses in results:  # every in-flight stream ran to its end
            assert sum(len(r.token_ids) for r in responses) == MAX_TOKENS
            assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH

        assert stack.process.wait(120) == 0
        with pytest.raises(grpc.RpcError) as raised:
            stub.Generate(pb.GenerateRequest(prompt="Too late", sampling=LONG_RUN), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not [pid for pid in service_pids if is_alive(pid)]
    finally:
        stack.stop()
    log_text = log_path.read_text(errors="replace")
    # The executor drains and then unregisters: the block manager would report
    # (and the executor log) any sequence still holding blocks.
    assert "still held KV blocks" not in log_text
    assert "Traceback" not in log_text
