"""Which implementation runs: Triton where it can, the torch reference elsewhere.

Triton is an optional dependency (the `kernels` extra). Where it is missing the
kernel modules still import, so that their torch references serve the CPU path:
`triton.jit` becomes the identity and `tl.constexpr` a placeholder annotation.
"""

import os
import types

import torch

# Without CUDA, Triton can only run through its interpreter, and the
# interpreter must be chosen before triton is first imported (its standard
# library is decorated at import time). So a CUDA-less process that imports
# these kernels gets interpreter mode unless it set TRITON_INTERPRET itself.
# The torch references stay the default there; this only makes the Triton
# path (PAGEDSERVE_KERNELS=triton, the tests) work whatever imported us first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only install: references only.
    HAS_TRITON = False

    def _identity_jit(fn=None, **_options):
        # Both spellings: @triton.jit and @triton.jit(do_not_specialize=[...]).
        return fn if fn is not None else (lambda inner: inner)

    triton = types.SimpleNamespace(jit=_identity_jit, cdiv=lambda a, b: -(-a // b))
    tl = types.SimpleNamespace(constexpr=None)

# "auto" (default): Triton for CUDA tensors, torch otherwise.
# "triton": always Triton (CPU tensors need TRITON_INTERPRET=1 set before the
#           kernel modules are imported; the tests do this).
# "torch": always the reference.
KERNELS_ENV_VAR = "PAGEDSERVE_KERNELS"


def use_triton(tensor: torch.Tensor) -> bool:
    """True when the op on `tensor` should run the Triton kernel."""
    mode = os.environ.get(KERNELS_ENV_VAR, "auto")
    if mode == "torch" or not HAS_TRITON:
        return False
    if mode == "triton":
        return True
    return tensor.is_cuda


def dot_in_fp32(kernel, dtype: torch.dtype) -> bool:
    """Whether a kernel must upcast bf16 operands before tl.dot.

    Triton's interpreter multiplies bf16 operands of tl.dot as their raw 16-bit
    patterns (seen with triton 3.9), so under the interpreter, and only there,
    the kernels take the bf16 dot in fp32. Compiled kernels keep the bf16 dot.
    """
    return dtype == torch.bfloat16 and type(kernel).__name__ == "InterpretedFunction"


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision by default: full float32 ("ieee", float32 FMAs)
    for float32 caches, so that a float32 model gives the same tokens on the
    GPU as on the CPU ("tf32" would round operands to 10 mantissa bits);
    16-bit operands are exact either way. A launch configuration may name
    another: float32 prefill takes "tf32x3" (prefill_options._FLOAT32_CONFIG)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


__all__ = [
    "HAS_TRITON",
    "KERNELS_ENV_VAR",
    "dot_in_fp32",
    "dot_precision",
    "next_power_of_2",
    "tl",
    "triton",
    "use_triton",
]


def rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim] with each token's heads side by side (the
    token stride is free): x itself when it already is, else a contiguous copy."""
    _, num_heads, head_dim = x.shape
    if x.stride(2) == 1 and x.stride(1) == head_dim:
        return x
    return x.contiguous()
