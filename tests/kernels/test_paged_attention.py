"""paged_attention: reference vs dense float64 attention, Triton vs reference."""

import importlib

import pytest
import torch
from paged_kv_helpers import DEVICE, assert_close, dense_attention, make_paged_kv, random_tensor

from pagedserve.kernels import decode_rows
from pagedserve.kernels.decode_rows import (
    NO_SPLIT_TOKENS,
    plan_decode_row_split,
    split_capacity,
)
from pagedserve.kernels.paged_attention import paged_attention_triton
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention import decode_configs

# (num_heads, num_kv_heads, head_dim, block_size, dtype)
CONFIGS = [
    pytest.param(9, 3, 64, 16, torch.float32, id="gqa9x3-d64-fp32"),
    pytest.param(8, 2, 128, 16, torch.bfloat16, id="gqa8x2-d128-bf16"),
    pytest.param(2, 2, 256, 8, torch.float16, id="mha2-d256-fp16"),
]


def batch_of(kind: str, block_size: int) -> list[tuple[int, int]]:
    """(seq_len, q_len) per sequence: the lengths around block edges, and a long one."""
    lengths = [1, block_size - 1, block_size, block_size + 1, 4 * block_size + 6]
    if kind == "decode":
        return [(n, 1) for n in lengths]
    if kind == "prefill":
        return [(n, n) for n in lengths]
    if kind == "chunked":  # cached context before the new tokens
        return [
            (block_size + 1, 5),
            (4 * block_size + 6, 2 * block_size + 1),
            (block_size, 1),
            (2 * block_size + 1, block_size),
        ]
    if kind == "mixed":  # decode, chunked prefill and full prefill in one batch
        return [
            (4 * block_size + 6, 1),
            (1, 1),
            (block_size + 1, block_size - 1),
            (block_size, block_size),
            (2 * block_size, 1),
        ]
    raise ValueError(kind)


def make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype):
    """Arguments of paged_attention (the new tokens' K/V equal to their cache
    entries, as the executor passes them), the dense per-sequence K/V, q_lens."""
    seq_lens = [n for n, _ in seqs]
    q_lens = [q for _, q in seqs]
    key_cache, value_cache, block_tables, keys, values = make_paged_kv(
        seq_lens, num_kv_heads, head_dim, block_size, dtype
    )
    query = random_tensor(sum(q_lens), num_heads, head_dim, dtype=dtype)
    new_key = torch.cat([k[len(k) - q :] for k, q in zip(keys, q_lens, strict=True)])
    new_value = torch.cat([v[len(v) - q :] for v, q in zip(values, q_lens, strict=True)])
    starts = torch.tensor([0, *q_lens], dtype=torch.int32).cumsum(0).to(torch.int32)
    args = (
        query,
        new_key.to(DEVICE),
        new_value.to(DEVICE),
        key_cache,
        value_cache,
        block_tables,
        starts.to(DEVICE),
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        head_dim**-0.5,
    )
    return args, keys, values, q_lens


def poison_new_tokens_in_cache(args, seqs, block_size: int) -> None:
    """NaN in the cache slots of every new token: a kernel that reads the new
    tokens from the cache instead of from key/value then fails."""
    key_cache, value_cache, block_tables = args[3], args[4], args[5]
    for seq, (seq_len, q_len) in enumerate(seqs):
        for position in range(seq_len - q_len, seq_len):
            block_id = int(block_tables[seq, position // block_size])
            key_cache[block_id, position % block_size] = float("nan")
            value_cache[block_id, position % block_size] = float("nan")


@pytest.mark.parametrize("kind", ["decode", "prefill", "chunked", "mixed"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_reference_matches_dense(kind, num_heads, num_kv_heads, head_dim, block_size, dtype):
    seqs = batch_of(kind, block_size)
    args, keys, values, q_lens = make_inputs(
        seqs, num_heads, num_kv_heads, head_dim, block_size, dtype
    )
    out = paged_attention_reference(*args)
    expected = dense_attention(args[0], keys, values, q_lens, args[-1])
    assert out.dtype == dtype
    assert_close(out, expected)


def test_reference_chunks_long_queries(monkeypatch):
    """The score-size bound splits queries into chunks without changing the result."""
    # importlib: the package's paged_attention_reference attribute is the function.
    module = importlib.import_module("pagedserve.kernels.paged_attention_reference")

    seqs = [(40, 40), (23, 7)]
    args, keys, values, q_lens = make_inputs(seqs, 4, 2, 64, 16, torch.float32)
    monkeypatch.setattr(module, "_REFERENCE_MAX_SCORES", 2 * 40 * 5)
    out = module.paged_attention_reference(*args)
    assert_close(out, dense_attention(args[0], keys, values, q_lens, args[-1]))


@pytest.mark.parametrize("length", [2, 17, 300, 1100])
def test_reference_fresh_prompt_like_masked_queries(length):
    """A prompt without cached context takes SDPA's own causal mask on the CPU:
    the same rows as its queries but the first through the masked path (fewer
    queries than keys), and as the dense float64 attention."""
    module = importlib.import_module("pagedserve.kernels.paged_attention_reference")
    query = random_tensor(length, 9, 64, dtype=torch.float32)
    key = random_tensor(length, 3, 64, dtype=torch.float32)
    value = random_tensor(length, 3, 64, dtype=torch.float32)
    fresh = module._attend_one_sequence(query, key, value, 0.125)
    masked = module._attend_one_sequence(query[1:], key, value, 0.125)
    torch.testing.assert_close(fresh[1:], masked, rtol=1e-6, atol=1e-6)
    assert_close(fresh, dense_attention(query, [key], [value], [length], 0.125))


# New K/V (and query tiles) through tensor descriptors or pointers; one or two
# query tiles per program.
LOADS_AND_TILES = [
    pytest.param(
        {"NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": True, "PAIRED_TILES": True},
        id="query-descriptors-paired",
    ),
    pytest.param(
        {"NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": False, "PAIRED_TILES": True},
        id="descriptors-paired",
    ),
    pytest.param(
        {"NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": False, "PAIRED_TILES": False},
        id="descriptors-single",
    ),
    pytest.param({"NEW_KV_DESCRIPTORS": False, "PAIRED_TILES": True}, id="pointers-paired"),
]


@pytest.mark.parametrize("loads_and_tiles", LOADS_AND_TILES)
@pytest.mark.parametrize("kind", ["decode", "prefill", "chunked", "mixed"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_matches_reference(
    kind, num_heads, num_kv_heads, head_dim, block_size, dtype, loads_and_tiles
):
    seqs = batch_of(kind, block_size)
    args, _, _, _ = make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_reference(*args)
    poison_new_tokens_in_cache(args, seqs, block_size)
    out = torch.full_like(args[0], float("nan"))  # poison: every element must be written
    # Small tiles: several query tiles per sequence and several key steps, so
    # that tiles cross into the next sequence's new tokens and past the last.
    config = {"BLOCK_M": 32, "BLOCK_N": 16, **loads_and_tiles}
    paged_attention_triton(*args, out=out, config=config)
    assert_close(out, expected)


@pytest.mark.parametrize("loads_and_tiles", LOADS_AND_TILES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_without_context_path_matches_reference(
    num_heads, num_kv_heads, head_dim, block_size, dtype, loads_and_tiles
):
    """Fresh prompts only: the kernel built without its block-table path."""
    seqs = batch_of("prefill", block_size)
    args, _, _, _ = make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_reference(*args)
    poison_new_tokens_in_cache(args, seqs, block_size)
    out = torch.full_like(args[0], float("nan"))
    config = {"BLOCK_M": 32, "BLOCK_N": 16, **loads_and_tiles}
    paged_attention_triton(*args, out=out, config=config, cached_context=False)
    assert_close(out, expected)


@pytest.mark.parametrize("kind", ["chunked", "mixed", "decode"])
def test_reference_reads_new_tokens_from_key_value(kind):
    seqs = batch_of(kind, 16)
    args, keys, values, q_lens = make_inputs(seqs, 4, 2, 64, 16, torch.float32)
    poison_new_tokens_in_cache(args, seqs, 16)
    out = paged_attention_reference(*args)
    assert_close(out, dense_attention(args[0], keys, values, q_lens, args[-1]))


def test_triton_default_tiles_long_prefill():
    """Production tile sizes; a prompt longer than one query tile, next to decodes."""
    seqs = [(300, 300), (45, 1), (200, 70)]
    args, _, _, _ = make_inputs(seqs, 9, 3, 64, 16, torch.float32)
    out = torch.full_like(args[0], float("nan"))
    paged_attention_triton(*args, out=out)
    assert_close(out, paged_attention_reference(*args))


@pytest.mark.parametrize("descriptors", [True, False], ids=["descriptors", "pointers"])
def test_triton_strided_key_value(descriptors):
    """K and V as column slices of one fused projection output (rows wider than
    num_kv_heads x head_dim), as a fused QKV layer would hand them over."""
    seqs = [(40, 40), (23, 7), (5, 1)]
    args, _, _, _ = make_inputs(seqs, 8, 2, 32, 16, torch.float32)
    query, key, value = args[:3]
    fused = random_tensor(key.shape[0], 3, 2, 32, dtype=torch.float32)  # [tokens, q|k|v, 2, 32]
    fused[:, 1], fused[:, 2] = key, value
    strided_args = (query, fused[:, 1], fused[:, 2], *args[3:])
    out = torch.full_like(query, float("nan"))
    config = {"BLOCK_M": 32, "BLOCK_N": 16, "NEW_KV_DESCRIPTORS": descriptors}
    paged_attention_triton(*strided_args, out=out, config=config)
    assert_close(out, paged_attention_reference(*args))


def test_triton_many_sequences():
    """More sequences than one lookup load compares (the tile -> sequence search
    loops), with lengths 1, bs - 1, bs, bs + 1 and a longer one mixed."""
    lengths = [1, 15, 16, 17, 40]
    seqs = [(n + (i % 3) * 5, n) for i, n in enumerate(lengths * 15)]  # 75 sequences
    args, _, _, _ = make_inputs(seqs, 4, 2, 16, 16, torch.float32)
    for paired in (True, False):
        out = torch.full_like(args[0], float("nan"))
        config = {"BLOCK_M": 16, "BLOCK_N": 16, "PAIRED_TILES": paired}
        paged_attention_triton(*args, out=out, config=config)
        assert_close(out, paged_attention_reference(*args))


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_decode_rows_under_each_decode_launch(
    num_heads, num_kv_heads, head_dim, block_size, dtype
):
    """Decode rows beside prompt chunks take a launch of their own, with the
    decode kernel's launch options: each option the rules can choose, with
    contexts of 0 keys to past two of the widest key tiles (128)."""
    seqs = [(n, 1) for n in (1, 2, 31, 32, 33, 127, 128, 129, 300)]
    seqs[3:3] = [(block_size + 3, 3), (40, 40)]  # a chunk and a fresh prompt in between
    args, _, _, _ = make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_reference(*args)
    poison_new_tokens_in_cache(args, seqs, block_size)
    for decode_config in decode_configs(head_dim, dtype):
        out = torch.full_like(args[0], float("nan"))
        paged_attention_triton(*args, out=out, decode_config=decode_config)
        assert_close(out, expected)


def plan_parts(seqs, part_tokens: int, capacity: int) -> torch.Tensor:
    """A decode_split plan (decode_rows.py's layout) that splits every
    decode row longer than part_tokens into parts of part_tokens positions."""
    parts = [
        (seq, first)
        for seq, (seq_len, q_len) in enumerate(seqs)
        if q_len == 1 and seq_len > part_tokens
        for first in range(0, seq_len, part_tokens)
    ]
    assert len(parts) <= capacity
    unused = capacity - len(parts)
    plan = [part_tokens] + [seq for seq, _ in parts] + [-1] * unused
    plan += [first for _, first in parts] + [0] * unused
    return torch.tensor(plan, dtype=torch.int32, device=DEVICE)


def run_without_merge(monkeypatch, *args, **kwargs) -> torch.Tensor:
    """paged_attention_triton with the split rows' merge dropped: their rows
    stay as `out` was (NaN)."""
    with monkeypatch.context() as patch:
        patch.setattr(decode_rows._merge_launcher, "launch", lambda *a, **k: None)
        out = torch.full_like(args[0], float("nan"))
        return paged_attention_triton(*args, out=out, **kwargs)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_decode_rows_split_by_a_plan(
    monkeypatch, num_heads, num_kv_heads, head_dim, block_size, dtype
):
    """Decode rows of contexts around the edges of 32-position parts, beside a
    chunk and a fresh prompt, their new keys only in key/value: under each
    decode launch option, rows longer than a part split as the plan lists them
    and merged give the reference's output; without the merge, exactly those
    rows are unwritten."""
    contexts = (0, 1, 30, 31, 32, 33, 63, 64, 65, 140)  # seq_len = context + 1
    seqs = [(n + 1, 1) for n in contexts]
    seqs[4:4] = [(block_size + 3, 3), (40, 40)]  # a chunk and a fresh prompt in between
    args, _, _, _ = make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_reference(*args)
    poison_new_tokens_in_cache(args, seqs, block_size)
    plan = plan_parts(seqs, 32, capacity=20)  # 17 parts, 3 entries unused
    for decode_config in decode_configs(head_dim, dtype):
        out = torch.full_like(args[0], float("nan"))
        paged_attention_triton(*args, out=out, decode_config=decode_config, decode_split=plan)
        assert_close(out, expected)

    unmerged = run_without_merge(monkeypatch, *args, decode_split=plan)
    rows = args[6][:-1].tolist()
    split = [row for row, (n, q) in zip(rows, seqs, strict=True) if q == 1 and n > 32]
    assert len(split) == 6
    assert torch.isnan(unmerged[split]).all()
    whole = [row for row in range(len(out)) if row not in split]
    assert_close(unmerged[whole], expected[whole])


def test_triton_splits_long_decode_rows_as_the_host_plans(monkeypatch):
    """The host's rule (here for 8 programs wanted, the interpreter's 4
    multiprocessors) splits two long decode rows beside chunks; merged, the
    reference's output."""
    monkeypatch.setattr(decode_rows, "target_programs", lambda device: 8)
    seqs = [(700, 1), (64, 64), (300, 1), (200, 100), (40, 5)]
    args, _, _, _ = make_inputs(seqs, 8, 2, 32, 16, torch.float32)
    plan = plan_decode_row_split(
        [q for _, q in seqs], [n for n, _ in seqs], num_kv_heads=2, device=args[0].device
    )
    assert plan[0] < 700  # the 700-token row is split
    out = torch.full_like(args[0], float("nan"))
    decode_split = torch.tensor(plan, dtype=torch.int32, device=DEVICE)
    paged_attention_triton(*args, out=out, decode_split=decode_split)
    assert_close(out, paged_attention_reference(*args))


def test_plan_decode_row_split_follows_the_decode_rule(monkeypatch):
    """For 8 programs wanted (the interpreter's 4 multiprocessors)."""
    monkeypatch.setattr(decode_rows, "target_programs", lambda device: 8)
    device = torch.device(DEVICE)
    capacity = split_capacity(1, device)
    no_split = [NO_SPLIT_TOKENS] + [-1] * capacity + [0] * capacity
    # No decode rows; decode rows enough to fill the GPU; rows too short to split.
    assert plan_decode_row_split([5, 7], [900, 7], 1, device) == no_split
    assert plan_decode_row_split([1] * 8, [5000] * 8, 1, device) == no_split
    assert plan_decode_row_split([1, 300], [256, 300], 1, device) == no_split
    lens = [1000, 20, 2000, 900]
    plan = plan_decode_row_split([1, 20, 1, 30], lens, 1, device)
    tokens, seqs, firsts = plan[0], plan[1 : 1 + capacity], plan[1 + capacity :]
    parts = [(seq, first) for seq, first in zip(seqs, firsts, strict=True) if seq >= 0]
    # Two decode rows of 8 programs wanted: up to 4 parts each, the longest's
    # (2,000 positions) whole 128-position tiles: 512.
    assert tokens == 512
    # Every split row's positions once, in order, its parts consecutive; the rest whole.
    assert parts == [(0, 0), (0, 512), (2, 0), (2, 512), (2, 1024), (2, 1536)]


def test_triton_rejects_a_decode_split_of_the_wrong_layout():
    args, _, _, _ = make_inputs([(40, 1), (8, 8)], 4, 2, 16, 16, torch.float32)
    for bad in (torch.zeros(4, dtype=torch.int32), torch.zeros(5, dtype=torch.int64)):
        with pytest.raises(ValueError, match="decode_split"):
            paged_attention_triton(*args, decode_split=bad.to(DEVICE))


def test_triton_decode_rows_of_a_wide_group():
    """More query heads per kv head (32) than a decode tile's 16 rows."""
    seqs = [(70, 1), (20, 20), (5, 1)]
    args, _, _, _ = make_inputs(seqs, 32, 1, 16, 16, torch.float32)
    out = torch.full_like(args[0], float("nan"))
    paged_attention_triton(*args, out=out, config={"BLOCK_M": 64, "BLOCK_N": 16})
    assert_close(out, paged_attention_reference(*args))


ISOLATION_LOADS = {
    "query-descriptors": {"NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": True},
    "descriptors": {"NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": False},
    "pointers": {"NEW_KV_DESCRIPTORS": False},
}


# The interpreter's numpy warns where a query tile's padding rows (past its
# sequence, never stored) see the neighbour's NaN keys.
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("loads", ISOLATION_LOADS.values(), ids=ISOLATION_LOADS.keys())
@pytest.mark.parametrize("cached_context", [False, True], ids=["fresh", "cached"])
def test_triton_isolates_sequences_from_a_neighbours_non_finite_values(loads, cached_context):
    """A request whose queries, keys and values went non-finite (an overflow)
    shares a step with others: their outputs must not change. A descriptor
    tile reads rows past its sequence, the next one's new tokens: the causal
    mask weights their keys by 0, and 0 x NaN is NaN; their queries make
    rows of their own, which must not be stored."""
    seqs = [(20, 20), (30, 30), (45, 1)] if cached_context else [(20, 20), (30, 30)]
    args, _, _, _ = make_inputs(seqs, 4, 2, 32, 16, torch.float32)
    expected = paged_attention_reference(*args)
    query, key, value = args[0].clone(), args[1].clone(), args[2].clone()
    query[20:50], key[20:50], value[20:50] = float("nan"), float("nan"), float("inf")
    out = torch.full_like(args[0], float("nan"))
    config = {"BLOCK_M": 32, "BLOCK_N": 16, **loads}
    paged_attention_triton(
        query, key, value, *args[3:], out=out, config=config, cached_context=cached_context
    )
    assert_close(out[:20], expected[:20])
    assert_close(out[50:], expected[50:])


@pytest.mark.parametrize(
    "num_heads,takes_descriptor", [(8, True), (6, False)], ids=["gqa4", "gqa3"]
)
def test_triton_query_tiles_through_a_descriptor_where_their_rows_fit(
    monkeypatch, num_heads, takes_descriptor
):
    """A query tile is BLOCK_Q tokens x the group's heads: one descriptor box
    when the group size is a power of two; otherwise the kernel loads the rows
    by pointer. Either way the output matches the reference."""
    module = importlib.import_module("pagedserve.kernels.paged_attention")
    made = []
    original = module._query_tile_descriptor
    monkeypatch.setattr(
        module, "_query_tile_descriptor", lambda *a: made.append(original(*a)) or made[-1]
    )
    seqs = batch_of("mixed", 16)
    args, _, _, _ = make_inputs(seqs, num_heads, 2, 32, 16, torch.float32)
    out = torch.full_like(args[0], float("nan"))
    config = {"BLOCK_M": 32, "BLOCK_N": 16, "QUERY_DESCRIPTOR": True}
    paged_attention_triton(*args, out=out, config=config)
    assert_close(out, paged_attention_reference(*args))
    assert len(made) == 1 and (made[0] is not None) == takes_descriptor


def test_triton_rejects_key_value_of_wrong_shape_or_dtype():
    seqs = [(20, 4)]
    args, _, _, _ = make_inputs(seqs, 4, 2, 32, 16, torch.float32)
    with pytest.raises(ValueError, match="key"):
        paged_attention_triton(args[0], args[1][:3], args[2][:3], *args[3:])
    with pytest.raises(ValueError, match="dtype"):
        paged_attention_triton(args[0], args[1].double(), args[2].double(), *args[3:])
