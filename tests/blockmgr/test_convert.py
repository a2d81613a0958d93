"""Conversions at the edge: the hand-built Step response bytes, the packing of
single-token appends, and round trips of the plain types."""

from __future__ import annotations

import pytest

from pagedserve.blockmgr import convert, step_codec
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
            OpResult(True, new_block_ids=(5,)),
            OpResult(True, new_block_ids=(1_000_000,)),
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
    parsed = pb.StepResponse.FromString(step_codec.step_result_to_bytes(step))
    assert parsed == convert.step_result_to_pb(step)
    assert len(parsed.results) == 7 and not parsed.results[1].ok
    assert parsed.num_results == 7 and not parsed.result_indices


def test_a_dense_response_without_num_results_still_reads() -> None:
    """What a block manager that predates sparse results sends."""
    step = sample_step()
    older = convert.step_result_to_pb(step)
    older.ClearField("num_results")
    assert step_codec.step_result_from_bytes(older.SerializeToString()) == step


def test_sparse_response_lists_only_what_is_not_a_bare_ok() -> None:
    step = sample_step()
    parsed = pb.StepResponse.FromString(step_codec.step_result_to_bytes(step, sparse=True))
    assert parsed == convert.step_result_to_pb(step, sparse=True)
    assert list(parsed.result_indices) == [1, 2, 3, 4, 5] and parsed.num_results == 7
    assert [result.ok for result in parsed.results] == [False, True, True, True, True]
    assert list(parsed.results[3].new_block_ids) == [1_000_000]
    assert parsed.copy_dst_block_ids == [7] and parsed.num_free_blocks == 200_000


def test_results_are_read_from_bytes_around_runs_of_ok() -> None:
    results = [OK_EMPTY] * 3 + [OpResult(True, new_block_ids=(200,))] + [OK_EMPTY] * 2
    results += [NO_ROOM, OpResult(True, tuple(range(100)), num_cached_tokens=32), OK_EMPTY]
    step = StepResult(results=results, copy_src_block_ids=[1], copy_dst_block_ids=[2])
    data = step_codec.step_result_to_bytes(step)
    assert step_codec.step_result_from_bytes(data) == step
    # The same response as a standard serializer writes it parses the same way.
    assert (
        step_codec.step_result_from_bytes(convert.step_result_to_pb(step).SerializeToString())
        == step
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_response_bytes_round_trip_to_the_same_step(sparse: bool) -> None:
    step = sample_step()
    data = step_codec.step_result_to_bytes(step, sparse)
    assert step_codec.step_result_from_bytes(data) == step
    all_ok = StepResult(results=[OK_EMPTY] * 3, num_free_blocks=1)
    back = step_codec.step_result_from_bytes(step_codec.step_result_to_bytes(all_ok, sparse))
    assert back == all_ok and back.results[0] is OK_EMPTY
    empty = StepResult(num_free_blocks=4)
    assert (
        step_codec.step_result_from_bytes(step_codec.step_result_to_bytes(empty, sparse)) == empty
    )


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


def test_tagged_ops_carry_the_sub_messages_and_coalesce_appends() -> None:
    request = pb.StepRequest(
        ops=[
            convert.op_to_pb(AllocateOp(1, [1, 2], "salt", True)),
            convert.op_to_pb(AppendOp(1, [3])),
            convert.op_to_pb(AppendOp(2, [4])),
            convert.op_to_pb(FreeOp(2)),
            convert.op_to_pb(AppendBatchOp([1, 2], [3, 4])),
            convert.op_to_pb(AppendOp(3, [5, 6])),
            convert.op_to_pb(AppendOp(4, [7])),
            pb.BlockOp(),  # nothing set
        ]
    )
    tagged = convert.tagged_ops_from_pb(request.ops)
    kinds = [kind for kind, _ in tagged]
    assert kinds == [
        "allocate",
        "append_batch",
        "free",
        "append_batch",
        "append",
        "append_batch",
        None,
    ]
    assert tagged[0][1].cache_salt == "salt" and list(tagged[0][1].token_ids) == [1, 2]
    assert (tagged[1][1].seq_ids, tagged[1][1].token_ids) == ([1, 2], [3, 4])
    assert (tagged[5][1].seq_ids, tagged[5][1].token_ids) == ([4], [7])


def test_pool_info_round_trip() -> None:
    info = make_pool_info()
    assert convert.pool_info_from_pb(convert.pool_info_to_pb(info)) == info
