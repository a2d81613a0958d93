"""Configuration of the block manager service: one dataclass, validated at
start; each field has one flag (--host, --port, --lease-ms) and one
environment variable (PAGEDSERVE_BLOCKMGR_HOST, _PORT, _LEASE_MS) that gives
the flag's default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS, DEFAULT_GROUP_EXTENTS
from pagedserve.common.config import env_setting

ENV_PREFIX = "PAGEDSERVE_BLOCKMGR_"


@dataclass(frozen=True)
class BlockManagerConfig:
    """Where the service listens and how long executor leases last."""

    # Interface to bind; loopback by default, since executors run beside it.
    host: str = "127.0.0.1"
    # TCP port; 0 asks the OS for a free one (tests).
    port: int = 50061
    # Lease granted to an executor that asks for none; it must heartbeat within it.
    lease_ms: int = 10_000
    # Placement runs, in blocks (extents.py): a sequence's blocks are laid
    # consecutively within runs this long where memory allows; 1: plain LRU order.
    extent_blocks: int = DEFAULT_EXTENT_BLOCKS
    # Extents a long sequence's run may grow through (extents.py); 1: runs
    # end with their extent. Extents of one block ignore it (plain LRU order).
    group_extents: int = DEFAULT_GROUP_EXTENTS
    # Port of the Prometheus /metrics endpoint; 0 turns it off.
    metrics_port: int = 0
    # Shared secret every caller but health checks must present; empty: none.
    # Its variable is PAGEDSERVE_INTERNAL_TOKEN, the same for every service.
    internal_token: str = ""
    # TLS of the port: certificate and key (PEM); with client_ca, mutual TLS.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""

    def validate(self) -> BlockManagerConfig:
        """Returns self; raises ValueError naming the bad field."""
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} not in 0..65535")
        if not 1 <= self.lease_ms <= 3_600_000:
            raise ValueError(f"lease_ms: {self.lease_ms} not in 1..3600000")
        if not 1 <= self.extent_blocks <= 65536:
            raise ValueError(f"extent_blocks: {self.extent_blocks} not in 1..65536")
        if not 1 <= self.group_extents <= 65536:
            raise ValueError(f"group_extents: {self.group_extents} not in 1..65536")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: {self.metrics_port} not in 0..65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_key: give both --tls-cert and --tls-key")
        return self

    def describe(self) -> str:
        """One line for the start-up log."""
        shown = asdict(self)
        shown["internal_token"] = "<set>" if self.internal_token else ""
        return " ".join(f"{key}={value}" for key, value in shown.items())

    @classmethod
    def from_argv(
        cls, argv: list[str], environ: Mapping[str, str] = os.environ
    ) -> BlockManagerConfig:
        """Parses flags over environment defaults over field defaults; validates.
        Raises SystemExit (argparse) on unknown flags, ValueError on bad values."""
        defaults = cls()
        parser = argparse.ArgumentParser(
            prog="pagedserve blockmgr", description="Serve the KV-cache block manager."
        )
        parser.add_argument(
            "--host", default=environ.get(ENV_PREFIX + "HOST", defaults.host), help="bind address"
        )
        for name, help_text in (
            ("port", "TCP port (0: any free port)"),
            ("lease_ms", "default executor lease in milliseconds"),
            (
                "extent_blocks",
                "lay a sequence's blocks consecutively in runs of this many (1: LRU order)",
            ),
            (
                "group_extents",
                "let a long sequence's run grow through this many extents (1: none)",
            ),
            ("metrics_port", "Prometheus /metrics port (0: off)"),
        ):
            parser.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                type=int,
                default=int(environ.get(ENV_PREFIX + name.upper(), getattr(defaults, name))),
                help=help_text,
            )
        parser.add_argument(
            "--internal-token",
            dest="internal_token",
            default=env_setting("PAGEDSERVE_INTERNAL_TOKEN", defaults.internal_token, environ),
            help="token callers must present (env PAGEDSERVE_INTERNAL_TOKEN; health stays open)",
        )
        for name, help_text in (
            ("tls_cert", "PEM certificate: serve TLS"),
            ("tls_key", "PEM private key of --tls-cert"),
            ("tls_client_ca", "PEM CA: require client certificates signed by it"),
        ):
            parser.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                default=environ.get(ENV_PREFIX + name.upper(), getattr(defaults, name)),
                help=help_text,
            )
        args = parser.parse_args(argv)
        return cls(**vars(args)).validate()
