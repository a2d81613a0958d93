"""paged_attention: reference vs dense float64 attention, Triton vs reference."""

import importlib

import pytest
import torch
from paged_kv_helpers import DEVICE, assert_close, dense_attention, make_paged_kv, random_tensor

from pagedserve.kernels.paged_attention import paged_attention_reference, paged_attention_triton

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
    seq_lens = [n for n, _ in seqs]
    q_lens = [q for _, q in seqs]
    key_cache, value_cache, block_tables, keys, values = make_paged_kv(
        seq_lens, num_kv_heads, head_dim, block_size, dtype
    )
    query = random_tensor(sum(q_lens), num_heads, head_dim, dtype=dtype)
    starts = torch.tensor([0, *q_lens], dtype=torch.int32).cumsum(0).to(torch.int32)
    args = (
        query,
        key_cache,
        value_cache,
        block_tables,
        starts.to(DEVICE),
        torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        head_dim**-0.5,
    )
    return args, keys, values, q_lens


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
    # importlib: the package's paged_attention attribute is the dispatcher, not the module.
    module = importlib.import_module("pagedserve.kernels.paged_attention")

    seqs = [(40, 40), (23, 7)]
    args, keys, values, q_lens = make_inputs(seqs, 4, 2, 64, 16, torch.float32)
    monkeypatch.setattr(module, "_REFERENCE_MAX_SCORES", 2 * 40 * 5)
    out = module.paged_attention_reference(*args)
    assert_close(out, dense_attention(args[0], keys, values, q_lens, args[-1]))


@pytest.mark.parametrize("kind", ["decode", "prefill", "chunked", "mixed"])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_matches_reference(kind, num_heads, num_kv_heads, head_dim, block_size, dtype):
    seqs = batch_of(kind, block_size)
    args, _, _, _ = make_inputs(seqs, num_heads, num_kv_heads, head_dim, block_size, dtype)
    expected = paged_attention_reference(*args)
    out = torch.full_like(args[0], float("nan"))  # poison: every element must be written
    # Small tiles: several query tiles per sequence and several key steps.
    config = {"BLOCK_M": 32, "BLOCK_N": 16}
    paged_attention_triton(*args, out=out, config=config)
    assert_close(out, expected)


def test_triton_default_tiles_long_prefill():
    """Production tile sizes; a prompt longer than one query tile, next to decodes."""
    seqs = [(300, 300), (45, 1), (200, 70)]
    args, _, _, _ = make_inputs(seqs, 9, 3, 64, 16, torch.float32)
    out = torch.full_like(args[0], float("nan"))
    paged_attention_triton(*args, out=out)
    assert_close(out, paged_attention_reference(*args))
