"""The Step response on the wire, encoded and decoded without a Python
object per result: the decode step's hot path on both sides.

A StepResponse is written as its results entries one by one (the shared
OK_EMPTY / NO_ROOM results and the one-new-block result as ready bytes)
followed by the encoding of all other fields; protobuf parses concatenated
encodings as one merged message, so any protobuf reader sees the same message
as step_result_to_pb would give (tests check this). The reader recognises runs
of bare ok entries in the bytes and visits only the other results.
"""

from __future__ import annotations

import re

from pagedserve.blockmgr.convert import op_result_from_pb, step_result_from_pb
from pagedserve.blockmgr.ops import NO_ROOM, OK_EMPTY, OpResult, StepResult
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb

# Serialized StepResponse.results entries (field 1, length-delimited) of the
# two shared results: ok=true and nothing else, and ok=false (all defaults).
_OK_EMPTY_BYTES = b"\x0a\x02\x08\x01"
_NO_ROOM_BYTES = b"\x0a\x00"


def step_result_to_bytes(step: StepResult) -> bytes:
    """The serialized StepResponse, built without a message object per result.

    Protobuf parses concatenated encodings as one merged message, so the
    results are encoded one by one (the shared OK_EMPTY / NO_ROOM results as
    constant bytes) and followed by the encoding of all the other fields.
    Equal, once parsed, to step_result_to_pb(step) (tests check this)."""
    chunks = []
    add = chunks.append
    for result in step.results:
        if result is OK_EMPTY:
            add(_OK_EMPTY_BYTES)
        elif result is NO_ROOM:
            add(_NO_ROOM_BYTES)
        elif (
            len(result.new_block_ids) == 1
            and not result.replaced_positions
            and not result.num_cached_tokens
        ):
            add(_one_new_block_bytes(result.new_block_ids[0]))
        else:
            body = pb.OpResult(
                ok=result.ok,
                new_block_ids=result.new_block_ids,
                replaced_positions=result.replaced_positions,
                replaced_block_ids=result.replaced_block_ids,
                num_cached_tokens=result.num_cached_tokens,
            ).SerializeToString()
            add(b"\x0a" + _varint(len(body)) + body)
    rest = pb.StepResponse(
        copy_src_block_ids=step.copy_src_block_ids,
        copy_dst_block_ids=step.copy_dst_block_ids,
        swap_out_device_block_ids=step.swap_out_device_block_ids,
        swap_out_host_block_ids=step.swap_out_host_block_ids,
        swap_in_host_block_ids=step.swap_in_host_block_ids,
        swap_in_device_block_ids=step.swap_in_device_block_ids,
        num_free_blocks=step.num_free_blocks,
    )
    add(rest.SerializeToString())
    return b"".join(chunks)


def _one_new_block_bytes(block_id: int) -> bytes:
    # A decode append that crossed into a new block: {ok: true, new_block_ids: [id]}
    # (fields 1 varint, 2 packed), as a results entry.
    block_id_bytes = _varint(block_id)
    body = b"\x08\x01\x12" + _varint(len(block_id_bytes)) + block_id_bytes
    return b"\x0a" + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def step_result_from_bytes(data: bytes) -> StepResult:
    """Parses a serialized StepResponse. When every result is a bare ok=true
    (the usual decode step), the encoding starts with that many identical
    entries and no result message needs to be visited."""
    message = pb.StepResponse.FromString(data)
    results = _results_from_bytes(data, message)
    if results is None:
        return step_result_from_pb(message)
    step = step_result_from_pb(message, with_results=False)
    step.results = results
    return step


_OK_EMPTY_RUN = re.compile(b"(?:" + re.escape(_OK_EMPTY_BYTES) + b")*")


def _results_from_bytes(data: bytes, message: pb.StepResponse) -> list[OpResult] | None:
    """The results, taking runs of bare ok=true entries straight from the
    bytes (one regex match per run) and visiting only the other entries.
    None when the entries are not laid out first and contiguously (legal
    protobuf, but not what servers write), so the caller takes the slow path."""
    results: list[OpResult] = []
    messages = message.results
    num_results = len(messages)
    position = 0
    while len(results) < num_results:
        run_end = _OK_EMPTY_RUN.match(data, position).end()
        if run_end > position:
            results.extend([OK_EMPTY] * ((run_end - position) // len(_OK_EMPTY_BYTES)))
            position = run_end
            continue
        if data[position : position + 1] != b"\x0a":
            return None
        length, position = _read_varint(data, position + 1)
        position += length
        results.append(op_result_from_pb(messages[len(results)]))
    return results if len(results) == num_results else None


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
