"""Every variant kernels.precompile launches compiles for an H100 (sm_90),
here on the CPU: the interpreter the other kernel tests use runs code that
the GPU compiler rejects (tests/kernels/sm90_compile.py says how)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sm90_compile.py")


@pytest.mark.timeout(600)
def test_every_precompiled_variant_compiles_for_sm90():
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=580,
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = re.search(r"compiled (\d+) variants for sm_90", result.stdout)
    # Three shapes, each with its prefill, decode-row, decode, merge, cache
    # write and block copy variants.
    assert compiled and int(compiled.group(1)) >= 30, result.stdout
