"""Decode-kernel experiments: variant partition kernels timed against the
package's (v7) and torch SDPA on a contiguous cache, in one harness.

Run from the repository root on a CUDA machine:
    python3 -m benchmarks.decode_experiments [--variants NAME,...] [--rounds N] [--out DIR]

Each module holds one experiment's kernel and its VARIANTS (name -> function
with the signature of `launch.launch_decode`'s callers); docs/kernels-notes.md
records each one's prediction and outcome.
"""
