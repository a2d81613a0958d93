"""Conversions at the edge: the hand-built Step response bytes, the packing of
single-token appends, and round trips of the plain types."""

from __future__ import annotations

from pagedserve.blockmgr import convert
from pagedserve.blockmgr.ops import (
    NO_ROOM,
    OK_EMPTY,
    AllocateOp,
    AppendBatchOp,
    AppendOp,
    ComputedOp,
    FreeOp,
    OpResult,
    StepResult,
)
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb

from .helpers import make_pool_info


def sample_step() -> StepResult:
    return StepResult(
        results=[
            OK_EMPTY,
            NO_ROOM,
            OpResult(True, new_block_ids=(300, 2), num_cached_tokens=16),
            OpResult(True, replaced_positions=(1,), replaced_block_ids=(7,)),
            OK_EMPTY,
        ],
        copy_src_block_ids=[3],
        copy_dst_block_ids=[7],
        swap_out_device_block_ids=[1, 2],
        swap_out_host_block_ids=[0, 1],
        num_free_blocks=200_000,
    )


def test_hand_built_response_bytes_parse_like_the_message() -> None:
    step = sample_step()
    parsed = pb.StepResponse.FromString(convert.step_result_to_bytes(step))
    assert parsed == convert.step_result_to_pb(step)
    assert len(parsed.results) == 5 and not parsed.results[1].ok


def test_response_bytes_round_trip_to_the_same_step() -> None:
    step = sample_step()
    assert convert.step_result_from_bytes(convert.step_result_to_bytes(step)) == step
    all_ok = StepResult(results=[OK_EMPTY] * 3, num_free_blocks=1)
    back = convert.step_result_from_bytes(convert.step_result_to_bytes(all_ok))
    assert back == all_ok and back.results[0] is OK_EMPTY


def test_single_token_append_runs_are_packed() -> None:
    ops = [
        AppendOp(1, [5]),
        AppendOp(2, [6]),
        AppendOp(3, [7, 8]),
        AppendOp(4, [9]),
        ComputedOp(1, 3),
        AppendOp(5, [1]),
        AppendOp(6, [2]),
    ]
    request = convert.step_request_to_pb("ex", ops)
    kinds = [message.WhichOneof("op") for message in request.ops]
    assert kinds == ["append_batch", "append", "append", "computed", "append_batch"]
    assert list(request.ops[0].append_batch.seq_ids) == [1, 2]
    assert list(request.ops[0].append_batch.token_ids) == [5, 6]
    assert list(request.ops[2].append.token_ids) == [9]


def test_tagged_ops_carry_the_sub_messages() -> None:
    request = convert.step_request_to_pb(
        "ex", [AllocateOp(1, [1, 2], "salt", True), FreeOp(2), AppendBatchOp([1, 2], [3, 4])]
    )
    request.ops.add()  # nothing set
    tagged = convert.tagged_ops_from_pb(request.ops)
    assert [kind for kind, _ in tagged] == ["allocate", "free", "append_batch", None]
    assert tagged[0][1].cache_salt == "salt" and list(tagged[0][1].token_ids) == [1, 2]


def test_pool_info_round_trip() -> None:
    info = make_pool_info()
    assert convert.pool_info_from_pb(convert.pool_info_to_pb(info)) == info
