"""Kernel tests run the Triton kernels through Triton's interpreter on CPU.

Triton reads TRITON_INTERPRET when triton is first imported (its standard
library) and when each kernel is decorated. pagedserve.kernels._backend sets it
before importing triton on a machine without CUDA, so the order in which test
folders import things does not matter; this file sets it too, for the case
where nothing imported the kernels yet, and checks that it took effect.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton.language.standard as _triton_standard

    assert type(_triton_standard.zeros).__name__ == "InterpretedFunction", (
        "triton was imported before TRITON_INTERPRET=1 was set; import pagedserve.kernels "
        "(or set TRITON_INTERPRET=1) before anything imports triton"
    )
