"""The gated MLP's activation: silu(gate) * up, from the fused gate_up projection."""

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher

# Values per program: 16 bytes per thread at 4 warps for bf16, several loads deep.
_COLUMNS_PER_PROGRAM = 1024


def silu_and_mul_reference(
    x: torch.Tensor,  # [num_tokens, 2 * intermediate_size]: gate then up
) -> torch.Tensor:  # [num_tokens, intermediate_size], x's dtype
    """Pure torch: silu(x[:, :d]) * x[:, d:] with silu in fp32."""
    gate, up = x.chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(x.dtype)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,
    out_ptr,
    x_stride_row,
    INTERMEDIATE_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE_SIZE
    gate = tl.load(x_ptr + row * x_stride_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride_row + INTERMEDIATE_SIZE + cols, mask=mask, other=0.0)
    out = gate * tl.sigmoid(gate) * up.to(tl.float32)
    tl.store(out_ptr + row * INTERMEDIATE_SIZE + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


_silu_and_mul_launcher = DirectLauncher(_silu_and_mul_kernel)


def silu_and_mul_triton(
    x: torch.Tensor,  # [num_tokens, 2 * intermediate_size]
) -> torch.Tensor:  # [num_tokens, intermediate_size], x's dtype
    """Triton: one program per (token, 1024 columns). Raises ValueError on an odd width."""
    num_tokens, width = x.shape
    if width % 2:
        raise ValueError(f"last dimension {width} is not even")
    if x.stride(1) != 1:
        x = x.contiguous()
    intermediate_size = width // 2
    out = torch.empty(num_tokens, intermediate_size, dtype=x.dtype, device=x.device)
    if num_tokens == 0:
        return out
    block = min(_COLUMNS_PER_PROGRAM, next_power_of_2(intermediate_size))
    grid = (num_tokens, triton.cdiv(intermediate_size, block))
    _silu_and_mul_launcher.launch(
        grid, x, out, x.stride(0), INTERMEDIATE_SIZE=intermediate_size, BLOCK=block
    )
    return out
