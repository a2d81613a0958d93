"""Diagnostic: the package's kernel over the same values, blocks placed in runs.

The harness's block tables are shuffled: each of a sequence's blocks lies at a
random place in the pool. Here the same values are copied into a pool where a
sequence's blocks come in runs of R consecutive blocks (a run = R x 16 tokens),
the runs at random places; the kernel and its launch are the package's.
R = the table's width puts each sequence's blocks in one run. `grouped-R`
keeps each run's blocks in one R-block region but in random order inside it
(locality of the region without consecutive blocks). `served-E` places them
as the block manager does while serving, with extents of E blocks. If a variant
matches SDPA where the shuffled one does not, the gap is the memory system's
cost of scattered blocks, not the kernel's structure.
"""

from __future__ import annotations

import re

import torch

from benchmarks.served_tables import served_block_tables, served_tables_in_parallel
from pagedserve.blockmgr.extents import DEFAULT_GROUP_EXTENTS
from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton

# Copies for one cache at a time; entries hold their inputs, so that no
# address in a key is reused while the entry lives.
_cached: dict[tuple, tuple] = {}


def _relaid(key_cache, value_cache, block_tables, layout: tuple, new_block_ids):
    """The cache's values copied to the blocks `new_block_ids(num_seqs, width)`
    gives ([num_seqs, width] ids, and the new pool's size), cached per layout."""
    key = (key_cache.data_ptr(), block_tables.data_ptr(), *layout)
    if key not in _cached:
        if any(entry[3] is not key_cache for entry in _cached.values()):
            _cached.clear()
        new_ids, num_new = new_block_ids(*block_tables.shape)
        # Padding entries may hold anything: clamped, their copies are never read.
        old_ids = block_tables.long().clamp(0, key_cache.shape[0] - 1).reshape(-1)
        new_shape = (num_new, *key_cache.shape[1:])
        new_keys = torch.zeros(new_shape, dtype=key_cache.dtype, device=key_cache.device)
        new_values = torch.zeros_like(new_keys)
        new_keys[new_ids.reshape(-1).long()] = key_cache[old_ids]
        new_values[new_ids.reshape(-1).long()] = value_cache[old_ids]
        _cached[key] = (new_keys, new_values, new_ids, key_cache, block_tables)
    return _cached[key][:3]


def _in_runs(key_cache, value_cache, block_tables, run_blocks: int | None, scrambled: bool = False):
    device = block_tables.device

    def new_block_ids(num_seqs: int, width: int):
        run = width if run_blocks is None else min(run_blocks, width)
        runs_per_seq = -(-width // run)
        # Run slots in random order; a sequence's j-th block is block j % run
        # of its (j // run)-th run.
        order = torch.randperm(num_seqs * runs_per_seq, device=device)
        seq_index = torch.arange(num_seqs, device=device)[:, None]
        position = torch.arange(width, device=device)[None, :]
        slot = order[seq_index * runs_per_seq + position // run]
        offset = (position % run).expand(num_seqs, width)
        if scrambled:  # a random order of the run's offsets, per run
            keys = torch.rand(num_seqs * runs_per_seq, run, device=device)
            within = keys.argsort(dim=1)  # [runs, run]
            offset = within[seq_index * runs_per_seq + position // run, position % run]
        return (slot * run + offset).to(torch.int32), num_seqs * runs_per_seq * run

    layout = ("runs", run_blocks, scrambled)
    return _relaid(key_cache, value_cache, block_tables, layout, new_block_ids)


# A variant over served tables names its extent and, unless the default, its
# group: "v7-served-64 ...", "v25-served-64x1 ...". Without a group the block
# manager's default applies: 8 since notes v25, so "v7-served-64" in the notes
# up to v24 was what "v25-served-64x1" is now.
_SERVED_NAME = re.compile(r"-served-(\d+)(?:x(\d+))?")
_served_layouts: dict[tuple[int, int, int, int], tuple[list[list[int]], int]] = {}


def _served(
    num_seqs: int, width: int, extent_blocks: int, group_extents: int
) -> tuple[list[list[int]], int]:
    key = (num_seqs, width * 16, extent_blocks, group_extents)
    if key not in _served_layouts:
        _served_layouts[key] = served_block_tables(
            num_seqs, width * 16, 16, extent_blocks, group_extents=group_extents
        )
    return _served_layouts[key]


def prepare_served_tables(shapes: list[tuple[int, int]], names: list[str]) -> None:
    """Builds the served tables of every timed shape at once, on the host's cores."""
    placements = {
        (int(m.group(1)), int(m.group(2) or DEFAULT_GROUP_EXTENTS))
        for m in map(_SERVED_NAME.search, names)
        if m
    }
    keys = [(batch, context, *p) for batch, context in shapes for p in sorted(placements)]
    _served_layouts.update(served_tables_in_parallel(keys, 16))


def _in_served_tables(
    key_cache, value_cache, block_tables, extent_blocks: int, group_extents=DEFAULT_GROUP_EXTENTS
):
    """Each sequence's blocks where the block manager placed them in a served
    workload (benchmarks/served_tables.py), in a pool 1.25x the blocks."""

    def new_block_ids(num_seqs: int, width: int):
        tables, num_blocks = _served(num_seqs, width, extent_blocks, group_extents)
        ids = torch.tensor(tables, dtype=torch.int32, device=block_tables.device)
        return ids, num_blocks

    layout = ("served", extent_blocks, group_extents)
    return _relaid(key_cache, value_cache, block_tables, layout, new_block_ids)


def _decode_in_runs(run_blocks: int | None, scrambled: bool = False):
    def run(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        keys, values, table = _in_runs(key_cache, value_cache, block_tables, run_blocks, scrambled)
        return paged_decode_attention_triton(query, keys, values, table, seq_lens, scale, out=out)

    return run


def over_served_tables(decode, extent_blocks: int = 64, group_extents=DEFAULT_GROUP_EXTENTS):
    """A variant that runs `decode` (a variant's signature) over the same
    values laid out as the block manager's tables (`_in_served_tables`)."""

    def run(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        keys, values, table = _in_served_tables(
            key_cache, value_cache, block_tables, extent_blocks, group_extents
        )
        return decode(query, keys, values, table, seq_lens, scale, out)

    return run


def _decode_in_served_tables(
    extent_blocks: int, config=None, partition_tokens=None, group_extents=DEFAULT_GROUP_EXTENTS
):
    def decode(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        return paged_decode_attention_triton(
            query, key_cache, value_cache, block_tables, seq_lens, scale, out=out,
            config=config, partition_tokens=partition_tokens,
        )  # fmt: skip

    return over_served_tables(decode, extent_blocks, group_extents)


VARIANTS = {
    "v7-runs-4": _decode_in_runs(4),
    "v7-runs-16": _decode_in_runs(16),
    "v7-runs-64": _decode_in_runs(64),
    "v7-grouped-64": _decode_in_runs(64, scrambled=True),
    "v7-ordered-blocks": _decode_in_runs(None),
}
VARIANT_EXTENTS = {"v7-served-16": 16, "v7-served-64": 64}
VARIANTS.update({name: _decode_in_served_tables(e) for name, e in VARIANT_EXTENTS.items()})
# Launch options over served tables: does another tile or partition size gain
# once blocks come in runs?
SERVED_LAUNCHES = {
    "n64 w4 s4": ({"BLOCK_N": 64, "num_warps": 4, "num_stages": 4}, None),
    "n64 w4 s3": ({"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}, None),
    "n32 w2 s6": ({"BLOCK_N": 32, "num_warps": 2, "num_stages": 6}, None),
    "n128 w8 s3": ({"BLOCK_N": 128, "num_warps": 8, "num_stages": 3}, None),
    "n128 w4 s3": ({"BLOCK_N": 128, "num_warps": 4, "num_stages": 3}, None),
    "n128 w4 s2": ({"BLOCK_N": 128, "num_warps": 4, "num_stages": 2}, None),
    "part512": (None, 512),
    "part1024": (None, 1024),
    "part2048": (None, 2048),
    "part8192": (None, 8192),
    "part16384": (None, 16384),
}
for _name, (_config, _partition) in SERVED_LAUNCHES.items():
    VARIANTS[f"v7-served-64 {_name}"] = _decode_in_served_tables(64, _config, _partition)
