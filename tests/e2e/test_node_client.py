"""The Node.js example client runs its five checks against the real stack."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[2] / "examples" / "node-client"
CHECKS = ["list_models", "unary", "stream", "abort", "invalid_argument"]
# npm ci fetches about 30 small packages; a slow registry takes minutes, not more.
NPM_CI_TIMEOUT_S = 300
# The client makes six generation calls, the longest 400 tokens cut short by Abort.
CLIENT_TIMEOUT_S = 180


def _node() -> str:
    """The node binary; missing is a failure, not a skip: CI machines have Node 20."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20 to run the Node client example")
    return node


@pytest.fixture(scope="module")
def node_client_dir() -> Path:
    """examples/node-client with its dependencies installed from the lockfile."""
    _node()
    if not (CLIENT_DIR / "node_modules").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: it comes with Node.js 20")
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    return CLIENT_DIR


# npm ci and the client together may take longer than the suite's 300 s default.
@pytest.mark.timeout(NPM_CI_TIMEOUT_S + CLIENT_TIMEOUT_S + 60)
def test_node_client_passes_its_checks(stack, node_client_dir):
    command = [_node(), "client.js", "--address", stack.gateway]
    try:
        finished = subprocess.run(
            command, cwd=node_client_dir, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"node client.js ran past {CLIENT_TIMEOUT_S} s; stdout so far:\n{expired.stdout}"
        )
    output = f"stdout:\n{finished.stdout}\nstderr:\n{finished.stderr}"
    assert finished.returncode == 0, f"node client.js exited with {finished.returncode}\n{output}"
    passed = {
        line.split()[1]
        for line in finished.stdout.splitlines()
        if line.startswith("CHECK ") and line.split()[2:3] == ["ok"]
    }
    missing = [check for check in CHECKS if check not in passed]
    assert not missing, f"checks without a 'CHECK <name> ok' line: {missing}\n{output}"
