"""Token auth on every port (health open) and TLS to the gateway, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagedserve.blockmgr.v1 import blockmgr_pb2
from pagedserve.executor.v1 import executor_pb2, executor_pb2_grpc
from pagedserve.v1 import generation_pb2 as pb
from pagedserve.v1 import generation_pb2_grpc
from tests.certificates import self_signed_certificate
from tests.stack import free_port, start_stack

INTERNAL_TOKEN = "internal-secret-for-tests"
PUBLIC_TOKEN = "public-secret-for-tests"
REQUEST = pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(max_tokens=2))


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def secured_stack():
    stack = start_stack(
        "--num-blocks",
        "64",
        "--internal-token",
        INTERNAL_TOKEN,
        "--public-token",
        PUBLIC_TOKEN,
    )
    yield stack
    assert stack.stop() == 0


def assert_unauthenticated(call) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, raised.value


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), bearer(INTERNAL_TOKEN)])
def test_gateway_refuses_anything_but_the_public_token(secured_stack, metadata):
    stub = secured_stack.generation_stub()
    assert_unauthenticated(lambda: stub.Generate(REQUEST, metadata=metadata, timeout=60))
    assert_unauthenticated(
        lambda: list(stub.GenerateStream(REQUEST, metadata=metadata, timeout=60))
    )


def test_gateway_serves_the_public_token(secured_stack):
    stub = secured_stack.generation_stub()
    response = stub.Generate(REQUEST, metadata=bearer(PUBLIC_TOKEN), timeout=120)
    assert response.usage.completion_tokens == 2


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), bearer(PUBLIC_TOKEN)])
def test_internal_services_refuse_anything_but_the_internal_token(secured_stack, metadata):
    blockmgr = secured_stack.blockmgr_stub()
    assert_unauthenticated(
        lambda: blockmgr.ListPools(blockmgr_pb2.ListPoolsRequest(), metadata=metadata, timeout=10)
    )
    executor = executor_pb2_grpc.ExecutorStub(secured_stack.channel(secured_stack.executors[0]))
    assert_unauthenticated(
        lambda: executor.GetInfo(executor_pb2.GetInfoRequest(), metadata=metadata, timeout=10)
    )


def test_internal_services_serve_the_internal_token(secured_stack):
    blockmgr = secured_stack.blockmgr_stub()
    pools = blockmgr.ListPools(
        blockmgr_pb2.ListPoolsRequest(), metadata=bearer(INTERNAL_TOKEN), timeout=10
    ).pools
    assert len(pools) == 1
    executor = executor_pb2_grpc.ExecutorStub(secured_stack.channel(secured_stack.executors[0]))
    info = executor.GetInfo(
        executor_pb2.GetInfoRequest(), metadata=bearer(INTERNAL_TOKEN), timeout=10
    )
    assert info.num_blocks == 64


def test_health_stays_open(secured_stack):
    for address in (secured_stack.gateway, secured_stack.blockmgr, secured_stack.executors[0]):
        stub = health_pb2_grpc.HealthStub(secured_stack.channel(address))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, address


def test_tls_round_trip_to_the_gateway(secured_stack, tmp_path):
    cert_file, key_file = self_signed_certificate(tmp_path)
    port = free_port()
    environment = dict(os.environ, PAGEDSERVE_INTERNAL_TOKEN=INTERNAL_TOKEN)
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pagedserve.cli",
            "gateway",
            "--port",
            str(port),
            "--executors",
            secured_stack.executors[0],
            "--tls-cert",
            cert_file,
            "--tls-key",
            key_file,
        ],
        env=environment,
    )
    try:
        with open(cert_file, "rb") as file:
            credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
            stub = generation_pb2_grpc.TextGenerationStub(channel)
            response = stub.Generate(REQUEST, timeout=120)
        assert response.usage.completion_tokens == 2
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError) as raised:
                generation_pb2_grpc.TextGenerationStub(plain).Generate(REQUEST, timeout=10)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gateway.terminate()
        assert gateway.wait(60) == 0
