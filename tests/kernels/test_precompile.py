"""kernels.precompile: returns at once where the references serve; on a GPU,
leaves nothing for a sweep of step shapes to compile."""

import random

import pytest
import torch

from pagedserve import kernels
from pagedserve.kernels.paged_decode_attention import partition_count_classes

SHAPE = {"num_heads": 8, "num_kv_heads": 2, "head_dim": 64}


def test_precompile_returns_at_once_on_cpu():
    launches = kernels.precompile(**SHAPE, dtype=torch.float32, block_size_tokens=16, device="cpu")
    assert launches == 0
    assert kernels.compiled_variant_counts(torch.device("cpu")) == {}


def test_partition_classes_cover_every_merge_variant():
    assert partition_count_classes() == [1, 2, 4, 8, 16, 32, 64]


def _random_step(rng: random.Random, block_size: int, num_blocks: int, device):
    """One executor step's tensors: decode or a mixed prefill batch."""
    num_seqs = rng.choice([1, 2, 3, 16, 17, 31, 64])
    seq_lens = [rng.randint(1, 600) for _ in range(num_seqs)]
    new_tokens = [rng.randint(1, n) for n in seq_lens]
    width = max(-(-n // block_size) for n in seq_lens) + rng.randint(0, 5)
    table = torch.randint(0, num_blocks, (num_seqs, width), dtype=torch.int32, device=device)
    return seq_lens, new_tokens, table


# Float32 has launch options of its own (its "tf32x3" dot needs more shared
# memory): precompile would raise if a variant did not fit the card.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compilation happens on a GPU only")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_precompile_leaves_no_variant_for_a_sweep(dtype):
    device, block_size = torch.device("cuda"), 16
    kernels.precompile(**SHAPE, dtype=dtype, block_size_tokens=block_size, device=device)
    before = kernels.compiled_variant_counts(device)
    num_blocks, heads, kv_heads, dim = 64, SHAPE["num_heads"], SHAPE["num_kv_heads"], 64
    cache = torch.randn(num_blocks, block_size, kv_heads, dim, dtype=dtype, device=device)
    rng = random.Random(0)
    for _ in range(40):
        seq_lens, new_tokens, table = _random_step(rng, block_size, num_blocks, device)
        lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
        query = torch.randn(len(seq_lens), heads, dim, dtype=dtype, device=device)
        kernels.paged_decode_attention(query, cache, cache, table, lens, dim**-0.5)
        num_tokens = sum(new_tokens)
        starts = torch.tensor([0] + new_tokens, device=device).cumsum(0).to(torch.int32)
        query = torch.randn(num_tokens, heads, dim, dtype=dtype, device=device)
        key = torch.randn(num_tokens, kv_heads, dim, dtype=dtype, device=device)
        slots = torch.randint(0, num_blocks * block_size, (num_tokens,), device=device)
        kernels.write_kv_cache(key, key, cache.clone(), cache.clone(), slots)
        cached = any(n > q for n, q in zip(seq_lens, new_tokens, strict=True))
        kernels.paged_attention(
            query, key, key, cache, cache, table, starts, lens, dim**-0.5, cached_context=cached
        )
    torch.cuda.synchronize()
    assert kernels.compiled_variant_counts(device) == before
