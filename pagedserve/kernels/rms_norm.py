"""RMSNorm, alone and fused with the residual add that precedes it in a decoder layer.

Rounding follows the usual Llama-family order, so that outputs match a
transformers model bit for bit where the arithmetic allows: the residual sum is
rounded to the input dtype, normalised in fp32, rounded to the input dtype,
then multiplied by the weight and rounded once more.
"""

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher


def rms_norm_reference(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> torch.Tensor:  # [num_tokens, hidden_size], x's dtype
    """Pure torch: weight * (x / sqrt(mean(x^2) + eps)), statistics in fp32."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (weight * normed.to(x.dtype)).to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    residual: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (normed, x + residual), x's dtype
    """Pure torch: the residual stream's new value and its RMSNorm."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,  # read when HAS_RESIDUAL
    weight_ptr,
    out_ptr,
    summed_ptr,  # written when HAS_RESIDUAL
    x_stride_row,
    residual_stride_row,
    eps,
    HIDDEN_SIZE: tl.constexpr,
    HIDDEN_BLOCK: tl.constexpr,  # HIDDEN_SIZE rounded up to a power of two
    HAS_RESIDUAL: tl.constexpr,
):
    # One program per token: the whole row fits in registers (hidden <= 16k).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, HIDDEN_BLOCK)
    mask = cols < HIDDEN_SIZE
    x = tl.load(x_ptr + row * x_stride_row + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_stride_row + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(summed_ptr + row * HIDDEN_SIZE + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_square = tl.sum(x32 * x32, axis=0) / HIDDEN_SIZE
    normed = (x32 * tl.rsqrt(mean_square + eps)).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = normed.to(tl.float32) * weight.to(tl.float32)
    tl.store(out_ptr + row * HIDDEN_SIZE + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


_rms_norm_launcher = DirectLauncher(_rms_norm_kernel)


def _launch(x, residual, weight, eps):
    num_tokens, hidden_size = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    out = torch.empty(num_tokens, hidden_size, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out) if residual is not None else out
    if num_tokens == 0:
        return out, summed
    _rms_norm_launcher.launch(
        (num_tokens,),
        x, residual if residual is not None else x, weight, out, summed,
        x.stride(0), residual.stride(0) if residual is not None else 0, eps,
        HIDDEN_SIZE=hidden_size, HIDDEN_BLOCK=next_power_of_2(hidden_size),
        HAS_RESIDUAL=residual is not None,
        num_warps=4 if hidden_size <= 4096 else 8,
    )  # fmt: skip
    return out, summed


def rms_norm_triton(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> torch.Tensor:  # [num_tokens, hidden_size], x's dtype
    """Triton: one program per token."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm_triton(
    x: torch.Tensor,  # [num_tokens, hidden_size]
    residual: torch.Tensor,  # [num_tokens, hidden_size]
    weight: torch.Tensor,  # [hidden_size]
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (normed, x + residual), x's dtype
    """Triton: the add and the norm in one pass over the row."""
    return _launch(x, residual, weight, eps)
