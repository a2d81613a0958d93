"""RMSNorm, rotary embedding, SiLU-and-mul: reference vs float64 formulas, Triton vs reference."""

import math

import pytest
import torch
from paged_kv_helpers import DEVICE, assert_close, random_tensor

from pagedserve.kernels import add_rms_norm, rms_norm, rotary_embedding, silu_and_mul
from pagedserve.kernels.rms_norm import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from pagedserve.kernels.rotary_embedding import (
    rope_cos_sin_cache,
    rotary_embedding_reference,
    rotary_embedding_triton,
)
from pagedserve.kernels.silu_and_mul import silu_and_mul_reference, silu_and_mul_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [576, 1024])
def test_rms_norm(dtype, hidden_size):
    x = random_tensor(7, hidden_size, dtype=dtype) * 3
    weight = random_tensor(hidden_size, dtype=dtype)
    x64 = x.double()
    expected = weight.double() * x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
    reference = rms_norm_reference(x, weight, 1e-5)
    assert_close(reference, expected)
    assert_close(rms_norm_triton(x, weight, 1e-5), reference)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm(dtype):
    x = random_tensor(5, 576, dtype=dtype)
    residual = random_tensor(5, 576, dtype=dtype)
    weight = random_tensor(576, dtype=dtype)
    normed, summed = add_rms_norm_reference(x, residual, weight, 1e-6)
    assert torch.equal(summed, x + residual)
    assert_close(normed, rms_norm_reference(x + residual, weight, 1e-6))
    normed_triton, summed_triton = add_rms_norm_triton(x, residual, weight, 1e-6)
    if dtype == torch.bfloat16 and not x.is_cuda:
        # Triton's interpreter rounds fp32 -> bf16 toward zero, compiled code to nearest.
        assert_close(summed_triton, summed)
    else:
        assert torch.equal(summed_triton, summed)
    assert_close(normed_triton, normed)


def rotate_complex(x, positions, rotary_dim, base):
    """Float64 rotation as complex multiplication, pair (i, i + half) = re + i*im."""
    half = rotary_dim // 2
    out = x.double().clone()
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / rotary_dim)
    angles = positions.double().cpu()[:, None] * freqs[None, :]  # [num_tokens, half]
    rotation = torch.polar(torch.ones_like(angles), angles)[:, None, :].to(x.device)
    pairs = torch.complex(out[..., :half], out[..., half:rotary_dim]) * rotation
    out[..., :half], out[..., half:rotary_dim] = pairs.real, pairs.imag
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (64, 32)])
def test_rotary_embedding(dtype, head_dim, rotary_dim):
    positions = torch.randint(0, 4000, (6,), device=DEVICE)
    cache = rope_cos_sin_cache(4096, rotary_dim, 10000.0, DEVICE)
    # Query and key as strided views of one fused qkv tensor, 9 / 3 heads.
    qkv = random_tensor(6, 9 + 3 + 3, head_dim, dtype=dtype)
    query, key = qkv[:, :9], qkv[:, 9:12]
    expected_query = rotate_complex(query, positions, rotary_dim, 10000.0)
    expected_key = rotate_complex(key, positions, rotary_dim, 10000.0)
    untouched = qkv[:, 12:].clone()
    ref_query, ref_key = query.clone(), key.clone()
    rotary_embedding_reference(positions, ref_query, ref_key, cache)
    assert_close(ref_query, expected_query)
    assert_close(ref_key, expected_key)
    rotary_embedding_triton(positions, query, key, cache)
    assert_close(query, ref_query)
    assert_close(key, ref_key)
    assert torch.equal(qkv[:, 12:], untouched)  # the values next to q and k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate_size", [1536, 100])
def test_silu_and_mul(dtype, intermediate_size):
    x = random_tensor(4, 2 * intermediate_size, dtype=dtype) * 4
    gate, up = x.double().chunk(2, dim=-1)
    expected = gate / (1 + torch.exp(-gate)) * up
    reference = silu_and_mul_reference(*x.chunk(2, dim=-1))
    assert_close(reference, expected)
    # The halves of one tensor (strided views), as a fused gate_up would give,
    # and two tensors of their own, as separate projections give.
    assert_close(silu_and_mul_triton(*x.chunk(2, dim=-1)), reference)
    gate_only, up_only = (half.contiguous() for half in x.chunk(2, dim=-1))
    assert torch.equal(
        silu_and_mul_triton(gate_only, up_only), silu_and_mul_triton(*x.chunk(2, -1))
    )


def test_dispatchers_use_triton_when_asked(monkeypatch):
    monkeypatch.setenv("PAGEDSERVE_KERNELS", "triton")
    x = random_tensor(3, 64, dtype=torch.float32)
    weight = random_tensor(64, dtype=torch.float32)
    assert_close(rms_norm(x, weight, 1e-5), rms_norm_reference(x, weight, 1e-5))
    assert_close(add_rms_norm(x, x, weight, 1e-5)[0], rms_norm_reference(2 * x, weight, 1e-5))
    assert_close(silu_and_mul(x, 2 * x), silu_and_mul_reference(x, 2 * x))
    query = random_tensor(3, 2, 16, dtype=torch.float32)
    key = random_tensor(3, 1, 16, dtype=torch.float32)
    positions = torch.tensor([0, 5, 9], device=DEVICE)
    cache = rope_cos_sin_cache(16, 16, 10000.0, DEVICE)
    expected = rotate_complex(query, positions, 16, 10000.0)
    rotary_embedding(positions, query, key, cache)
    assert_close(query, expected)
    assert math.isfinite(float(key.abs().sum()))
