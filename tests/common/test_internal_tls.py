"""An internal link over mutual TLS with the token: the block manager served on
loopback with a certificate, called through the executor's BlockManagerLink."""

from __future__ import annotations

import logging

import grpc
import pytest

from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.service import serve
from pagedserve.common import security
from pagedserve.executor.blockmgr_link import BlockManagerLink
from tests.certificates import self_signed_certificate

TOKEN = "internal-secret-for-tests"


@pytest.fixture
def tls_blockmgr(tmp_path):
    cert_file, key_file = self_signed_certificate(tmp_path)
    config = BlockManagerConfig(
        port=0,
        internal_token=TOKEN,
        tls_cert=cert_file,
        tls_key=key_file,
        tls_client_ca=cert_file,  # clients present the same self-signed pair
    )
    running = serve(config)
    yield running, cert_file, key_file
    running.stop(grace_s=0)


def test_mutual_tls_with_the_token_works(tls_blockmgr):
    running, cert_file, key_file = tls_blockmgr
    credentials = security.channel_credentials(cert_file, cert_file, key_file)
    link = BlockManagerLink(f"127.0.0.1:{running.port}", token=TOKEN, credentials=credentials)
    try:
        link.wait_ready(timeout_s=10)
        with pytest.raises(Exception, match="expected one KV pool"):
            link.find_pool()  # answered: no pool registered yet
    finally:
        link.close()


@pytest.mark.parametrize("with_certificate,token", [(False, TOKEN), (True, ""), (True, "wrong")])
def test_missing_client_certificate_or_token_is_refused(tls_blockmgr, with_certificate, token):
    running, cert_file, key_file = tls_blockmgr
    if with_certificate:
        credentials = security.channel_credentials(cert_file, cert_file, key_file)
    else:
        credentials = security.channel_credentials(cert_file, "", "")
    link = BlockManagerLink(
        f"127.0.0.1:{running.port}", timeout_s=5, token=token, credentials=credentials
    )
    try:
        with pytest.raises(grpc.RpcError) as raised:
            link.find_pool()
        expected = (
            grpc.StatusCode.UNAUTHENTICATED if with_certificate else grpc.StatusCode.UNAVAILABLE
        )
        assert raised.value.code() == expected
    finally:
        link.close()


def test_exposed_without_token_warns(caplog):
    with caplog.at_level(logging.WARNING):
        security.warn_if_exposed("0.0.0.0", "", "gateway")
        security.warn_if_exposed("0.0.0.0", "a-token", "gateway")
        security.warn_if_exposed("127.0.0.1", "", "gateway")
    assert len([r for r in caplog.records if "without a token" in r.getMessage()]) == 1
