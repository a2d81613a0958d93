"""Diagnostic: the package's kernel over the same values, blocks placed in runs.

The harness's block tables are shuffled: each of a sequence's blocks lies at a
random place in the pool. Here the same values are copied into a pool where a
sequence's blocks come in runs of R consecutive blocks (a run = R x 16 tokens),
the runs at random places; the kernel and its launch are the package's.
R = the table's width puts each sequence's blocks in one run. `grouped-R`
keeps each run's blocks in one R-block region but in random order inside it
(locality of the region without consecutive blocks). If a variant
matches SDPA where the shuffled one does not, the gap is the memory system's
cost of scattered blocks, not the kernel's structure.
"""

from __future__ import annotations

import torch

from pagedserve.kernels.paged_decode_attention import paged_decode_attention_triton

# Copies for one cache at a time; entries hold their inputs, so that no
# address in a key is reused while the entry lives.
_cached: dict[tuple, tuple] = {}


def _in_runs(key_cache, value_cache, block_tables, run_blocks: int | None, scrambled: bool = False):
    key = (key_cache.data_ptr(), block_tables.data_ptr(), run_blocks, scrambled)
    if key not in _cached:
        if any(entry[3] is not key_cache for entry in _cached.values()):
            _cached.clear()
        num_seqs, width = block_tables.shape
        run = width if run_blocks is None else min(run_blocks, width)
        runs_per_seq = -(-width // run)
        # Run slots in random order; a sequence's j-th block is block j % run
        # of its (j // run)-th run.
        order = torch.randperm(num_seqs * runs_per_seq, device=block_tables.device)
        seq_index = torch.arange(num_seqs, device=block_tables.device)[:, None]
        position = torch.arange(width, device=block_tables.device)[None, :]
        slot = order[seq_index * runs_per_seq + position // run]
        offset = (position % run).expand(num_seqs, width)
        if scrambled:  # a random order of the run's offsets, per run
            keys = torch.rand(num_seqs * runs_per_seq, run, device=block_tables.device)
            within = keys.argsort(dim=1)  # [runs, run]
            offset = within[seq_index * runs_per_seq + position // run, position % run]
        new_ids = (slot * run + offset).to(torch.int32)
        # Padding entries may hold anything: clamped, their copies are never read.
        old_ids = block_tables.long().clamp(0, key_cache.shape[0] - 1).reshape(-1)
        num_new = num_seqs * runs_per_seq * run
        new_shape = (num_new, *key_cache.shape[1:])
        new_keys = torch.zeros(new_shape, dtype=key_cache.dtype, device=key_cache.device)
        new_values = torch.zeros_like(new_keys)
        new_keys[new_ids.reshape(-1).long()] = key_cache[old_ids]
        new_values[new_ids.reshape(-1).long()] = value_cache[old_ids]
        _cached[key] = (new_keys, new_values, new_ids, key_cache, block_tables)
    return _cached[key][:3]


def _decode_in_runs(run_blocks: int | None, scrambled: bool = False):
    def run(query, key_cache, value_cache, block_tables, seq_lens, scale, out):
        keys, values, table = _in_runs(key_cache, value_cache, block_tables, run_blocks, scrambled)
        return paged_decode_attention_triton(query, keys, values, table, seq_lens, scale, out=out)

    return run


VARIANTS = {
    "v7-runs-4": _decode_in_runs(4),
    "v7-runs-16": _decode_in_runs(16),
    "v7-runs-64": _decode_in_runs(64),
    "v7-grouped-64": _decode_in_runs(64, scrambled=True),
    "v7-ordered-blocks": _decode_in_runs(None),
}
