"""swap_blocks: host and device pools, against a block-by-block loop."""

import pytest
import torch
from paged_kv_helpers import DEVICE, random_tensor

from pagedserve.kernels import swap_blocks


def expected_pool(src_pool, dst_pool, src_ids, dst_ids):
    expected = dst_pool.clone()
    for s, d in zip(src_ids.tolist(), dst_ids.tolist(), strict=True):
        expected[:, :, d] = src_pool[:, :, s].to(expected.device)
    return expected


DIRECTIONS = [pytest.param("cpu", "cpu", id="host-to-host")]
if DEVICE.type == "cuda":
    DIRECTIONS += [
        pytest.param("cpu", "cuda", id="host-to-device"),
        pytest.param("cuda", "cpu", id="device-to-host"),
    ]


@pytest.mark.parametrize("src_device,dst_device", DIRECTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_matches_loop(src_device, dst_device, dtype):
    block_shape = (4, 3, 32)  # block_size, num_kv_heads, head_dim
    src_pool = random_tensor(2, 2, 7, *block_shape, dtype=dtype, device=src_device)
    dst_pool = random_tensor(2, 2, 5, *block_shape, dtype=dtype, device=dst_device)
    src_ids = torch.tensor([6, 0, 3], dtype=torch.int64, device=src_device)
    dst_ids = torch.tensor([1, 4, 2], dtype=torch.int64, device=dst_device)
    expected = expected_pool(src_pool, dst_pool, src_ids, dst_ids)
    swap_blocks(src_pool, dst_pool, src_ids, dst_ids)
    if dst_pool.is_cuda:
        torch.cuda.synchronize()
    assert torch.equal(dst_pool, expected)


def test_swap_rejects_mismatched_pools():
    src_pool = random_tensor(2, 2, 3, 4, 1, 8, dtype=torch.float32, device="cpu")
    dst_pool = random_tensor(2, 2, 3, 4, 1, 16, dtype=torch.float32, device="cpu")
    ids = torch.tensor([0])
    with pytest.raises(ValueError):
        swap_blocks(src_pool, dst_pool, ids, ids)
