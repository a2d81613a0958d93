"""Protobuf <-> plain Python types, both directions, at the service edges.

Only the edge modules (this one, step_codec.py, service.py and client.py)
import generated code. The server
uses the *_from_pb of requests and *_to_pb of responses; the client the reverse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pagedserve.blockmgr.errors import InvalidArgumentError
from pagedserve.blockmgr.ops import (
    NO_ROOM,
    OK_EMPTY,
    AllocateOp,
    AppendBatchOp,
    AppendOp,
    BlockOp,
    ComputedOp,
    ForkOp,
    FreeOp,
    OpResult,
    StepResult,
    SwapInOp,
    SwapOutOp,
)
from pagedserve.blockmgr.pool_info import DeviceKind, ExecutorRegistration, PoolInfo, PoolStats
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb

_DEVICE_KIND_TO_PB = {DeviceKind.CPU: pb.DEVICE_KIND_CPU, DeviceKind.CUDA: pb.DEVICE_KIND_CUDA}
_DEVICE_KIND_FROM_PB = {value: key for key, value in _DEVICE_KIND_TO_PB.items()}


# ---- pools ---------------------------------------------------------------------


def pool_info_from_pb(message: pb.PoolInfo) -> PoolInfo:
    """Raises InvalidArgumentError when the device kind is unspecified."""
    device_kind = _DEVICE_KIND_FROM_PB.get(message.device_kind)
    if device_kind is None:
        raise InvalidArgumentError("pool.device_kind: must be CPU or CUDA")
    return PoolInfo(
        device_kind=device_kind,
        num_blocks=message.num_blocks,
        block_size_tokens=message.block_size_tokens,
        dtype=message.dtype,
        layout=message.layout,
        shape=tuple(message.shape),
        device_index=message.device_index,
        num_swap_blocks=message.num_swap_blocks,
        device_handle=message.device_handle,
        swap_handle=message.swap_handle,
        model_key=message.model_key,
        pool_id=message.pool_id,
        executor_ids=tuple(message.executor_ids),
    )


def pool_info_to_pb(info: PoolInfo) -> pb.PoolInfo:
    return pb.PoolInfo(
        pool_id=info.pool_id,
        device_kind=_DEVICE_KIND_TO_PB[info.device_kind],
        device_index=info.device_index,
        dtype=info.dtype,
        layout=info.layout,
        shape=info.shape,
        num_blocks=info.num_blocks,
        block_size_tokens=info.block_size_tokens,
        num_swap_blocks=info.num_swap_blocks,
        device_handle=info.device_handle,
        swap_handle=info.swap_handle,
        model_key=info.model_key,
        executor_ids=info.executor_ids,
    )


def registration_to_pb(registration: ExecutorRegistration) -> pb.RegisterExecutorResponse:
    return pb.RegisterExecutorResponse(
        executor_id=registration.executor_id,
        lease_ms=registration.lease_ms,
        pool=pool_info_to_pb(registration.pool),
    )


def registration_from_pb(message: pb.RegisterExecutorResponse) -> ExecutorRegistration:
    return ExecutorRegistration(
        message.executor_id, message.lease_ms, pool_info_from_pb(message.pool)
    )


def stats_to_pb(stats: PoolStats) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        total_blocks=stats.total_blocks,
        free_blocks=stats.free_blocks,
        used_blocks=stats.used_blocks,
        cached_blocks=stats.cached_blocks,
        swapped_blocks=stats.swapped_blocks,
        kv_utilization=stats.kv_utilization,
        prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
        consecutive_block_ratio=stats.consecutive_block_ratio,
        num_sequences=stats.num_sequences,
        num_executors=stats.num_executors,
        shared_blocks=stats.shared_blocks,
        logical_blocks=stats.logical_blocks,
    )


def stats_from_pb(message: pb.GetStatsResponse) -> PoolStats:
    return PoolStats(
        total_blocks=message.total_blocks,
        free_blocks=message.free_blocks,
        used_blocks=message.used_blocks,
        cached_blocks=message.cached_blocks,
        swapped_blocks=message.swapped_blocks,
        shared_blocks=message.shared_blocks,
        logical_blocks=message.logical_blocks,
        kv_utilization=message.kv_utilization,
        prefix_cache_hit_rate=message.prefix_cache_hit_rate,
        consecutive_block_ratio=message.consecutive_block_ratio,
        num_sequences=message.num_sequences,
        num_executors=message.num_executors,
    )


# ---- step ----------------------------------------------------------------------


def tagged_ops_from_pb(messages: Iterable[pb.BlockOp]) -> list[tuple[str | None, Any]]:
    """(kind, body) pairs for BlockManager.step_tagged. The bodies are the
    protobuf sub-messages themselves: their fields have the names the core
    reads, so no object is built per op. Runs of single-token AppendOps are
    coalesced into one AppendBatchOp, which the core applies with its fast
    loop and which yields the same results and op indices. An op with nothing
    set gives (None, None), which the core refuses with the op's index."""
    tagged: list[tuple[str | None, Any]] = []
    add = tagged.append
    batch_seq_ids: list[int] = []
    batch_token_ids: list[int] = []
    for message in messages:
        kind = message.WhichOneof("op")
        if kind == "append":
            body = message.append
            token_ids = body.token_ids
            if len(token_ids) == 1:
                batch_seq_ids.append(body.seq_id)
                batch_token_ids.append(token_ids[0])
                continue
        if batch_seq_ids:
            add(("append_batch", AppendBatchOp(batch_seq_ids, batch_token_ids)))
            batch_seq_ids, batch_token_ids = [], []
        add((kind, None if kind is None else getattr(message, kind)))
    if batch_seq_ids:
        add(("append_batch", AppendBatchOp(batch_seq_ids, batch_token_ids)))
    return tagged


def op_to_pb(op: BlockOp) -> pb.BlockOp:
    """Raises TypeError for an object that is not one of the seven op types."""
    if isinstance(op, AppendOp):
        return pb.BlockOp(append=pb.AppendOp(seq_id=op.seq_id, token_ids=op.token_ids))
    if isinstance(op, ComputedOp):
        return pb.BlockOp(
            computed=pb.ComputedOp(seq_id=op.seq_id, num_computed_tokens=op.num_computed_tokens)
        )
    if isinstance(op, AllocateOp):
        return pb.BlockOp(
            allocate=pb.AllocateOp(
                seq_id=op.seq_id,
                token_ids=op.token_ids,
                cache_salt=op.cache_salt,
                use_prefix_cache=op.use_prefix_cache,
            )
        )
    if isinstance(op, FreeOp):
        return pb.BlockOp(free=pb.FreeOp(seq_id=op.seq_id))
    if isinstance(op, ForkOp):
        return pb.BlockOp(
            fork=pb.ForkOp(parent_seq_id=op.parent_seq_id, child_seq_id=op.child_seq_id)
        )
    if isinstance(op, SwapOutOp):
        return pb.BlockOp(swap_out=pb.SwapOutOp(seq_id=op.seq_id))
    if isinstance(op, SwapInOp):
        return pb.BlockOp(swap_in=pb.SwapInOp(seq_id=op.seq_id))
    if isinstance(op, AppendBatchOp):
        return _append_batch_pb(op.seq_ids, op.token_ids)
    raise TypeError(f"not a block op: {op!r}")


def _append_batch_pb(seq_ids: Sequence[int], token_ids: Sequence[int]) -> pb.BlockOp:
    return pb.BlockOp(append_batch=pb.AppendBatchOp(seq_ids=seq_ids, token_ids=token_ids))


def step_request_to_pb(
    executor_id: str, ops: Sequence[BlockOp], sparse_results: bool = False
) -> pb.StepRequest:
    """The request for `ops`. Runs of two or more single-token AppendOps are
    packed into one AppendBatchOp, which yields the same results in the same
    positions; everything else is sent op by op."""
    messages: list[pb.BlockOp] = []
    batch_seq_ids: list[int] = []
    batch_token_ids: list[int] = []

    def flush() -> None:
        if len(batch_seq_ids) == 1:
            messages.append(op_to_pb(AppendOp(batch_seq_ids[0], batch_token_ids)))
        elif batch_seq_ids:
            messages.append(_append_batch_pb(batch_seq_ids, batch_token_ids))
        batch_seq_ids.clear()
        batch_token_ids.clear()

    for op in ops:
        if type(op) is AppendOp and len(op.token_ids) == 1:
            batch_seq_ids.append(op.seq_id)
            batch_token_ids.append(op.token_ids[0])
            continue
        flush()
        messages.append(op_to_pb(op))
    flush()
    return pb.StepRequest(executor_id=executor_id, ops=messages, sparse_results=sparse_results)


def step_result_to_pb(step: StepResult, sparse: bool = False) -> pb.StepResponse:
    """The response message; with sparse, only the results that are not the
    shared OK_EMPTY, with their indices (StepRequest.sparse_results)."""
    listed = [index for index, result in enumerate(step.results) if result is not OK_EMPTY]
    response = pb.StepResponse(
        copy_src_block_ids=step.copy_src_block_ids,
        copy_dst_block_ids=step.copy_dst_block_ids,
        swap_out_device_block_ids=step.swap_out_device_block_ids,
        swap_out_host_block_ids=step.swap_out_host_block_ids,
        swap_in_host_block_ids=step.swap_in_host_block_ids,
        swap_in_device_block_ids=step.swap_in_device_block_ids,
        num_free_blocks=step.num_free_blocks,
        result_indices=listed if sparse else (),
        num_results=len(step.results),
    )
    selected = (step.results[index] for index in listed) if sparse else step.results
    response.results.extend(op_result_to_pb(result) for result in selected)
    return response


def op_result_to_pb(result: OpResult) -> pb.OpResult:
    return pb.OpResult(
        ok=result.ok,
        new_block_ids=result.new_block_ids,
        replaced_positions=result.replaced_positions,
        replaced_block_ids=result.replaced_block_ids,
        num_cached_tokens=result.num_cached_tokens,
    )


def op_result_from_pb(result: pb.OpResult) -> OpResult:
    # Most results are bare ok=true (2 bytes encoded) or ok=false (0 bytes):
    # hand back the shared objects instead of building one per op.
    size = result.ByteSize()
    if size == 2 and result.ok:  # field 1 (tag byte) = true (one byte)
        return OK_EMPTY
    if size == 0:
        return NO_ROOM
    return OpResult(
        ok=result.ok,
        new_block_ids=tuple(result.new_block_ids),
        replaced_positions=tuple(result.replaced_positions),
        replaced_block_ids=tuple(result.replaced_block_ids),
        num_cached_tokens=result.num_cached_tokens,
    )


def step_result_from_pb(message: pb.StepResponse, with_results: bool = True) -> StepResult:
    return StepResult(
        results=[op_result_from_pb(result) for result in message.results] if with_results else [],
        copy_src_block_ids=list(message.copy_src_block_ids),
        copy_dst_block_ids=list(message.copy_dst_block_ids),
        swap_out_device_block_ids=list(message.swap_out_device_block_ids),
        swap_out_host_block_ids=list(message.swap_out_host_block_ids),
        swap_in_host_block_ids=list(message.swap_in_host_block_ids),
        swap_in_device_block_ids=list(message.swap_in_device_block_ids),
        num_free_blocks=message.num_free_blocks,
    )
