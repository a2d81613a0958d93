"""Configuration: flags, environment defaults, validation."""

from __future__ import annotations

import pytest

from pagedserve.blockmgr.config import BlockManagerConfig


def test_defaults() -> None:
    config = BlockManagerConfig.from_argv([], environ={})
    assert (config.host, config.port, config.lease_ms) == ("127.0.0.1", 50061, 10_000)


def test_flags_override_environment() -> None:
    environ = {"PAGEDSERVE_BLOCKMGR_PORT": "6000", "PAGEDSERVE_BLOCKMGR_LEASE_MS": "700"}
    config = BlockManagerConfig.from_argv(["--port", "7000"], environ=environ)
    assert (config.port, config.lease_ms) == (7000, 700)
    assert "port=7000" in config.describe()


def test_extent_blocks_from_flag_or_environment() -> None:
    assert BlockManagerConfig.from_argv([], environ={}).extent_blocks == 64
    environ = {"PAGEDSERVE_BLOCKMGR_EXTENT_BLOCKS": "16"}
    assert BlockManagerConfig.from_argv([], environ=environ).extent_blocks == 16
    assert (
        BlockManagerConfig.from_argv(["--extent-blocks", "1"], environ=environ).extent_blocks == 1
    )


def test_group_extents_from_flag_or_environment() -> None:
    assert BlockManagerConfig.from_argv([], environ={}).group_extents == 8
    environ = {"PAGEDSERVE_BLOCKMGR_GROUP_EXTENTS": "4"}
    assert BlockManagerConfig.from_argv([], environ=environ).group_extents == 4
    argv = ["--group-extents", "8"]
    assert BlockManagerConfig.from_argv(argv, environ=environ).group_extents == 8


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--lease-ms", "0"],
        ["--host", ""],
        ["--extent-blocks", "0"],
        ["--group-extents", "0"],
    ],
)
def test_bad_values_are_rejected(argv) -> None:
    with pytest.raises(ValueError):
        BlockManagerConfig.from_argv(argv, environ={})


def test_main_refuses_a_bad_configuration() -> None:
    from pagedserve.blockmgr.service import main

    assert main(["--port", "70000"]) == 2
