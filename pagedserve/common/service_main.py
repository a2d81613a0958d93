"""The `main` every asyncio service shares: settings, logging, tracing, run, flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pagedserve.common.config import log_config, parse_config
from pagedserve.common.logs import setup_logging
from pagedserve.common.tracing import init_tracing, shutdown_tracing

ConfigT = TypeVar("ConfigT")


def run_service(
    service: str,
    config_class: type[ConfigT],
    argv: list[str] | None,
    description: str,
    serve: Callable[[ConfigT, logging.Logger], Awaitable[None]],
) -> int:
    """Parses and prints the settings, sets up tracing before any channel or server
    exists, runs serve(config, log) until it returns, then flushes the spans."""
    log = setup_logging(service)
    config = parse_config(config_class, argv, f"pagedserve {service}", description)
    log_config(log, config)
    init_tracing(service)
    try:
        asyncio.run(serve(config, log))
    finally:
        shutdown_tracing()
    return 0
