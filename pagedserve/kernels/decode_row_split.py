"""How a step's long decode rows split their keys, planned on the host.

The varlen kernel (paged_attention.py) takes the decode rows of a mixed step
(sequences with one new token, beside prompt chunks) in a launch of their own,
one program per row and kv head (docs/kernels-notes.md, v17). A few long rows
are then a few programs: two decodes at 32k keys beside a chunk read with 16
programs on an H100's 132 multiprocessors, 3-5x slower than SDPA. The decode
kernel splits a sequence's keys into partitions; the decode rows cannot choose
theirs on the device without a pass over every row in every program, which
cost the common steps 12-20% (v19). The host knows every step's lengths, so it
plans the split (plan_decode_row_split) and hands it to the launch as a small
int32 tensor, filled with the step's other inputs (a static buffer in a CUDA
graph), laid out as

    [partition_tokens, seq[0 .. capacity-1], first[0 .. capacity-1]]

Rows of at most partition_tokens positions stay whole: their row's program
writes their output. Each longer row is split into parts of partition_tokens
positions (its last part shorter), listed consecutively as (seq, first
position), unused entries with seq -1; one extra program per entry and kv
head attends to its part and writes its partial result, and the merge
(merge_decode_row_parts) combines each split row's parts. capacity, the
extra programs per kv head, is fixed per model and device: enough for about
two programs per multiprocessor (split_capacity).
"""

from __future__ import annotations

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher
from pagedserve.kernels.paged_decode_attention import (
    _MAX_PARTITIONS,
    _MIN_PARTITION_TOKENS,
    merge_partial_outputs,
    target_programs,
)

# A plan's partition length when no row is split.
NO_SPLIT_TOKENS = (1 << 31) - 1
# Parts are whole 128-key tiles (the largest decode tile), but the last.
_PART_GRANULE = 128


def split_capacity(num_kv_heads: int, device: torch.device) -> int:
    """Entries of a plan: parts a step's split rows can have between them,
    about two programs per multiprocessor over the kv heads."""
    return triton.cdiv(target_programs(device), num_kv_heads)


def no_split_plan(capacity: int) -> list[int]:
    """A plan of `capacity` entries that splits no row."""
    return [NO_SPLIT_TOKENS] + [-1] * capacity + [0] * capacity


def plan_decode_row_split(
    q_lens: list[int], seq_lens: list[int], num_kv_heads: int, device: torch.device
) -> list[int]:
    """The plan (the layout above) for a step whose sequence s has q_lens[s]
    new tokens and seq_lens[s] tokens in all; its decode rows are those of one
    new token. The decode kernel's rule over them: a split only where the rows
    give fewer programs than the GPU wants, each long row in up to
    wanted = target // (rows x kv heads) parts of at least 256 positions, the
    longest setting the length."""
    capacity = split_capacity(num_kv_heads, device)
    plan = no_split_plan(capacity)
    rows = [seq for seq, q_len in enumerate(q_lens) if q_len == 1]
    if not rows:
        return plan
    wanted = target_programs(device) // (len(rows) * num_kv_heads)
    longest = max(seq_lens[seq] for seq in rows)
    wanted = min(wanted, _MAX_PARTITIONS, triton.cdiv(longest, _MIN_PARTITION_TOKENS))
    if wanted <= 1:
        return plan
    tokens = triton.cdiv(triton.cdiv(longest, wanted), _PART_GRANULE) * _PART_GRANULE
    while True:  # a bound, never met by the rule's own lengths: at most `capacity` parts
        parts = [
            (seq, first)
            for seq in rows
            if seq_lens[seq] > tokens
            for first in range(0, seq_lens[seq], tokens)
        ]
        if len(parts) <= capacity:
            break
        tokens *= 2
    if not parts:
        return plan
    plan[0] = tokens
    for slot, (seq, first) in enumerate(parts):
        plan[1 + slot] = seq
        plan[1 + capacity + slot] = first
    return plan


def check_plan(decode_split: torch.Tensor, device: torch.device) -> int:
    """The plan's capacity; ValueError unless it is an int32 vector of odd
    length >= 3 on `device`."""
    if (
        decode_split.dtype != torch.int32
        or decode_split.dim() != 1
        or decode_split.numel() < 3
        or decode_split.numel() % 2 == 0
        or decode_split.device != device
    ):
        raise ValueError(
            f"decode_split: want an int32 vector of 1 + 2 x capacity entries on {device}, "
            f"got {decode_split.dtype} {tuple(decode_split.shape)} on {decode_split.device}"
        )
    return (decode_split.numel() - 1) // 2


def part_buffers(
    capacity: int, num_heads: int, head_dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parts' partial outputs [num_heads, capacity, head_dim], maxima and
    sums [num_heads, capacity], float32, in one allocation (each 64-byte aligned)."""
    stats = triton.cdiv(num_heads * capacity, 16) * 16
    buffer = torch.empty(stats * (head_dim + 2), dtype=torch.float32, device=device)
    partial_out = buffer[: stats * head_dim]
    partial_max = buffer[stats * head_dim : stats * (head_dim + 1)]
    partial_sum = buffer[stats * (head_dim + 1) :]
    return partial_out, partial_max, partial_sum


@triton.jit(do_not_specialize=["capacity"])
def _merge_decode_row_parts_kernel(
    decode_split_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    out_ptr,
    partial_out_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    capacity,
    out_stride_token,
    out_stride_head,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PARTS_BLOCK: tl.constexpr,  # a power of two >= any row's parts
):
    """Program (entry, kv_head): where the entry is a split row's first part,
    the group's outputs of that row from its parts (the entries after it)."""
    slot = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(decode_split_ptr + 1 + slot)
    first = tl.load(decode_split_ptr + 1 + capacity + slot)
    if (seq >= 0) & (first == 0):
        num_parts = tl.cdiv(tl.load(seq_lens_ptr + seq), tl.load(decode_split_ptr))
        out_row = tl.load(query_start_loc_ptr + seq).to(tl.int64) * out_stride_token
        for i in tl.static_range(GROUP_SIZE):
            head = kv_head * GROUP_SIZE + i
            out = merge_partial_outputs(
                partial_out_ptr, partial_max_ptr, partial_sum_ptr, head * capacity + slot,
                num_parts, HEAD_DIM, PARTS_BLOCK,
            )  # fmt: skip
            out_offsets = out_row + head * out_stride_head + tl.arange(0, HEAD_DIM)
            tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty))


_merge_launcher = DirectLauncher(_merge_decode_row_parts_kernel)


def merge_decode_row_parts(
    decode_split: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    out: torch.Tensor,
    partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    num_kv_heads: int,
) -> None:
    """Each split row's output, in `out`'s row of its new token."""
    capacity = (decode_split.numel() - 1) // 2
    _merge_launcher.launch(
        (capacity, num_kv_heads),
        decode_split, query_start_loc, seq_lens, out, *partials, capacity,
        out.stride(0), out.stride(1),
        GROUP_SIZE=out.shape[1] // num_kv_heads, HEAD_DIM=out.shape[2],
        PARTS_BLOCK=next_power_of_2(min(capacity, _MAX_PARTITIONS)),
    )  # fmt: skip
