"""The Step response on the wire: the decode step's hot path on both sides.

A StepResponse is written as its results entries one by one (the shared
OK_EMPTY / NO_ROOM results and the one-new-block result as ready bytes)
followed by the encoding of all other fields; protobuf parses concatenated
encodings as one merged message, so any protobuf reader sees the same message
as step_result_to_pb would give (tests check this). Clients that ask for
sparse results (StepRequest.sparse_results; ours do) get only the results
that are not a bare ok, so a decode step of n sequences costs a few entries
rather than n on both sides.
"""

from __future__ import annotations

import functools
from itertools import compress, count, repeat
from operator import is_not

from pagedserve.blockmgr.convert import op_result_from_pb, op_result_to_pb, step_result_from_pb
from pagedserve.blockmgr.ops import NO_ROOM, OK_EMPTY, OpResult, StepResult
from pagedserve.blockmgr.v1 import blockmgr_pb2 as pb

# Serialized StepResponse.results entries (field 1, length-delimited) of the
# two shared results: ok=true and nothing else, and ok=false (all defaults).
_OK_EMPTY_BYTES = b"\x0a\x02\x08\x01"
_NO_ROOM_BYTES = b"\x0a\x00"


def step_result_to_bytes(step: StepResult, sparse: bool = False) -> bytes:
    """The serialized StepResponse, built without a message object per result.

    Protobuf parses concatenated encodings as one merged message, so the
    results are encoded one by one (the shared OK_EMPTY / NO_ROOM results and
    one-new-block results as ready bytes) and followed by the encoding of all
    the other fields. Equal, once parsed, to step_result_to_pb(step, sparse)
    (tests check this). With sparse, OK_EMPTY results are left out and the
    others listed in result_indices (see StepRequest.sparse_results)."""
    chunks = []
    add = chunks.append
    results = step.results
    # The indices of the results that are not OK_EMPTY, found in C.
    listed = list(compress(count(), map(is_not, results, repeat(OK_EMPTY))))
    written = 0  # dense: results[:written] are in chunks
    for index in listed:
        if not sparse and index > written:
            add(_OK_EMPTY_BYTES * (index - written))
        written = index + 1
        add(_result_entry_bytes(results[index]))
    if not sparse and len(results) > written:
        add(_OK_EMPTY_BYTES * (len(results) - written))
    # The other fields, hand-encoded too (building a message here cost more
    # in the service than the whole encoding of the results).
    add(_packed_field(2, step.copy_src_block_ids))
    add(_packed_field(3, step.copy_dst_block_ids))
    add(_packed_field(4, step.swap_out_device_block_ids))
    add(_packed_field(5, step.swap_out_host_block_ids))
    add(_packed_field(6, step.swap_in_host_block_ids))
    add(_packed_field(7, step.swap_in_device_block_ids))
    add(_varint_field(8, step.num_free_blocks))
    if sparse:
        add(_packed_field(9, listed))
    add(_varint_field(10, len(results)))
    return b"".join(chunks)


def _result_entry_bytes(result: OpResult) -> bytes:
    """One StepResponse.results entry (field 1, length-delimited)."""
    if result is NO_ROOM:
        return _NO_ROOM_BYTES
    if (
        len(result.new_block_ids) == 1
        and not result.replaced_positions
        and not result.num_cached_tokens
    ):
        return _one_new_block_bytes(result.new_block_ids[0])
    body = op_result_to_pb(result).SerializeToString()
    return b"\x0a" + _varint(len(body)) + body


@functools.lru_cache(maxsize=1 << 16)
def _one_new_block_bytes(block_id: int) -> bytes:
    # A decode append that crossed into a new block: {ok: true, new_block_ids: [id]}
    # (fields 1 varint, 2 packed), as a results entry.
    block_id_bytes = _varint(block_id)
    body = b"\x08\x01\x12" + _varint(len(block_id_bytes)) + block_id_bytes
    return b"\x0a" + _varint(len(body)) + body


def _packed_field(field_number: int, values: list[int]) -> bytes:
    """A packed repeated uint32 field (wire type 2); nothing when empty."""
    if not values:
        return b""
    body = b"".join(map(_varint, values))
    return _varint(field_number << 3 | 2) + _varint(len(body)) + body


def _varint_field(field_number: int, value: int) -> bytes:
    """A uint32 field (wire type 0); nothing when 0, as protobuf writes it."""
    if not value:
        return b""
    return _varint(field_number << 3) + _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def step_result_from_bytes(data: bytes) -> StepResult:
    """Parses a serialized StepResponse, sparse or not; the results not
    listed in a sparse one are OK_EMPTY."""
    message = pb.StepResponse.FromString(data)
    # Dense: not asked for sparse, or a server that predates it (no num_results).
    if not message.result_indices and len(message.results) >= message.num_results:
        return step_result_from_pb(message)
    step = step_result_from_pb(message, with_results=False)
    results = [OK_EMPTY] * message.num_results
    for index, result in zip(message.result_indices, message.results, strict=True):
        results[index] = op_result_from_pb(result)
    step.results = results
    return step
