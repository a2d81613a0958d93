"""Service settings: flags over environment over defaults, secrets from files, validation."""

from __future__ import annotations

import pytest

from pagedserve.common.config import ConfigError, parse_config
from pagedserve.gateway.config import GatewayConfig


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
