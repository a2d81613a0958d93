"""Configuration of the block manager service: one dataclass, validated at
start; each field has one flag (--host, --port, --lease-ms) and one
environment variable (PAGEDSERVE_BLOCKMGR_HOST, _PORT, _LEASE_MS) that gives
the flag's default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

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

    def validate(self) -> BlockManagerConfig:
        """Returns self; raises ValueError naming the bad field."""
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} not in 0..65535")
        if not 1 <= self.lease_ms <= 3_600_000:
            raise ValueError(f"lease_ms: {self.lease_ms} not in 1..3600000")
        return self

    def describe(self) -> str:
        """One line for the start-up log."""
        return " ".join(f"{key}={value}" for key, value in asdict(self).items())

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
        parser.add_argument(
            "--port",
            type=int,
            default=int(environ.get(ENV_PREFIX + "PORT", defaults.port)),
            help="TCP port (0: any free port)",
        )
        parser.add_argument(
            "--lease-ms",
            dest="lease_ms",
            type=int,
            default=int(environ.get(ENV_PREFIX + "LEASE_MS", defaults.lease_ms)),
            help="default executor lease in milliseconds",
        )
        args = parser.parse_args(argv)
        return cls(host=args.host, port=args.port, lease_ms=args.lease_ms).validate()
