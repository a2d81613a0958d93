"""One stack for the whole end-to-end suite: every service its own process, two executors on one pool."""

from __future__ import annotations

import pytest

from tests.stack import start_stack


@pytest.fixture(scope="session")
def stack():
    # 256 blocks of 16 tokens: room for 32 concurrent requests of the suite.
    running = start_stack("--num-blocks", "512", num_executors=2)
    yield running
    # The suite's last word: no sequence still holds a block.
    stats = running.wait_no_blocks_held()
    code = running.stop()
    assert stats.used_blocks == 0 and stats.num_sequences == 0, stats
    assert code == 0, f"pagedserve up exited with {code}"


@pytest.fixture(scope="session")
def client(stack):
    return stack.generation_stub()
