"""Compiling the kernels and running a few made-up requests before serving, so
that no user waits for a JIT.

On a GPU, Triton compiles a kernel the first time it meets a new variant: a
dtype, a set of compile-time constants, or a new specialization of an integer
argument (equal to 1, divisible by 16). The first requests an executor served
paid for those compilations (docs/gpu.md: 499 output tokens/s on the first
pass against 1,707 in steady state). First, kernels.precompile launches every
attention and cache kernel in every configuration its launch rules can choose
for the model's shape, on scratch tensors (never the shared pool). Then the
warm-up sends requests of made-up token ids through the real engine
(scheduler, block manager, model, sampler, greedy and drawn), which also
compiles the layer ops' and the sampler's kernels and brings torch's own up:
prefills of several lengths in one batch, then decodes in batches that shrink
to one as the requests end, then a lone request. Their blocks come from the
block manager like any request's and are freed when they end; with prefix
caching off they leave nothing to match.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pagedserve import kernels
from pagedserve.executor.engine import Engine
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.outputs import SequenceEvent
from pagedserve.executor.request import SamplingOptions

log = logging.getLogger(__name__)


@dataclass
class CompletionSink:
    """Counts a batch of requests' tokens and ends; `done` is set when the last
    one ends (called on the engine thread)."""

    num_requests: int
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    num_tokens: int = 0

    def deliver(self, events: list[SequenceEvent]) -> None:
        for event in events:
            self.num_tokens += len(event.token_ids)
            if event.error_code is not None:
                self.errors.append(f"{event.request_id}: {event.error_message}")
            if event.request_finished:
                self.num_requests -= 1
                if self.num_requests == 0:
                    self.done.set()


def warm_up_waves(block_size_tokens: int, vocab_size: int) -> list[list[tuple[list[int], int]]]:
    """(prompt token ids, new tokens) of each request, wave by wave."""

    def prompt(length: int) -> list[int]:
        return [(7 * position + 3) % vocab_size for position in range(length)]

    return [
        [
            (prompt(2 * block_size_tokens + 3), 9),
            (prompt(block_size_tokens), 5),
            (prompt(3), 2),
        ],
        [(prompt(block_size_tokens + 1), 3)],
    ]


def precompile_kernels(runner: ModelRunner) -> float:
    """kernels.precompile for the runner's model and pool; returns the seconds
    it took (about 0 on CPU, where the torch references serve)."""
    config = runner.model.config
    model_dtype = next(runner.model.parameters()).dtype
    started_s = time.monotonic()
    launches = kernels.precompile(
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        model_dtype,
        runner.block_size,
        runner.device,
        cache_dtype=runner.kv_pool.dtype,
    )
    elapsed_s = time.monotonic() - started_s
    log.info("warm-up: kernels precompiled (%d launches) in %.2f s", launches, elapsed_s)
    return elapsed_s


def warm_up(engine: Engine, timeout_s: float) -> float:
    """Precompiles the kernels, then runs the warm-up requests to the end;
    returns the seconds both took. Raises RuntimeError when a request fails or
    the requests run past timeout_s; ValueError from kernels.precompile on a
    model shape the kernels do not support."""
    precompile_s = precompile_kernels(engine.runner)
    started_s = time.monotonic()
    num_tokens = 0
    waves = warm_up_waves(engine.runner.block_size, engine.vocab_size)
    for wave_index, wave in enumerate(waves):
        sink = CompletionSink(len(wave))
        for request_index, (prompt_token_ids, max_tokens) in enumerate(wave):
            # Greedy, except the first request of a wave, which draws its
            # tokens (top-k and top-p too): the sampler's kernel compiles here.
            drawn = request_index == 0
            sampling = SamplingOptions(
                max_tokens=max_tokens,
                temperature=1.0 if drawn else 0.0,
                top_p=0.9 if drawn else 1.0,
                top_k=50 if drawn else 0,
                seed=0,
                use_prefix_cache=False,
            )
            engine.submit(f"warm-up-{wave_index}-{request_index}", prompt_token_ids, sampling, sink)
        left_s = timeout_s - (time.monotonic() - started_s)
        if not sink.done.wait(max(0.0, left_s)):
            raise RuntimeError(f"warm-up did not finish within {timeout_s:.0f} s")
        if sink.errors:
            raise RuntimeError("warm-up request failed: " + "; ".join(sink.errors))
        num_tokens += sink.num_tokens
    elapsed_s = time.monotonic() - started_s
    log.info("warm-up: %d tokens generated in %.2f s, before serving", num_tokens, elapsed_s)
    return precompile_s + elapsed_s
