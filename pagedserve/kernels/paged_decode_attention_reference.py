"""The torch reference of paged_decode_attention (same signature as
paged_decode_attention.paged_decode_attention_triton, without its launch
options, plus the varlen reference's new keys): the executor's CPU decode
path, and what the decode kernel is tested against."""

import torch

# The batched reference pads every sequence of a group to the group's longest:
# a group's gathered K (and V) holds at most this many values (4 MiB in
# float32), unless one sequence alone is longer. The gather is what costs on
# the CPU (the attention's arithmetic is small): groups that stay in the
# caches between the gather and the attention ran decode 32 x 1024 and 256 x
# 300 (the default model's heads) 2.0x and 2.8-3.5x faster than one sequence
# at a time, groups of 16 Mi values slower than one at a time at 256 x 300
# (2-core CPU, docs/kernels-notes.md, "Reference on CPU").
_REFERENCE_MAX_GATHERED_VALUES = 1 << 20


def paged_decode_attention_reference(
    query: torch.Tensor,  # [num_seqs, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, each >= 1
    scale: float,
    new_key: torch.Tensor | None = None,  # [num_seqs, num_kv_heads, head_dim]
    new_value: torch.Tensor | None = None,
) -> torch.Tensor:  # [num_seqs, num_heads, head_dim], query's dtype
    """Pure torch, in float32 (float64 for float64 inputs): each sequence's
    one query attends to its seq_lens keys in the cache (its new key and value
    are the cache's entries at its last position, or new_key and new_value
    when given: the varlen reference's decode rows).

    Sequences go through torch's SDPA a group at a time, not one by one (the
    executor's CPU decode path: a step of many sequences was a Python loop of
    many small calls). A group holds sequences of similar length, in order of
    length, padded to its longest and masked, its gathered keys bounded by
    _REFERENCE_MAX_GATHERED_VALUES. Table entries past a sequence's blocks are
    never read."""
    num_seqs, num_heads, head_dim = query.shape
    out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    _, block_size, num_kv_heads, _ = key_cache.shape
    max_padded_keys = max(1, _REFERENCE_MAX_GATHERED_VALUES // (num_kv_heads * head_dim))
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    lens = seq_lens.tolist()
    order = sorted(range(num_seqs), key=lens.__getitem__)
    first = 0
    while first < num_seqs:
        # Sorted by length: the group's last sequence is its longest.
        last = first + 1
        while last < num_seqs and (last + 1 - first) * lens[order[last]] <= max_padded_keys:
            last += 1
        rows = torch.tensor(order[first:last], device=query.device)
        last_kv = None
        if new_key is not None and new_value is not None:
            last_kv = (new_key.index_select(0, rows), new_value.index_select(0, rows))
        attended = _attend_group(
            query.index_select(0, rows), key_cache, value_cache,
            block_tables.index_select(0, rows), seq_lens.index_select(0, rows),
            lens[order[last - 1]], block_size, compute_dtype, scale, last_kv,
        )  # fmt: skip
        out.index_copy_(0, rows, attended.to(query.dtype))
        first = last
    return out


def _attend_group(
    query: torch.Tensor,  # [group, num_heads, head_dim]
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [group, max_blocks_per_seq]
    seq_lens: torch.Tensor,  # [group]
    max_len: int,
    block_size: int,
    compute_dtype: torch.dtype,
    scale: float,
    last_kv: tuple[torch.Tensor, torch.Tensor] | None,  # [group, kv_heads, head_dim] each
) -> torch.Tensor:  # [group, num_heads, head_dim] in compute_dtype
    """One SDPA call for a group: each sequence's keys gathered from its
    blocks (its last key and value from last_kv when given), padded to max_len,
    the padding masked."""
    group = query.shape[0]
    num_blocks = -(-max_len // block_size)
    table = block_tables[:, :num_blocks].long()
    # Entries past a sequence's own blocks may hold anything: block 0 instead
    # (its keys are masked out).
    owned = torch.arange(num_blocks, device=table.device)[None, :] < (
        (seq_lens[:, None] + block_size - 1) // block_size
    )
    block_ids = torch.where(owned, table, 0).flatten()
    visible = torch.arange(max_len, device=seq_lens.device)[None, :] < seq_lens[:, None]
    # Rows of the gathered [group x num_blocks x block_size] keys: the padding
    # past each sequence's end, and each sequence's last key.
    slots_per_seq = num_blocks * block_size
    padding_seq, padding_position = (~visible).nonzero(as_tuple=True)
    padding_rows = padding_seq * slots_per_seq + padding_position
    last_rows = torch.arange(group, device=seq_lens.device) * slots_per_seq + seq_lens.long() - 1

    def gathered(cache: torch.Tensor, last: torch.Tensor | None) -> torch.Tensor:
        # [group, kv_heads, max_len, head_dim]; index_select, not advanced
        # indexing (docs/kernels-notes.md, "Reference on CPU"). A copy: the
        # writes below never reach the cache.
        rows = cache.index_select(0, block_ids).flatten(0, 1)
        # The padding holds whatever those slots held: an earlier request's
        # keys, or NaN had it diverged, which the mask alone does not stop (a
        # masked NaN key or value still makes SDPA's output NaN). Zeros there.
        rows.index_fill_(0, padding_rows, 0.0)
        if last is not None:
            rows.index_copy_(0, last_rows, last.to(rows.dtype))
        keys = rows.view(group, slots_per_seq, *cache.shape[2:])[:, :max_len]
        return keys.permute(0, 2, 1, 3).to(compute_dtype)

    out = torch.nn.functional.scaled_dot_product_attention(
        query.to(compute_dtype)[:, :, None],
        gathered(key_cache, None if last_kv is None else last_kv[0]),
        gathered(value_cache, None if last_kv is None else last_kv[1]),
        attn_mask=visible[:, None, None, :], scale=scale, enable_gqa=True,
    )  # fmt: skip
    return out[:, :, 0]
