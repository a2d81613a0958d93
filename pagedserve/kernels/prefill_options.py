"""The varlen attention kernel's launch options for prompt tiles
(paged_attention.py): tile sizes, warps, stages and the tile layout, chosen
from shapes alone (no device sync), as measured on an H100."""

import torch

# Longest sequence (the block table's capacity) from which the larger tiles
# pay (H100, bf16, head size 128; docs/kernels-notes.md v4).
_LONG_SEQUENCE_TOKENS = 4096
# Launch options by head size and sequence length; prefill_config picks one.
_WIDE_HEAD_CONFIG = {
    "BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2,
    "PAIRED_TILES": True, "NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": False,
}  # fmt: skip
_LONG_SEQUENCE_CONFIG = {
    "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3,
    "PAIRED_TILES": False, "NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": False,
}  # fmt: skip
# Query tiles through a descriptor (one bulk copy a tile instead of a pointer
# load per row; fewer registers and instructions): on an H100 b16 x 1k -1.7% to
# -4.5% by process, b1 x 2k -2%; with 128 x 128 tiles within +-1%, so those keep
# pointers (docs/kernels-notes.md v21).
_SHORT_SEQUENCE_CONFIG = {
    "BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3,
    "PAIRED_TILES": True, "NEW_KV_DESCRIPTORS": True, "QUERY_DESCRIPTOR": True,
}  # fmt: skip
# Float32 (head size <= 128) takes its dot in "tf32x3": three TF32 products per
# product (each operand split into a high and a low part), on the tensor cores,
# with float32's error. Measured on an H100 at the default model's shape
# (docs/kernels-notes.md, v12), prefill of 1,024 tokens: 35x faster than
# "ieee" (float32 FMAs, _backend.dot_precision's default), relative error
# against the reference in float64 3.1e-7, against 3.2e-7 ("ieee") and 3.3e-7
# (SDPA in float32). Its operand splits need more shared memory: 64 x 64 tiles
# in 2 stages at every length (128 x 128 tiles need 256 KB at head size 128
# even in 2 stages; an H100 has 227 KB a block).
# Query descriptors not timed in float32: off.
_FLOAT32_CONFIG = {
    **_SHORT_SEQUENCE_CONFIG, "num_stages": 2, "DOT_PRECISION": "tf32x3", "QUERY_DESCRIPTOR": False,
}  # fmt: skip


def prefill_config(head_dim: int, max_seq_len: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch options, from shapes alone (no device sync).

    Measured on an H100 (docs/kernels-notes.md v4): for sequences of 4k keys
    and more, 128 x 128 tiles with 8 warps, one query tile per program; below,
    64 x 64 tiles with 4 warps and paired query tiles, whose even programs
    leave no multiprocessor idle at the end of a short launch. Float32: see
    _FLOAT32_CONFIG.
    """
    if head_dim > 128:
        return dict(_WIDE_HEAD_CONFIG)
    if dtype == torch.float32:
        return dict(_FLOAT32_CONFIG)
    if max_seq_len >= _LONG_SEQUENCE_TOKENS:
        return dict(_LONG_SEQUENCE_CONFIG)
    return dict(_SHORT_SEQUENCE_CONFIG)


def prefill_table_widths(
    max_blocks: int, block_size: int, head_dim: int, dtype: torch.dtype
) -> list[int]:
    """Block-table widths (columns), ascending, at which prefill_config makes
    each of its choices for tables up to max_blocks wide: the widest table
    below the capacity where the choice changes, where it does at this head
    size and dtype, then max_blocks.

    prefill_config reads a table's capacity as the longest sequence. A CUDA
    graph fixes its table's width, so a graph as wide as the longest context
    would give a step of short sequences the long sequences' tiles (H100, an
    8k table: fresh prompts b16 x 1k +18%, b8 x 256 +43%; docs/kernels-notes.md
    v23); graphs captured at each width let a step take the narrowest that
    holds its sequences, and with it the options eager launches would take.
    """
    widest_short = (_LONG_SEQUENCE_TOKENS - 1) // block_size
    if not 0 < widest_short < max_blocks:
        return [max_blocks]
    short, long = (
        prefill_config(head_dim, n * block_size, dtype) for n in (widest_short, max_blocks)
    )
    return [max_blocks] if short == long else [widest_short, max_blocks]


def prefill_configs(head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Every launch configuration prefill_config can choose at this head size
    and cache dtype (kernels.precompile compiles each, with and without cached
    context)."""
    short, long = (prefill_config(head_dim, n, dtype) for n in (0, _LONG_SEQUENCE_TOKENS))
    return [short] if short == long else [short, long]
