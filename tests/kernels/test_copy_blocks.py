"""copy_blocks: reference vs a block-by-block loop, Triton vs reference."""

import pytest
import torch
from paged_kv_helpers import DEVICE, random_tensor

from pagedserve.kernels import copy_blocks
from pagedserve.kernels.copy_blocks import copy_blocks_reference, copy_blocks_triton

# (num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype)
CONFIGS = [
    pytest.param(2, 9, 16, 3, 64, torch.float32, id="l2-h3-d64-fp32"),
    pytest.param(3, 6, 4, 2, 128, torch.bfloat16, id="l3-h2-d128-bf16"),
]


def make_inputs(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype, num_copies=3):
    pool = random_tensor(num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    order = torch.randperm(num_blocks)
    src = order[:num_copies].to(DEVICE)
    dst = order[num_copies : 2 * num_copies].to(DEVICE)
    return pool, src, dst


def expected_pool(pool, src, dst):
    expected = pool.clone()
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        for layer in range(pool.shape[0]):
            for kv in range(2):
                expected[layer, kv, d] = pool[layer, kv, s]
    return expected


@pytest.mark.parametrize("num_layers,num_blocks,block_size,num_kv_heads,head_dim,dtype", CONFIGS)
def test_reference_matches_loop(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype):
    pool, src, dst = make_inputs(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype)
    expected = expected_pool(pool, src, dst)
    copy_blocks_reference(pool, src, dst)
    assert torch.equal(pool, expected)


@pytest.mark.parametrize("num_layers,num_blocks,block_size,num_kv_heads,head_dim,dtype", CONFIGS)
def test_triton_matches_reference(
    num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype
):
    pool, src, dst = make_inputs(num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype)
    expected = pool.clone()
    copy_blocks_reference(expected, src, dst)
    copy_blocks_triton(pool, src, dst)
    assert torch.equal(pool, expected)


def test_dispatcher_uses_triton_when_asked(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_KERNELS", "triton")
    pool, src, dst = make_inputs(2, 5, 4, 1, 32, torch.float32, num_copies=2)
    expected = expected_pool(pool, src, dst)
    copy_blocks(pool, src, dst)
    assert torch.equal(pool, expected)
