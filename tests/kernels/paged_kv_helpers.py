"""Test helpers: random paged caches with shuffled block tables, dense attention."""

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (atol, rtol) per dtype. fp32 leaves room for tf32 dots on a GPU.
TOLERANCE = {
    torch.float32: (2e-3, 2e-3),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

# Block table padding: ids far past the pool, so a read of one faults or shows.
PADDING_BLOCK_ID = 1 << 28


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """All finite (NaN poison never passes), then close at the dtype's tolerance."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "output has NaN/inf: some element unwritten?"
    atol, rtol = TOLERANCE[actual.dtype]
    torch.testing.assert_close(
        actual.double(), expected.double().to(actual.device), atol=atol, rtol=rtol
    )


def random_tensor(*shape: int, dtype: torch.dtype, device=DEVICE) -> torch.Tensor:
    """Normal values, never zeros (zeros hide unwritten outputs)."""
    return torch.randn(*shape, device=device).to(dtype)


def make_paged_kv(
    seq_lens: list[int],
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    spare_blocks: int = 3,
):
    """Random K/V per sequence, scattered into a pool through shuffled block tables.

    Returns key_cache, value_cache [num_blocks, block_size, num_kv_heads, head_dim],
    block_tables [num_seqs, max_blocks] int32 (padding = PADDING_BLOCK_ID),
    and the dense per-sequence keys and values ([seq_len, num_kv_heads, head_dim]).
    Blocks nobody owns hold random values too, so reading a wrong block shows.
    """
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    max_blocks = max(blocks_per_seq) + 2  # always some padding columns
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = random_tensor(*shape, dtype=dtype)
    value_cache = random_tensor(*shape, dtype=dtype)
    order = torch.randperm(num_blocks).tolist()
    block_tables = torch.full((len(seq_lens), max_blocks), PADDING_BLOCK_ID, dtype=torch.int32)
    keys, values = [], []
    for seq, seq_len in enumerate(seq_lens):
        key = random_tensor(seq_len, num_kv_heads, head_dim, dtype=dtype)
        value = random_tensor(seq_len, num_kv_heads, head_dim, dtype=dtype)
        for j in range(blocks_per_seq[seq]):
            block_id = order.pop()
            block_tables[seq, j] = block_id
            first, last = j * block_size, min(seq_len, (j + 1) * block_size)
            key_cache[block_id, : last - first] = key[first:last]
            value_cache[block_id, : last - first] = value[first:last]
        keys.append(key)
        values.append(value)
    return key_cache, value_cache, block_tables.to(DEVICE), keys, values


def dense_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    keys: list[torch.Tensor],  # per sequence [seq_len, num_kv_heads, head_dim]
    values: list[torch.Tensor],
    q_lens: list[int],
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim] float64
    """Float64 causal attention over contiguous per-sequence K/V, head by head."""
    num_heads = query.shape[1]
    outputs = []
    first = 0
    for key, value, q_len in zip(keys, values, q_lens, strict=True):
        seq_len, num_kv_heads, _ = key.shape
        group_size = num_heads // num_kv_heads
        q = query[first : first + q_len].double()
        first += q_len
        out = torch.empty_like(q)
        for head in range(num_heads):
            k = key[:, head // group_size].double()  # [seq_len, head_dim]
            v = value[:, head // group_size].double()
            scores = q[:, head] @ k.T * scale  # [q_len, seq_len]
            for i in range(q_len):
                visible = seq_len - q_len + i + 1
                weights = torch.softmax(scores[i, :visible], dim=0)
                out[i, head] = weights @ v[:visible]
        outputs.append(out)
    return torch.cat(outputs)
