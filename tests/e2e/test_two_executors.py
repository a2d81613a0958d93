"""Two executor processes attached to one shared-memory pool both serve correctly."""

from __future__ import annotations

from pagedserve.blockmgr.v1 import blockmgr_pb2
from pagedserve.executor.v1 import executor_pb2, executor_pb2_grpc
from tests.reference import hf_encode, hf_greedy


def _generate_on(stack, address: str, prompt_ids: list[int], max_tokens: int) -> list[int]:
    stub = executor_pb2_grpc.ExecutorStub(stack.channel(address))
    sampling = executor_pb2.SamplingOptions(
        max_tokens=max_tokens, temperature=0, top_p=1, n=1, beam_width=1, eos_token_ids=[2]
    )
    submit = executor_pb2.SubmitRequest(
        request_id="direct", prompt_token_ids=prompt_ids, sampling=sampling
    )
    tokens = []
    for response in stub.Connect(iter([executor_pb2.ConnectRequest(submit=submit)]), timeout=120):
        for event in response.events:
            assert not event.HasField("error"), event.error.message
            tokens.extend(event.token_ids)
            if event.finish_reason:
                return tokens
    raise AssertionError("stream ended before the request finished")


def test_both_executors_share_one_pool_and_match_hf(stack):
    (pool,) = stack.blockmgr_stub().ListPools(blockmgr_pb2.ListPoolsRequest()).pools
    assert len(pool.executor_ids) == 2
    infos = [
        executor_pb2_grpc.ExecutorStub(stack.channel(a)).GetInfo(executor_pb2.GetInfoRequest())
        for a in stack.executors
    ]
    assert {info.pool_id for info in infos} == {pool.pool_id}
    assert len({info.executor_id for info in infos}) == 2
    prompt = hf_encode("The three laws of robotics are")
    expected = hf_greedy(prompt, 16)
    for address in stack.executors:
        assert _generate_on(stack, address, prompt, 16) == expected
