"""Drawing one token per row by the Gumbel-max trick over hashed noise.

token = argmax over the vocabulary of scaled[v] + G[v], with G = -log(-log U)
Gumbel noise, draws token v with probability softmax(scaled)[v] (tokens
masked with -inf never). U[row, v] is a hash of (seeds[row], v): SplitMix's
golden-ratio step, then MurmurHash3's 32-bit finalizer, 24 bits of it as a
float32 in (0, 1). The noise depends on nothing but the row's seed and the
token id, so a row draws the same token whatever else shares its batch, and
the kernel and the reference compute the same U bit for bit.

The torch reference takes some twenty passes over [rows, vocab]; the Triton
kernel reads each row once, in one launch (executor/sampler.py, the sampled
rows of a step).
"""

import torch

from pagedserve.kernels._backend import tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher

# SplitMix's golden-ratio increment and MurmurHash3's 32-bit finalizer
# constants, as signed int32 (torch's and Triton's int32 products wrap around).
_GOLDEN_32 = 0x9E3779B9 - (1 << 32)
_MIX_1 = 0x85EBCA6B - (1 << 32)
_MIX_2 = 0xC2B2AE35 - (1 << 32)
# Values per program step of the kernel.
_BLOCK = 2048


def _shift_right_into(h: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    """out = logical right shift of int32 h (torch's >> keeps the sign)."""
    torch.bitwise_right_shift(h, bits, out=out)
    return out.bitwise_and_((1 << (32 - bits)) - 1)


def hashed_uniforms_reference(
    seeds: torch.Tensor,  # [rows] int32
    vocab_size: int,
) -> torch.Tensor:  # [rows, vocab] float32 in (0, 1)
    """Pure torch, in place where it can: U[row, v] as the module says."""
    token_ids = torch.arange(vocab_size, dtype=torch.int32, device=seeds.device)
    h = seeds[:, None] + token_ids[None, :] * _GOLDEN_32
    shifted = torch.empty_like(h)
    h.bitwise_xor_(_shift_right_into(h, 16, shifted)).mul_(_MIX_1)
    h.bitwise_xor_(_shift_right_into(h, 13, shifted)).mul_(_MIX_2)
    h.bitwise_xor_(_shift_right_into(h, 16, shifted))
    # 24 bits, exact in float32; + 0.5 keeps 0 and 1 out.
    uniforms = _shift_right_into(h, 8, shifted).to(torch.float32)
    return uniforms.add_(0.5).mul_(1.0 / (1 << 24))


def gumbel_sample_reference(
    scaled: torch.Tensor,  # [rows, vocab] float32: logits / temperature, masked with -inf
    seeds: torch.Tensor,  # [rows] int32
) -> torch.Tensor:  # [rows] int64
    """Pure torch: argmax(scaled + Gumbel noise) per row."""
    gumbel = hashed_uniforms_reference(seeds, scaled.shape[-1]).log_().neg_().log_().neg_()
    return gumbel.add_(scaled).argmax(-1)


@triton.jit
def _gumbel_sample_kernel(
    scaled_ptr,
    seeds_ptr,
    out_ptr,
    scaled_stride_row,
    vocab_size,
    GOLDEN: tl.constexpr,
    MIX_1: tl.constexpr,
    MIX_2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per row: a running maximum of scaled + noise over the row.
    row = tl.program_id(0)
    seed = tl.load(seeds_ptr + row)
    row_ptr = scaled_ptr + row.to(tl.int64) * scaled_stride_row
    best_value = float("-inf")
    best_token = 0
    for first in range(0, vocab_size, BLOCK):
        tokens = first + tl.arange(0, BLOCK)
        valid = tokens < vocab_size
        scaled = tl.load(row_ptr + tokens, mask=valid, other=float("-inf"))
        # int32 throughout, as the reference: products wrap, and >> keeps the
        # sign, so each shift is masked into a logical one.
        h = seed + tokens * GOLDEN
        h = (h ^ ((h >> 16) & 0xFFFF)) * MIX_1
        h = (h ^ ((h >> 13) & 0x7FFFF)) * MIX_2
        h = h ^ ((h >> 16) & 0xFFFF)
        uniforms = (((h >> 8) & 0xFFFFFF).to(tl.float32) + 0.5) * (1.0 / (1 << 24))
        values = scaled - tl.log(-tl.log(uniforms))
        values = tl.where(valid, values, float("-inf"))
        block_best = tl.max(values, axis=0)
        block_token = first + tl.argmax(values, axis=0)
        better = block_best > best_value  # ties keep the earlier token, as torch.argmax
        best_token = tl.where(better, block_token, best_token)
        best_value = tl.where(better, block_best, best_value)
    tl.store(out_ptr + row, best_token.to(tl.int64))


_gumbel_sample_launcher = DirectLauncher(_gumbel_sample_kernel)


def gumbel_sample_triton(
    scaled: torch.Tensor,  # [rows, vocab] float32
    seeds: torch.Tensor,  # [rows] int32
) -> torch.Tensor:  # [rows] int64
    """Triton: one program per row. Raises ValueError on a non-float32 input
    or seeds that are not one int32 per row."""
    if scaled.dtype != torch.float32 or scaled.dim() != 2:
        raise ValueError(f"scaled must be [rows, vocab] float32, got {scaled.dtype} {scaled.shape}")
    if seeds.dtype != torch.int32 or seeds.shape != scaled.shape[:1]:
        raise ValueError(f"seeds must be [rows] int32, got {seeds.dtype} {tuple(seeds.shape)}")
    if scaled.stride(1) != 1:
        scaled = scaled.contiguous()
    rows, vocab_size = scaled.shape
    out = torch.empty(rows, dtype=torch.int64, device=scaled.device)
    if rows == 0:
        return out
    _gumbel_sample_launcher.launch(
        (rows,), scaled, seeds, out, scaled.stride(0), vocab_size,
        GOLDEN=_GOLDEN_32, MIX_1=_MIX_1, MIX_2=_MIX_2, BLOCK=_BLOCK,
    )  # fmt: skip
    return out
