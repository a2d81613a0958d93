"""paged_decode_attention: reference vs dense float64 attention, Triton vs reference."""

import pytest
import torch
from paged_kv_helpers import DEVICE, assert_close, dense_attention, make_paged_kv, random_tensor

from pagedserve.kernels.paged_decode_attention import paged_decode_attention_reference

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
