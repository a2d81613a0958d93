"""write_kv_cache: reference vs a slot-by-slot loop, Triton vs reference."""

import pytest
import torch
from paged_kv_helpers import DEVICE, random_tensor

from pagedserve.kernels import PADDING_SLOT, write_kv_cache
from pagedserve.kernels.write_kv_cache import write_kv_cache_reference, write_kv_cache_triton

CONFIGS = [
    pytest.param(3, 64, 16, torch.float32, id="h3-d64-fp32"),
    pytest.param(2, 128, 16, torch.bfloat16, id="h2-d128-bf16"),
    pytest.param(1, 256, 8, torch.float16, id="h1-d256-fp16"),
]


def make_inputs(num_tokens, num_kv_heads, head_dim, block_size, dtype, num_blocks=7):
    """Keys/values as strided views of a fused qkv tensor, slots at random."""
    qkv = random_tensor(num_tokens, 3 * num_kv_heads, head_dim, dtype=dtype)
    key = qkv[:, num_kv_heads : 2 * num_kv_heads]  # [num_tokens, num_kv_heads, head_dim]
    value = qkv[:, 2 * num_kv_heads :]
    slot_mapping = torch.randperm(num_blocks * block_size)[:num_tokens].to(DEVICE)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    value_cache = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    return key, value, key_cache, value_cache, slot_mapping


def expected_caches(key, value, key_cache, value_cache, slot_mapping):
    block_size = key_cache.shape[1]
    key_expected, value_expected = key_cache.clone(), value_cache.clone()
    for token, slot in enumerate(slot_mapping.tolist()):
        key_expected[slot // block_size, slot % block_size] = key[token]
        value_expected[slot // block_size, slot % block_size] = value[token]
    return key_expected, value_expected


@pytest.mark.parametrize("num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_reference_matches_loop(num_kv_heads, head_dim, block_size, dtype):
    inputs = make_inputs(19, num_kv_heads, head_dim, block_size, dtype)
    key_expected, value_expected = expected_caches(*inputs)
    write_kv_cache_reference(*inputs)
    torch.testing.assert_close(inputs[2], key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(inputs[3], value_expected, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_triton_matches_reference(num_kv_heads, head_dim, block_size, dtype):
    key, value, key_cache, value_cache, slot_mapping = make_inputs(
        23, num_kv_heads, head_dim, block_size, dtype
    )
    key_expected, value_expected = key_cache.clone(), value_cache.clone()
    write_kv_cache_reference(key, value, key_expected, value_expected, slot_mapping)
    write_kv_cache_triton(key, value, key_cache, value_cache, slot_mapping)
    # Bit-exact, and the slots nobody wrote still hold their NaN poison.
    torch.testing.assert_close(key_cache, key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(value_cache, value_expected, equal_nan=True, atol=0, rtol=0)


def test_dispatcher_uses_triton_when_asked(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_KERNELS", "triton")
    key, value, key_cache, value_cache, slot_mapping = make_inputs(5, 3, 64, 16, torch.float32)
    key_expected, value_expected = expected_caches(key, value, key_cache, value_cache, slot_mapping)
    write_kv_cache(key, value, key_cache, value_cache, slot_mapping)
    torch.testing.assert_close(key_cache, key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(value_cache, value_expected, equal_nan=True, atol=0, rtol=0)


def test_reference_non_contiguous_cache():
    """A cache that is a strided view (e.g. one head of a larger cache) still works."""
    key, value, _, _, slot_mapping = make_inputs(9, 2, 64, 16, torch.float32)
    big = torch.full((7, 16, 4, 64), float("nan"), device=DEVICE)
    key_cache, value_cache = big[:, :, :2], big[:, :, 2:]
    key_expected, value_expected = expected_caches(key, value, key_cache, value_cache, slot_mapping)
    write_kv_cache_reference(key, value, key_cache, value_cache, slot_mapping)
    torch.testing.assert_close(key_cache, key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(value_cache, value_expected, equal_nan=True, atol=0, rtol=0)


def with_padding(slot_mapping: torch.Tensor, padding_rows: list[int]) -> torch.Tensor:
    """slot_mapping with PADDING_SLOT at padding_rows (as a padded CUDA-graph batch has)."""
    padded = slot_mapping.clone()
    padded[padding_rows] = PADDING_SLOT
    return padded


@pytest.mark.parametrize("write", [write_kv_cache_reference, write_kv_cache_triton])
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size,dtype", CONFIGS)
def test_padding_slots_write_nothing(write, num_kv_heads, head_dim, block_size, dtype):
    """Rows whose slot is PADDING_SLOT leave the cache as it was; the others land."""
    key, value, key_cache, value_cache, slot_mapping = make_inputs(
        11, num_kv_heads, head_dim, block_size, dtype
    )
    padding_rows = [0, 4, 10]
    real_rows = [row for row in range(11) if row not in padding_rows]
    key_expected, value_expected = expected_caches(
        key[real_rows], value[real_rows], key_cache, value_cache, slot_mapping[real_rows]
    )
    write(key, value, key_cache, value_cache, with_padding(slot_mapping, padding_rows))
    # The NaN poison of every slot no real row owns is still there, bit for bit.
    torch.testing.assert_close(key_cache, key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(value_cache, value_expected, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("write", [write_kv_cache_reference, write_kv_cache_triton])
def test_all_padding_writes_nothing(write):
    key, value, key_cache, value_cache, slot_mapping = make_inputs(4, 3, 64, 16, torch.float32)
    key_cache.normal_()
    value_cache.normal_()
    key_before, value_before = key_cache.clone(), value_cache.clone()
    write(key, value, key_cache, value_cache, torch.full_like(slot_mapping, PADDING_SLOT))
    assert torch.equal(key_cache, key_before) and torch.equal(value_cache, value_before)


def test_reference_padding_non_contiguous_cache():
    key, value, _, _, slot_mapping = make_inputs(9, 2, 64, 16, torch.float32)
    big = torch.full((7, 16, 4, 64), float("nan"), device=DEVICE)
    key_cache, value_cache = big[:, :, :2], big[:, :, 2:]
    key_expected, value_expected = expected_caches(
        key[1:], value[1:], key_cache, value_cache, slot_mapping[1:]
    )
    write_kv_cache_reference(key, value, key_cache, value_cache, with_padding(slot_mapping, [0]))
    torch.testing.assert_close(key_cache, key_expected, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(value_cache, value_expected, equal_nan=True, atol=0, rtol=0)
