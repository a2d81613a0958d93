"""compose.yaml runs real `pagedserve` subcommands with real flags, on the default ports."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pagedserve.cli import COMMANDS

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "compose.yaml").read_text())
SERVICES = {"blockmgr": 50061, "kvpool": 50081, "executor": 50071, "gateway": 50051}


@functools.cache
def help_text(subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pagedserve.cli", subcommand, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def default_port(service: str) -> int:
    """The port a service listens on when given no --port: its config dataclass's default."""
    from pagedserve.blockmgr.config import BlockManagerConfig
    from pagedserve.executor.config import ExecutorConfig
    from pagedserve.executor.pool_keeper import PoolKeeperConfig
    from pagedserve.gateway.config import GatewayConfig

    configs = {
        "blockmgr": BlockManagerConfig,
        "kvpool": PoolKeeperConfig,
        "executor": ExecutorConfig,
        "gateway": GatewayConfig,
    }
    return configs[service]().port


def test_every_process_kind_has_a_service():
    assert set(SERVICES) <= set(COMPOSE["services"])


@pytest.mark.parametrize("name", SERVICES)
def test_command_is_a_real_subcommand_with_real_flags(name):
    command = COMPOSE["services"][name]["command"]
    subcommand, args = command[0], command[1:]
    assert subcommand in COMMANDS
    flags = [arg for arg in args if arg.startswith("--")]
    assert flags
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s,=]", help_text(subcommand)), (
            f"{flag} is not a flag of {subcommand}"
        )


@pytest.mark.parametrize("name,port", SERVICES.items())
def test_ports_agree_with_the_defaults(name, port):
    command = COMPOSE["services"][name]["command"]
    assert command[command.index("--port") + 1] == str(port)
    assert default_port(command[0]) == port
    healthcheck = " ".join(COMPOSE["services"][name]["healthcheck"]["test"])
    assert f":{port}" in healthcheck


def test_internal_addresses_point_at_the_right_services():
    services = COMPOSE["services"]
    for name in ("kvpool", "executor"):
        command = services[name]["command"]
        assert command[command.index("--blockmgr") + 1] == f"blockmgr:{SERVICES['blockmgr']}"
    gateway = services["gateway"]["command"]
    assert gateway[gateway.index("--executors") + 1] == f"executor:{SERVICES['executor']}"


def test_executor_keeps_triton_cache_on_a_named_volume():
    """A recreated executor container finds its compiled kernels (start-up in
    about a second, not minutes of compiling)."""
    executor = COMPOSE["services"]["executor"]
    cache_dir = executor["environment"]["TRITON_CACHE_DIR"]
    volumes = dict(volume.split(":", 1) for volume in executor["volumes"])
    assert volumes.get("triton-cache") == cache_dir
    assert "triton-cache" in COMPOSE["volumes"]
