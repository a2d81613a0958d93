"""The gated MLP's activation: silu(gate) * up, from the gate and up projections."""

import torch

from pagedserve.kernels._backend import next_power_of_2, tl, triton
from pagedserve.kernels.direct_launch import DirectLauncher

# Values per program: 16 bytes per thread at 4 warps for bf16, several loads deep.
_COLUMNS_PER_PROGRAM = 1024


def silu_and_mul_reference(
    gate: torch.Tensor,  # [num_tokens, intermediate_size]
    up: torch.Tensor,  # [num_tokens, intermediate_size]
) -> torch.Tensor:  # [num_tokens, intermediate_size], gate's dtype
    """Pure torch: silu(gate) * up in fp32, rounded once (in float32, the same
    operations as transformers' `act_fn(gate) * up`)."""
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


@triton.jit
def _silu_and_mul_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    gate_stride_row,
    up_stride_row,
    INTERMEDIATE_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE_SIZE
    gate = tl.load(gate_ptr + row * gate_stride_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + row * up_stride_row + cols, mask=mask, other=0.0)
    out = gate * tl.sigmoid(gate) * up.to(tl.float32)
    tl.store(out_ptr + row * INTERMEDIATE_SIZE + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


_silu_and_mul_launcher = DirectLauncher(_silu_and_mul_kernel)


def silu_and_mul_triton(
    gate: torch.Tensor,  # [num_tokens, intermediate_size]
    up: torch.Tensor,  # [num_tokens, intermediate_size]
) -> torch.Tensor:  # [num_tokens, intermediate_size], gate's dtype
    """Triton: one program per (token, 1024 columns). gate and up may be views
    (e.g. the halves of a fused gate_up output). Raises ValueError when their
    shapes differ."""
    if gate.shape != up.shape or gate.dim() != 2:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)}: want equal [T, I]")
    if gate.stride(1) != 1:
        gate = gate.contiguous()
    if up.stride(1) != 1:
        up = up.contiguous()
    num_tokens, intermediate_size = gate.shape
    out = torch.empty(num_tokens, intermediate_size, dtype=gate.dtype, device=gate.device)
    if num_tokens == 0:
        return out
    block = min(_COLUMNS_PER_PROGRAM, next_power_of_2(intermediate_size))
    grid = (num_tokens, triton.cdiv(intermediate_size, block))
    _silu_and_mul_launcher.launch(
        grid, gate, up, out, gate.stride(0), up.stride(0),
        INTERMEDIATE_SIZE=intermediate_size, BLOCK=block,
    )  # fmt: skip
    return out
