"""Service settings: flags over environment over defaults, secrets from files, validation."""

from __future__ import annotations

import pytest

from pagedserve.common.config import ConfigError, parse_config
from pagedserve.gateway.config import GatewayConfig
from pagedserve.launcher import UpConfig


def test_flag_beats_environment_beats_default(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_MAX_N", "4")
    assert parse_config(GatewayConfig, [], "test", "").max_n == 4
    assert parse_config(GatewayConfig, ["--max-n", "2"], "test", "").max_n == 2
    monkeypatch.delenv("PAGEDSERVE_MAX_N")
    assert parse_config(GatewayConfig, [], "test", "").max_n == GatewayConfig().max_n


def test_a_setting_can_come_from_a_secret_file(monkeypatch, tmp_path):
    secret = tmp_path / "public_token"
    secret.write_text("s3cret\n")
    monkeypatch.delenv("PAGEDSERVE_PUBLIC_TOKEN", raising=False)
    monkeypatch.setenv("PAGEDSERVE_PUBLIC_TOKEN_FILE", str(secret))
    assert parse_config(GatewayConfig, [], "test", "").public_token == "s3cret"


def test_invalid_setting_names_the_flag():
    with pytest.raises(ConfigError, match="--max-n"):
        parse_config(GatewayConfig, ["--max-n", "0"], "test", "")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--tls-cert", "c.pem"], "--tls-key"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-ca"),
        (["--tls-ca", "ca.pem"], "--tls-ca"),
        (["--tls-client-cert", "c.pem"], "--tls-client-key"),
        (
            ["--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a", "--tls-client-ca", "a"],
            "--tls-client-cert",
        ),
    ],
)
def test_up_refuses_incomplete_tls_settings(argv, named):
    with pytest.raises(ConfigError, match=named):
        parse_config(UpConfig, argv, "test", "")


def test_up_gives_internal_ports_client_certificates_and_the_gateway_none():
    config = parse_config(
        UpConfig,
        ["--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a"]
        + ["--tls-client-ca", "a", "--tls-client-cert", "cc", "--tls-client-key", "ck"],
        "test",
        "",
    )
    internal = config.tls_server_flags(internal=True)
    public = config.tls_server_flags(internal=False)
    assert internal == ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "a"]
    assert public == ["--tls-cert", "c", "--tls-key", "k"]
    assert config.tls_client_flags() == [
        "--tls-ca", "a", "--tls-client-cert", "cc", "--tls-client-key", "ck",
    ]  # fmt: skip
    assert parse_config(UpConfig, [], "test", "").tls_client_flags() == []
