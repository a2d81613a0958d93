"""The block manager through a real gRPC server on 127.0.0.1, port 0."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pagedserve.blockmgr.client import BlockManagerClient
from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from pagedserve.blockmgr.ops import (
    NO_ROOM,
    AllocateOp,
    AppendBatchOp,
    AppendOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    SwapInOp,
    SwapOutOp,
)
from pagedserve.blockmgr.service import MAX_WORKERS, SERVICE_NAME, serve
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb
from pagedserve.blockmgr.v1 import blockmgr_pb2_grpc as pb_grpc

from .helpers import make_pool_info
from .snapshot import snapshot

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server():
    # Extents of one block: the exact ids below pin least-recently-freed order.
    running = serve(BlockManagerConfig(port=0, lease_ms=10_000, extent_blocks=1))
    yield running
    running.stop(grace_s=0.5)


@pytest.fixture
def client(server):
    with BlockManagerClient(f"127.0.0.1:{server.port}") as client:
        yield client


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.BlockManagerStub(channel)
    channel.close()


def test_pool_and_executor_registration_round_trip(client) -> None:
    info = make_pool_info(num_blocks=8, block_size_tokens=4, num_swap_blocks=4)
    pool_id = client.register_pool(info)
    registration = client.register_executor(pool_id, lease_ms=2000)
    assert registration.lease_ms == 2000
    assert registration.pool.shape == info.shape and registration.pool.pool_id == pool_id
    (listed,) = client.list_pools(pool_id)
    assert listed.executor_ids == (registration.executor_id,)
    assert listed.model_key == "tiny-model" and listed.num_swap_blocks == 4
    assert client.heartbeat(registration.executor_id) == 2000
    assert client.unregister_executor(registration.executor_id) == 0
    assert client.list_pools(pool_id)[0].executor_ids == ()


def test_step_operations_with_exact_ids(client) -> None:
    pool_id = client.register_pool(make_pool_info(num_blocks=8, block_size_tokens=4))
    ex = client.register_executor(pool_id).executor_id
    prompt = list(range(10))
    step = client.step(ex, [AllocateOp(1, prompt), ComputedOp(1, 10), FreeOp(1)])
    assert step.results[0].new_block_ids == (0, 1, 2)
    step = client.step(ex, [AllocateOp(2, prompt + [5]), ForkOp(2, 3), AppendOp(3, [6])])
    assert step.results[0].new_block_ids == (0, 1, 3) and step.results[0].num_cached_tokens == 8
    assert step.results[1].new_block_ids == (0, 1, 3)
    assert step.results[2].replaced_positions == (2,) and step.results[2].replaced_block_ids == (4,)
    assert (step.copy_src_block_ids, step.copy_dst_block_ids) == ([3], [4])
    step = client.step(ex, [SwapOutOp(2), SwapInOp(2), AllocateOp(9, list(range(20)))])
    assert step.swap_out_device_block_ids == [0, 1, 3]
    assert step.swap_in_device_block_ids == [5, 6, 7]
    assert step.results[2] == NO_ROOM
    assert step.num_free_blocks == 2  # block 3, the copy source, is free again after the step
    stats = client.get_stats(pool_id)
    assert (stats.used_blocks, stats.shared_blocks, stats.num_sequences) == (
        6,
        0,
        2,
    )  # swapping seq 2 out unshared blocks 0 and 1
    assert stats.free_blocks + stats.used_blocks + stats.cached_blocks == stats.total_blocks
    assert stats.prefix_cache_hit_rate == pytest.approx(8 / 21)


BAD_STEPS = [
    ([pb.BlockOp(free=pb.FreeOp(seq_id=7))], grpc.StatusCode.NOT_FOUND, "ops[1]: free.seq_id"),
    (
        [pb.BlockOp(allocate=pb.AllocateOp(seq_id=1, token_ids=[1]))],
        grpc.StatusCode.ALREADY_EXISTS,
        "ops[1]: allocate.seq_id",
    ),
    (
        [pb.BlockOp(computed=pb.ComputedOp(seq_id=1, num_computed_tokens=99))],
        grpc.StatusCode.FAILED_PRECONDITION,
        "ops[1]: computed.num_computed_tokens",
    ),
    (
        [pb.BlockOp(append=pb.AppendOp(seq_id=1))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "ops[1]: append.token_ids",
    ),
    ([pb.BlockOp()], grpc.StatusCode.INVALID_ARGUMENT, "ops[1]: no operation set"),
]


@pytest.mark.parametrize(("bad_ops", "code", "where"), BAD_STEPS)
def test_bad_step_maps_to_status_and_changes_nothing(server, client, stub, bad_ops, code, where):
    pool_id = client.register_pool(make_pool_info())
    ex = client.register_executor(pool_id).executor_id
    client.step(ex, [AllocateOp(1, [1, 2, 3, 4, 5]), ComputedOp(1, 4)])
    before = snapshot(server.manager)
    good = pb.BlockOp(
        allocate=pb.AllocateOp(seq_id=2, token_ids=[1, 2, 3, 4, 9], use_prefix_cache=True)
    )
    with pytest.raises(grpc.RpcError) as raised:
        stub.Step(pb.StepRequest(executor_id=ex, ops=[good, *bad_ops]))
    assert raised.value.code() == code
    assert where in raised.value.details()
    assert snapshot(server.manager) == before


def test_client_raises_typed_errors(client) -> None:
    pool_id = client.register_pool(make_pool_info())
    ex = client.register_executor(pool_id).executor_id
    client.step(ex, [AllocateOp(1, [1, 2])])
    with pytest.raises(NotFoundError):
        client.step("nobody", [FreeOp(1)])
    with pytest.raises(AlreadyExistsError):
        client.step(ex, [ForkOp(1, 1)])
    with pytest.raises(FailedPreconditionError):
        client.step(ex, [SwapInOp(1)])
    with pytest.raises(InvalidArgumentError):
        client.register_executor(pool_id, lease_ms=10**9)
    with pytest.raises(NotFoundError):
        client.get_stats("pool-404")


def test_register_pool_rejects_unspecified_device_kind(stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.RegisterPool(
            pb.RegisterPoolRequest(pool=pb.PoolInfo(num_blocks=4, block_size_tokens=4))
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "device_kind" in raised.value.details()


def test_lease_expiry_through_the_service() -> None:
    running = serve(BlockManagerConfig(port=0, lease_ms=150))
    try:
        with BlockManagerClient(f"127.0.0.1:{running.port}") as client:
            pool_id = client.register_pool(make_pool_info())
            kept = client.register_executor(pool_id, lease_ms=5000).executor_id
            lost = client.register_executor(pool_id).executor_id
            assert client.step(lost, [AllocateOp(1, [1, 2, 3, 4, 5])]).results[0].ok
            client.step(kept, [AllocateOp(1, [9])])
            deadline = time.monotonic() + 5.0
            # Nobody calls for the lost executor: the reaper must free it.
            while client.get_stats(pool_id).num_executors != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = client.get_stats(pool_id)
            assert (stats.num_executors, stats.num_sequences, stats.used_blocks) == (1, 1, 1)
            with pytest.raises(NotFoundError):
                client.heartbeat(lost)
            assert client.heartbeat(kept) == 5000
    finally:
        running.stop(grace_s=0.5)


def test_health_and_reflection(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health_stub = health_pb2_grpc.HealthStub(channel)
        reply = health_stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(reflection_stub.ServerReflectionInfo(iter([request])))
        names = {service.name for service in response.list_services_response.service}
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


def test_main_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pagedserve.blockmgr.service", "--port", "0", "--lease-ms", "500"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        lines = []
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "".join(lines)
        assert any("lease_ms=500" in line for line in lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def test_client_packs_decode_appends_and_results_stay_in_place(server, client, stub) -> None:
    pool_id = client.register_pool(make_pool_info(num_blocks=8, block_size_tokens=2))
    ex = client.register_executor(pool_id).executor_id
    client.step(ex, [AllocateOp(1, [1]), AllocateOp(2, [1, 2]), AllocateOp(3, [5])])
    step = client.step(
        ex,
        [AppendOp(1, [7]), AppendOp(2, [8]), ComputedOp(1, 1), AppendOp(3, [9]), AppendOp(1, [4])],
    )
    # Sequence 2 crossed a block boundary; sequence 1 did on its second append.
    assert [result.new_block_ids for result in step.results] == [(), (3,), (), (), (4,)]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Step(
            pb.StepRequest(
                executor_id=ex,
                ops=[pb.BlockOp(append_batch=pb.AppendBatchOp(seq_ids=[1, 9], token_ids=[1, 1]))],
            )
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ops[1]: append_batch.seq_id" in raised.value.details()
    assert len(server.manager.sequences(ex)[1].token_ids) == 3  # the batch was undone
    with pytest.raises(InvalidArgumentError, match="append_batch"):
        client.step(ex, [AppendBatchOp([1, 2], [1])])


def test_open_reflection_streams_do_not_stall_steps(server, client) -> None:
    """Block-manager calls have a thread of their own: long-lived streams of
    the other services (a reflection client that keeps its stream open holds
    a server worker) must not take every worker away from Step."""
    pool_id = client.register_pool(make_pool_info(num_blocks=8, block_size_tokens=2))
    ex = client.register_executor(pool_id).executor_id
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        held_open = []
        for _ in range(MAX_WORKERS):  # every worker for the other services
            requests: queue.SimpleQueue = queue.SimpleQueue()
            requests.put(list_services)
            stream = reflection_stub.ServerReflectionInfo(iter(requests.get, None))
            assert next(stream).list_services_response.service  # the stream is being served
            held_open.append((requests, stream))
        step = client.step(ex, [AllocateOp(1, [1, 2, 3])])
        assert step.results[0].new_block_ids == (0, 1)
        assert client.get_stats(pool_id).used_blocks == 2
        for requests, stream in held_open:
            requests.put(None)  # ends the request stream
            assert list(stream) == []


def test_unparsable_request_is_invalid_argument(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw_step = channel.unary_unary(f"/{SERVICE_NAME}/Step")
        with pytest.raises(grpc.RpcError) as raised:
            raw_step(b"\xff\xff\xff")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in raised.value.details()
