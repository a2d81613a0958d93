"""Every service serves /metrics; one request moves the numbers it should."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pagedserve.executor.warm_up import warm_up_waves
from pagedserve.v1 import generation_pb2 as pb
from tests.stack import free_port, start_stack

NUM_BLOCKS = 128


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    matching = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert matching, f"{name} {labels} not exported"
    return sum(matching)


@pytest.fixture(scope="module")
def metrics_stack():
    base = free_port()
    stack = start_stack("--num-blocks", str(NUM_BLOCKS), "--metrics-port", str(base))
    stack.metrics_base = base
    yield stack
    assert stack.stop() == 0


def test_executor_warms_up_before_serving(metrics_stack):
    """Before any request: the warm-up's steps ran (the kernels met their shapes)
    and gave their blocks back."""
    executor_port = metrics_stack.metrics_base + 3
    stats = metrics_stack.wait_no_blocks_held()
    assert stats.used_blocks == 0 and stats.num_sequences == 0
    samples = scrape(executor_port)
    # The longest request of each wave takes one step per new token.
    waves = warm_up_waves(block_size_tokens=16, vocab_size=1000)
    least_steps = sum(max(new_tokens for _, new_tokens in wave) for wave in waves)
    assert value(samples, "pagedserve_executor_step_duration_seconds_count") >= least_steps
    assert value(samples, "pagedserve_executor_requests_running") == 0


def test_one_request_moves_the_metrics(metrics_stack):
    base = metrics_stack.metrics_base
    gateway_port, blockmgr_port, kvpool_port, executor_port = base, base + 1, base + 2, base + 3
    before = {port: scrape(port) for port in (gateway_port, blockmgr_port, executor_port)}
    prompt = "Paged attention keeps the KV cache in fixed-size blocks. " * 4  # > 2 blocks
    response = metrics_stack.generation_stub().Generate(
        pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=5, temperature=0)),
        timeout=120,
    )
    metrics_stack.wait_no_blocks_held()
    gateway = scrape(gateway_port)
    old = before[gateway_port]

    def moved(samples, old_samples, name, **labels):
        previous = (
            value(old_samples, name, **labels) if any(n == name for n, _ in old_samples) else 0.0
        )
        return value(samples, name, **labels) - previous

    assert moved(gateway, old, "pagedserve_gateway_requests_total", status="OK") == 1
    assert (
        moved(gateway, old, "pagedserve_gateway_prompt_tokens_total")
        == response.usage.prompt_tokens
    )
    assert (
        moved(gateway, old, "pagedserve_gateway_generation_tokens_total")
        == response.usage.completion_tokens
        == 5
    )
    for histogram in ("time_to_first_token", "time_per_output_token", "e2e_request_latency"):
        name = f"pagedserve_gateway_{histogram}_seconds_count"
        assert moved(gateway, old, name) == 1, name
    assert value(gateway, "pagedserve_gateway_e2e_request_latency_seconds_sum") >= value(
        gateway, "pagedserve_gateway_time_to_first_token_seconds_sum"
    )

    executor = scrape(executor_port)
    old = before[executor_port]
    assert moved(executor, old, "pagedserve_executor_step_duration_seconds_count") >= 5
    assert moved(executor, old, "pagedserve_executor_blockmgr_step_latency_seconds_count") >= 5
    assert value(executor, "pagedserve_executor_requests_running") == 0
    assert value(executor, "pagedserve_executor_requests_waiting") == 0
    assert value(executor, "pagedserve_executor_requests_swapped") == 0
    assert value(executor, "pagedserve_executor_preemptions_total") == 0

    blockmgr = scrape(blockmgr_port)
    old = before[blockmgr_port]
    assert moved(blockmgr, old, "pagedserve_blockmgr_rpc_latency_seconds_count", method="Step") >= 5
    free = value(blockmgr, "pagedserve_blockmgr_kv_blocks_free")
    used = value(blockmgr, "pagedserve_blockmgr_kv_blocks_used")
    cached = value(blockmgr, "pagedserve_blockmgr_kv_blocks_cached")
    assert used == 0
    assert cached >= 2  # the prompt's full blocks stay findable in the prefix cache
    assert free + used + cached == NUM_BLOCKS
    assert 0 <= value(blockmgr, "pagedserve_blockmgr_kv_utilization_ratio") <= 1
    # Exported; no live sequence has a table to measure now.
    assert value(blockmgr, "pagedserve_blockmgr_consecutive_blocks_ratio") == 0

    # The same prompt again hits the prefix cache.
    metrics_stack.generation_stub().Generate(
        pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=1)), timeout=120
    )
    assert value(scrape(blockmgr_port), "pagedserve_blockmgr_prefix_cache_hit_rate_ratio") > 0
    scrape(kvpool_port)  # the pool keeper's endpoint answers too
