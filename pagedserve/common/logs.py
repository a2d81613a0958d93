"""One logging format for every service, so interleaved logs of `pagedserve up` read well."""

from __future__ import annotations

import logging
import os


def setup_logging(service_name: str) -> logging.Logger:
    """Configures the root logger once per process and returns the service's logger."""
    level = os.environ.get("PAGEDSERVE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [{service_name}] %(name)s: %(message)s",
    )
    return logging.getLogger(f"pagedserve.{service_name}")
