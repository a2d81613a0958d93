"""Kernel tests run the Triton kernels through Triton's interpreter on CPU.

triton.jit reads TRITON_INTERPRET when a kernel is decorated, that is when its
module is imported, so the variable is set here before the test modules import
pagedserve.kernels; if another test folder imported them first, they are
reloaded so that their kernels are decorated again in interpreter mode.
"""

import importlib
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    _KERNEL_MODULES = [
        "pagedserve.kernels.write_kv_cache",
        "pagedserve.kernels.copy_blocks",
        "pagedserve.kernels.paged_attention",
        "pagedserve.kernels.paged_decode_attention",
        "pagedserve.kernels",
    ]
    for name in _KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
