"""Fixtures and settings shared by every test folder."""

from __future__ import annotations

import os

# Keep torch to the two cores of the CI machine, and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _set_triton_mode() -> None:
    """Without a GPU the kernel tests run Triton's interpreter, which must be chosen
    before anything imports triton (transformers may, while the e2e tests collect)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_set_triton_mode()
