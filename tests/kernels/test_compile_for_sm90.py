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


@pytest.fixture(scope="module")
def compile_output() -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=580,
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.timeout(600)
def test_every_precompiled_variant_compiles_for_sm90(compile_output):
    compiled = re.search(r"compiled (\d+) variants for sm_90", compile_output)
    # Three shapes, each with its prefill, decode-row, decode, merge, cache
    # write and block copy variants.
    assert compiled and int(compiled.group(1)) >= 30, compile_output


@pytest.mark.timeout(600)
def test_short_prompt_tiles_keep_two_programs_per_multiprocessor(compile_output):
    """The prefill kernel's 64-row tiles (prompts under 4k tokens) fit two
    programs in an H100 multiprocessor's shared memory (at bf16 and head size
    128, exactly: two take all 228 KB). 16 more bytes once left room for one,
    and b16 x 1k prefill took 1.5x as long on the card (docs/kernels-notes.md,
    v18): a change that fails this needs timing on the GPU before it lands."""
    prefill = [
        line
        for line in compile_output.splitlines()
        if line.startswith("variant _paged_attention_kernel")
        and "'BLOCK_M': 64," in line
        and "'DECODE_ROWS_ONLY': False" in line
    ]
    assert len(prefill) >= 4, compile_output  # each shape, fresh and cached
    for line in prefill:
        programs = int(re.search(r"programs_per_multiprocessor=(\d+)", line).group(1))
        assert programs >= 2, line
