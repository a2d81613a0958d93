"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

# Keep torch to the two cores of the CI machine, and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
