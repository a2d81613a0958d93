"""Token auth on every port (health open) and TLS on every port, mutual on the
internal ones, on real processes started by `pagedserve up`."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagedserve.blockmgr.v1 import blockmgr_pb2
from pagedserve.executor.v1 import executor_pb2, executor_pb2_grpc
from pagedserve.v1 import generation_pb2 as pb
from pagedserve.v1 import generation_pb2_grpc
from tests.certificates import self_signed_certificate
from tests.stack import start_stack

INTERNAL_TOKEN = "internal-secret-for-tests"
PUBLIC_TOKEN = "public-secret-for-tests"
REQUEST = pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(max_tokens=2))


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """(certificate, key) files: one self-signed pair serves as every port's
    certificate, the CA that verifies it, and the services' client certificate."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def tls_credentials(certificate, client_certificate: bool = True) -> grpc.ChannelCredentials:
    cert_file, key_file = certificate
    with open(cert_file, "rb") as file:
        cert = file.read()
    if not client_certificate:
        return grpc.ssl_channel_credentials(root_certificates=cert)
    with open(key_file, "rb") as file:
        key = file.read()
    return grpc.ssl_channel_credentials(
        root_certificates=cert, private_key=key, certificate_chain=cert
    )


@pytest.fixture(scope="module")
def secured_stack(certificate):
    cert_file, key_file = certificate
    stack = start_stack(
        "--num-blocks",
        "64",
        "--internal-token",
        INTERNAL_TOKEN,
        "--public-token",
        PUBLIC_TOKEN,
        *("--tls-cert", cert_file, "--tls-key", key_file, "--tls-ca", cert_file),
        *("--tls-client-ca", cert_file, "--tls-client-cert", cert_file),
        *("--tls-client-key", key_file),
        credentials=tls_credentials(certificate),
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


def test_gateway_serves_tls_without_a_client_certificate(secured_stack, certificate):
    credentials = tls_credentials(certificate, client_certificate=False)
    with grpc.secure_channel(secured_stack.gateway, credentials) as channel:
        stub = generation_pb2_grpc.TextGenerationStub(channel)
        response = stub.Generate(REQUEST, metadata=bearer(PUBLIC_TOKEN), timeout=120)
    assert response.usage.completion_tokens == 2


@pytest.mark.parametrize("service", ["gateway", "blockmgr", "executor"])
def test_every_port_refuses_plaintext(secured_stack, service):
    address = {
        "gateway": secured_stack.gateway,
        "blockmgr": secured_stack.blockmgr,
        "executor": secured_stack.executors[0],
    }[service]
    with grpc.insecure_channel(address) as plain:
        stub = health_pb2_grpc.HealthStub(plain)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", ["blockmgr", "executor"])
def test_internal_ports_require_a_client_certificate(secured_stack, certificate, service):
    address = secured_stack.blockmgr if service == "blockmgr" else secured_stack.executors[0]
    credentials = tls_credentials(certificate, client_certificate=False)
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
