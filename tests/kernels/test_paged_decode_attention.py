"""paged_decode_attention: reference vs dense float64 attention, Triton vs reference."""

import importlib
import itertools

import pytest
import torch
from paged_kv_helpers import DEVICE, assert_close, dense_attention, make_paged_kv, random_tensor

from pagedserve.kernels import paged_attention, paged_decode_attention
from pagedserve.kernels.paged_attention_reference import paged_attention_reference
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton
from pagedserve.kernels.paged_decode_attention_reference import paged_decode_attention_reference

CONFIGS = [
    pytest.param(9, 3, 64, 16, torch.float32, id="gqa9x3-d64-fp32"),
    pytest.param(8, 2, 128, 16, torch.bfloat16, id="gqa8x2-d128-bf16"),
    pytest.param(4, 4, 256, 8, torch.float16, id="mha4-d256-fp16"),
]


def make_inputs(seq_lens, num_heads, num_kv_heads, head_dim, block_size, dtype):
    key_cache, value_cache, block_tables, keys, values = make_paged_kv(
        seq_lens, num_kv_heads, head_dim, block_size, dtype
    )
    query = random_tensor(len(seq_lens), num_heads, head_dim, dtype=dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    args = (query, key_cache, value_cache, block_tables, lens, head_dim**-0.5)
    return args, keys, values


def lengths_around(block_size: int) -> list[int]:
    return [1, block_size - 1, block_size, block_size + 1, 9 * block_size + 5]


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_reference_matches_dense(num_heads, num_kv_heads, head_dim, block_size, dtype):
    seq_lens = lengths_around(block_size)
    args, keys, values = make_inputs(seq_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    out = paged_decode_attention_reference(*args)
    expected = dense_attention(args[0], keys, values, [1] * len(seq_lens), args[-1])
    assert_close(out, expected)


@pytest.mark.parametrize("partition_tokens", [None, 64], ids=["auto", "partitions64"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_matches_reference(
    num_heads, num_kv_heads, head_dim, block_size, dtype, partition_tokens
):
    seq_lens = lengths_around(block_size)
    args, _, _ = make_inputs(seq_lens, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_decode_attention_reference(*args)
    out = torch.full_like(args[0], float("nan"))
    # The default tiles for "auto"; small ones for 64-key partitions.
    config = {"BLOCK_N": 32} if head_dim > 128 or partition_tokens else None
    paged_decode_attention_triton(*args, out=out, partition_tokens=partition_tokens, config=config)
    assert_close(out, expected)


def test_triton_single_partition_writes_output_directly():
    """Many sequences: one partition each, no merge kernel."""
    seq_lens = [3, 17, 40, 1, 33, 16, 15, 8] * 2
    args, _, _ = make_inputs(seq_lens, 9, 3, 64, 16, torch.float32)
    out = torch.full_like(args[0], float("nan"))
    paged_decode_attention_triton(*args, out=out, partition_tokens=64 * 4)
    assert_close(out, paged_decode_attention_reference(*args))


def test_dispatchers_use_triton_when_asked(monkeypatch):
    """Both attention dispatchers, through Triton, against the dense computation."""
    monkeypatch.setenv("PAGEDSERVE_KERNELS", "triton")
    seq_lens = [5, 16, 33]
    args, keys, values = make_inputs(seq_lens, 9, 3, 64, 16, torch.float32)
    expected = dense_attention(args[0], keys, values, [1] * len(seq_lens), args[-1])
    assert_close(paged_decode_attention(*args), expected)
    query_start_loc = torch.arange(len(seq_lens) + 1, dtype=torch.int32, device=DEVICE)
    query, key_cache, value_cache, block_tables, lens, scale = args
    new_key = torch.stack([k[-1] for k in keys]).to(DEVICE)  # [num_seqs, num_kv_heads, head_dim]
    new_value = torch.stack([v[-1] for v in values]).to(DEVICE)
    out = paged_attention(
        query, new_key, new_value, key_cache, value_cache, block_tables, query_start_loc, lens,
        scale,
    )  # fmt: skip
    assert_close(out, expected)


def test_triton_both_grid_orders():
    """kv-head-major (the default at head size <= 128) and sequence-major grids."""
    seq_lens = lengths_around(16)
    args, _, _ = make_inputs(seq_lens, 8, 2, 64, 16, torch.float32)
    expected = paged_decode_attention_reference(*args)
    for partition_tokens, heads_fastest in itertools.product((64, None), (True, False)):
        out = torch.full_like(args[0], float("nan"))
        paged_decode_attention_triton(
            *args,
            out=out,
            partition_tokens=partition_tokens,
            config={"HEADS_FASTEST": heads_fastest, "BLOCK_N": 32},
        )
        assert_close(out, expected)


def test_partition_rule_on_a_132_multiprocessor_card(monkeypatch):
    """About two programs per multiprocessor: a batch whose sequences x kv heads
    already nearly reach that keeps one partition per sequence; batch 1 splits."""
    module = importlib.import_module("pagedserve.kernels.paged_decode_attention")
    monkeypatch.setattr(module, "_num_sms", lambda device: 132)
    device = torch.device("cpu")
    assert module.choose_partition_tokens(32, 8, 1072, device, 128) >= 1072  # one partition
    assert module.choose_partition_tokens(32, 8, 32816, device, 128) >= 32816
    tokens = module.choose_partition_tokens(1, 8, 32816, device, 128)
    assert tokens % 128 == 0 and 30 <= -(-32816 // tokens) <= 36  # about 33 partitions
    assert module.choose_partition_tokens(1, 8, 1072, device, 128) >= 256  # no tiny partitions


@pytest.mark.parametrize("num_seqs", [1, 2, 4, 8, 16, 32])
def test_table_widths_keep_half_the_partitions_busy(monkeypatch, num_seqs):
    """A decode graph of num_seqs sequences (8 kv heads, blocks of 16) runs a
    step at the narrowest width of decode_table_widths that holds it: at
    least half the partitions the step's own width would give have keys."""
    module = importlib.import_module("pagedserve.kernels.paged_decode_attention")
    monkeypatch.setattr(module, "_num_sms", lambda device: 132)
    device, block_size, max_blocks = torch.device("cpu"), 16, 2048  # 32k tokens
    widths = module.decode_table_widths(num_seqs, 8, max_blocks, block_size, device)
    assert widths == sorted(set(widths)) and widths[-1] == max_blocks
    if num_seqs >= 32:  # 256 programs: one partition whatever the width
        assert widths == [max_blocks]

    def busy_partitions(seq_len: int, width: int) -> int:
        tokens = module.choose_partition_tokens(num_seqs, 8, width * block_size, device, 128)
        return -(-seq_len // tokens)

    for blocks in range(1, max_blocks + 1, 7):
        seq_len = blocks * block_size
        taken = next(width for width in widths if width >= blocks)
        assert 2 * busy_partitions(seq_len, taken) >= busy_partitions(seq_len, blocks), blocks
    # One width would not: 8 sequences of 1k keys at a 32k table.
    if num_seqs == 8:
        assert 4 * busy_partitions(1024, max_blocks) <= busy_partitions(1024, 64)


def one_sequence_at_a_time(args) -> torch.Tensor:
    """Each sequence's decode alone: its own keys gathered, one SDPA call (the
    references' path before they grouped sequences)."""
    reference = importlib.import_module("pagedserve.kernels.paged_attention_reference")
    query, key_cache, value_cache, block_tables, lens, scale = args
    rows = []
    for seq, seq_len in enumerate(lens.tolist()):
        key = reference.gather_sequence_kv(key_cache, block_tables[seq], seq_len)
        value = reference.gather_sequence_kv(value_cache, block_tables[seq], seq_len)
        rows.append(reference._attend_one_sequence(query[seq : seq + 1], key, value, scale))
    return torch.cat(rows)


def decode_rows_of(args) -> tuple:
    """The varlen reference's arguments for a decode batch: each sequence's new
    key and value are the cache's entries at its last position."""
    query, key_cache, value_cache, block_tables, lens, scale = args
    positions = lens.long() - 1
    block_size = key_cache.shape[1]
    last_blocks = block_tables.gather(1, (positions // block_size)[:, None])[:, 0].long()
    key = key_cache[last_blocks, positions % block_size]
    value = value_cache[last_blocks, positions % block_size]
    query_start_loc = torch.arange(len(lens) + 1, dtype=torch.int32, device=DEVICE)
    return (query, key, value, key_cache, value_cache, block_tables, query_start_loc, lens, scale)


def poison_all_but_live_slots(args) -> None:
    """NaN in every cache slot that holds none of the sequences' tokens: what a
    freed block's unused slots may hold from an earlier, diverged request."""
    key_cache, value_cache, block_tables, lens = args[1], args[2], args[3], args[4]
    block_size = key_cache.shape[1]
    live = torch.zeros(key_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for seq, seq_len in enumerate(lens.tolist()):
        for position in range(seq_len):
            live[int(block_tables[seq, position // block_size]), position % block_size] = True
    key_cache[~live] = float("nan")
    value_cache[~live] = float("nan")


SEQ_LENS_OUT_OF_ORDER = [300, 1, 17, 2049, 16, 5, 64, 1000, 33, 15]


@pytest.mark.parametrize("budget", [None, 4096], ids=["one-group", "small-groups"])
def test_reference_batches_like_one_by_one(monkeypatch, budget):
    """The decode reference, and the varlen reference's decode rows, attend a
    group of sequences at a time (padded to the group's longest, masked): the
    output of one sequence at a time, for lengths far apart, in an order that
    is not by length, and with table entries past each sequence's blocks out
    of the pool."""
    if budget is not None:
        # 4,096 values = 21 padded keys at 3 kv heads x 64: groups of one or a few.
        module = importlib.import_module("pagedserve.kernels.paged_decode_attention_reference")
        monkeypatch.setattr(module, "_REFERENCE_MAX_GATHERED_VALUES", budget)
    args, _, _ = make_inputs(SEQ_LENS_OUT_OF_ORDER, 9, 3, 64, 16, torch.float32)
    one_by_one = one_sequence_at_a_time(args)
    # Equal up to float32 rounding: SDPA's sums over a batch, and over padded
    # keys, round differently from one sequence's (last bits, about 1e-7).
    for batched in (
        paged_decode_attention_reference(*args),
        paged_attention_reference(*decode_rows_of(args)),
    ):
        assert torch.isfinite(batched).all()
        torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


def test_reference_groups_never_read_stale_slots():
    """Padding a group reads slots past each sequence's end (and block 0 for
    table entries past its blocks): NaN left there by an earlier request must
    not reach any output."""
    args, _, _ = make_inputs(SEQ_LENS_OUT_OF_ORDER, 9, 3, 64, 16, torch.float32)
    one_by_one = one_sequence_at_a_time(args)
    varlen_args = decode_rows_of(args)  # new keys copied out before the poison
    poison_all_but_live_slots(args)
    torch.testing.assert_close(paged_decode_attention_reference(*args), one_by_one)
    torch.testing.assert_close(paged_attention_reference(*varlen_args), one_by_one)
