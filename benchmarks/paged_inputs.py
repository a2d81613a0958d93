"""Paged inputs for the kernel benchmarks: the timed shape (32 query / 8 KV
heads x 128, bf16, blocks of 16 tokens), random caches with block tables over
shuffled or served blocks, and SDPA's contiguous copy of the same values."""

import torch
import triton

from pagedserve.kernels.paged_attention_reference import gather_sequence_kv

DEVICE = torch.device("cuda")
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, DTYPE = 32, 8, 128, 16, torch.bfloat16
# Rotate among copies of the inputs until they span this many bytes (L2 is 50 MB).
ROTATE_BYTES = 512 * 1024 * 1024


def make_paged(
    seq_lens, num_kv_heads, head_dim, dtype, copies=1, spare_blocks=7, served=None, device=DEVICE
):
    """Random caches; `copies` block tables over disjoint shuffled blocks, or,
    with `served` = (tables, pool blocks) from served_tables, those tables,
    each copy in a pool of its own."""
    blocks_per_seq = [triton.cdiv(n, BLOCK_SIZE) for n in seq_lens]
    needed = sum(blocks_per_seq)
    pool_blocks = served[1] if served else needed
    num_blocks = pool_blocks * copies + spare_blocks
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, device=device, dtype=dtype)
    value_cache = torch.randn(shape, device=device, dtype=dtype)
    if served:
        ids = torch.tensor([i for table in served[0] for i in table], dtype=torch.int32)
        order = torch.cat([ids + copy * pool_blocks for copy in range(copies)]).to(device)
    else:
        order = torch.randperm(num_blocks, device=device).to(torch.int32)
    width = max(blocks_per_seq) + 3
    tables = []
    for copy in range(copies):
        table = torch.full((len(seq_lens), width), 1 << 28, dtype=torch.int32, device=device)
        used = order[copy * needed : (copy + 1) * needed].split(blocks_per_seq)
        for seq, ids in enumerate(used):
            table[seq, : len(ids)] = ids
        tables.append(table)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return key_cache, value_cache, tables, lens


def new_tokens_kv(key_cache, value_cache, table, seqs):
    """The new tokens' K and V ([num_tokens, kv_heads, head_dim] each), copied
    from the cache, for seqs = [(seq_len, q_len), ...]."""
    keys, values = [], []
    for seq, (seq_len, q_len) in enumerate(seqs):
        keys.append(gather_sequence_kv(key_cache, table[seq], seq_len)[seq_len - q_len :])
        values.append(gather_sequence_kv(value_cache, table[seq], seq_len)[seq_len - q_len :])
    return torch.cat(keys), torch.cat(values)


def contiguous_kv(cache, table, num_tokens):
    """[batch, kv_heads, num_tokens, head_dim]: the first num_tokens keys (or
    values) of each sequence of `table`, contiguous, as SDPA takes them."""
    blocks = cache[table[:, : triton.cdiv(num_tokens, BLOCK_SIZE)].long()]  # [b, n, bs, h, d]
    return blocks.flatten(1, 2)[:, :num_tokens].transpose(1, 2).contiguous()


def in_float64(args: tuple) -> tuple:
    """A kernel's arguments with every floating-point tensor in float64, for
    the references' high-precision run."""
    return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
