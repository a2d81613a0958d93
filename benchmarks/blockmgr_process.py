"""The block manager as it is deployed: its own process, on loopback.

A server in the benchmark's own process would share its interpreter lock, so
the Step call would be timed with the service's Python and the caller's on
one lock, which a deployment does not do.
"""

from __future__ import annotations

import re
import subprocess
import sys


def start_blockmgr_process(*args: str) -> tuple[subprocess.Popen, str]:
    """(the process, its host:port): `python -m pagedserve.blockmgr.service
    --port 0 ARGS...`, once it listens. Raises RuntimeError if it exits first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pagedserve.blockmgr.service", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    while True:
        line = process.stderr.readline()
        if not line:
            raise RuntimeError("block manager process exited")
        match = re.search(r"listening on ([\d.]+:\d+)", line)
        if match:
            return process, match.group(1)


def stop_blockmgr_process(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)
