"""The scheduler against a real block manager (gRPC on 127.0.0.1), without a
model: a request's forks, swapped out together, come back as soon as the
blocks they hold between them fit, shared blocks counted once."""

from __future__ import annotations

import itertools

import pytest
import torch

from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.service import serve
from pagedserve.executor.blockmgr_link import BlockManagerLink
from pagedserve.executor.kv_pool import PoolSpec
from pagedserve.executor.request import Request, SamplingOptions, Sequence, SequenceStatus
from pagedserve.executor.scheduler import Scheduler, SchedulerConfig

BLOCK_SIZE = 4
MAX_CONTEXT = 1024
TOKEN = 7  # every sampled token: no stop token, so sequences end by length


@pytest.fixture
def link():
    server = serve(BlockManagerConfig(port=0, lease_ms=60_000))
    link = BlockManagerLink(f"127.0.0.1:{server.port}")
    link.wait_ready(10.0)
    yield link
    link.close()
    server.stop(grace_s=0.5)


def make_scheduler(link, num_blocks: int) -> tuple[Scheduler, str]:
    spec = PoolSpec(
        num_layers=1, num_blocks=num_blocks, block_size_tokens=BLOCK_SIZE, num_kv_heads=1,
        head_dim=8, dtype=torch.float32,
    )  # fmt: skip
    pool_id = link.register_pool(spec, "cpu", 0, b"", "test-model", num_swap_blocks=64)
    executor_id = link.register_executor(pool_id).executor_id
    config = SchedulerConfig(
        max_num_seqs=16, max_num_batched_tokens=256, block_size_tokens=BLOCK_SIZE,
        num_blocks=num_blocks, watermark_blocks=0, preemption_mode="swap",
    )  # fmt: skip
    return Scheduler(config, executor_id, link.step), pool_id


class Driver:
    """Does what the engine does around the scheduler, with a fixed token for
    every sample: computed progress, parallel samples forked from the
    prompt's one prefill, one token per sampled sequence."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()

    def submit(self, name: str, prompt: list[int], max_tokens: int, n: int = 1) -> Request:
        sampling = SamplingOptions(max_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=0, n=n)
        request = Request(name, prompt, sampling, None, next(self._arrivals))
        request.sequences.append(Sequence(next(self._seq_ids), request, 0, prompt))
        self.scheduler.add(request)
        return request

    def step(self) -> None:
        plan = self.scheduler.schedule()
        for chunk in plan.chunks:
            chunk.seq.num_computed_tokens += chunk.num_new_tokens
        sampled = [chunk.seq for chunk in plan.chunks if chunk.needs_logits]
        for seq in sampled:
            request = seq.request
            samples = [seq]
            for index in range(len(request.sequences), request.sampling.n):
                child = Sequence(next(self._seq_ids), request, index, seq.token_ids)
                child.num_prompt_tokens = seq.num_prompt_tokens
                request.sequences.append(child)
                self.scheduler.fork(seq, child)
                samples.append(child)
            for sample in samples:
                self.scheduler.update(sample, TOKEN, 0.0, MAX_CONTEXT)


def statuses(request: Request) -> set[SequenceStatus]:
    return {seq.status for seq in request.sequences}


@pytest.mark.parametrize(
    "prompt_len", [16, 14], ids=["some-forks-appended", "partly-filled-block-shared"]
)
def test_swapped_forks_resume_once_their_shared_blocks_fit(link, prompt_len):
    """Blocks of 4 tokens, 20 in the pool. B (a long request) and C (a short
    one) arrive before A, whose 4 samples fork from one prompt. At the first
    appends after the fork the pool runs out: A, the latest arrival, is
    swapped out, its forks sharing the prompt's blocks. With a 16-token
    prompt two forks have appended into blocks of their own: A needs 6 host
    copies back and a block each for the other two's next token (8). With 14
    tokens the forks share the partly filled last block: 4 copies back, and
    each fork copies that block on its next append (8). When C ends, 12
    blocks are free besides B's reserve: A resumes while B still runs.
    Counted per sequence (4-5 blocks each, 16-20) it would wait for B's end."""
    scheduler, pool_id = make_scheduler(link, num_blocks=20)
    driver = Driver(scheduler)
    b = driver.submit("b", list(range(100, 116)), max_tokens=40)
    c = driver.submit("c", list(range(200, 232)), max_tokens=8)
    a = driver.submit("a", list(range(300, 300 + prompt_len)), max_tokens=4, n=4)
    swap_outs, resumed_beside_b = 0, False
    was_swapped = False
    for _ in range(200):
        if not scheduler.has_work():
            break
        driver.step()
        swapped = statuses(a) == {SequenceStatus.SWAPPED}
        if swapped and not was_swapped:
            swap_outs += 1
            assert not c.is_finished  # A went out before C ended
        if was_swapped and statuses(a) == {SequenceStatus.RUNNING}:
            resumed_beside_b = not b.is_finished
            # The swap-in kept every fork's progress: no prompt is computed again.
            assert all(seq.num_computed_tokens >= prompt_len for seq in a.sequences)
        # A fork that fell back to recomputation would wait without blocks.
        assert SequenceStatus.WAITING not in statuses(a) or not a.sequences[0].num_computed_tokens
        was_swapped = swapped
    assert swap_outs == 1 and resumed_beside_b
    assert a.is_finished and b.is_finished and c.is_finished
    assert [len(seq.output_token_ids()) for seq in a.sequences] == [4] * 4
    stats = link.stats(pool_id)
    assert stats.used_blocks == 0 and stats.swapped_blocks == 0 and stats.num_sequences == 0
