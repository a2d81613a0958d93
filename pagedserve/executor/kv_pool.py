"""The KV pool tensor: created by the pool keeper, attached to by executors.

One tensor per device holds every layer's K and V blocks:
    pool: [num_layers, 2 (K, V), num_blocks, block_size, num_kv_heads, head_dim]
so that pool[layer] is what one attention layer reads and one copy-on-write
launch can copy a block of every layer.

The creator exports a handle (bytes) that it registers with the block manager;
attachers rebuild the same memory from it. On CUDA the handle is a CUDA IPC
handle; on CPU it is the path of a file in shared memory (/dev/shm), mapped
MAP_SHARED by both sides. Everything above attach_pool() is the same on both.
"""

from __future__ import annotations

import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

POOL_LAYOUT = "layers,kv,blocks,block_size,kv_heads,head_dim"


@dataclass(frozen=True)
class PoolSpec:
    num_layers: int
    num_blocks: int
    block_size_tokens: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (
            self.num_layers,
            2,
            self.num_blocks,
            self.block_size_tokens,
            self.num_kv_heads,
            self.head_dim,
        )

    @property
    def bytes_per_block(self) -> int:
        elements = 2 * self.num_layers * self.block_size_tokens * self.num_kv_heads * self.head_dim
        return elements * dtype_size_bytes(self.dtype)

    def with_num_blocks(self, num_blocks: int) -> PoolSpec:
        return PoolSpec(
            self.num_layers,
            num_blocks,
            self.block_size_tokens,
            self.num_kv_heads,
            self.head_dim,
            self.dtype,
        )


def dtype_size_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def dtype_from_name(name: str) -> torch.dtype:
    """'float32' -> torch.float32; raises ValueError for names that are not dtypes."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_shm_dir() -> Path:
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))


@dataclass
class CreatedPool:
    """A pool as its keeper holds it: the tensor, its exported handle, and its cleanup."""

    tensor: torch.Tensor
    handle: bytes
    shm_path: Path | None

    def release(self) -> None:
        """Unlinks the shared-memory file (CPU); attached executors keep their mapping."""
        if self.shm_path is not None:
            self.shm_path.unlink(missing_ok=True)


def create_pool(spec: PoolSpec, device: torch.device, shm_dir: Path | None = None) -> CreatedPool:
    """Allocates the pool on device and exports it; raises RuntimeError if memory is short."""
    if device.type == "cuda":
        from torch.multiprocessing.reductions import reduce_tensor

        tensor = torch.zeros(spec.shape, dtype=spec.dtype, device=device)
        _rebuild, args = reduce_tensor(tensor)
        return CreatedPool(tensor, pickle.dumps(args), None)
    if device.type != "cpu":
        raise ValueError(f"device {device} is not supported (cpu or cuda)")
    folder = shm_dir or default_shm_dir()
    path = folder / f"pagedserve-kv-{uuid.uuid4().hex}"
    numel = 1
    for size in spec.shape:
        numel *= size
    with open(path, "wb") as handle:
        os.ftruncate(handle.fileno(), numel * dtype_size_bytes(spec.dtype))
    tensor = torch.from_file(str(path), shared=True, size=numel, dtype=spec.dtype).view(spec.shape)
    return CreatedPool(tensor, str(path).encode(), path)


def attach_pool(device_kind: str, handle: bytes, spec: PoolSpec) -> torch.Tensor:
    """Maps the pool that handle names into this process; raises if it is gone or misshapen."""
    if device_kind == "cuda":
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        tensor = rebuild_cuda_tensor(*pickle.loads(handle))
    elif device_kind == "cpu":
        path = Path(handle.decode())
        if not path.is_file():
            raise FileNotFoundError(f"KV pool {path} does not exist (is the pool keeper running?)")
        numel = path.stat().st_size // dtype_size_bytes(spec.dtype)
        tensor = torch.from_file(str(path), shared=True, size=numel, dtype=spec.dtype)
    else:
        raise ValueError(f"device kind {device_kind!r} is not supported")
    if tensor.numel() != torch.Size(spec.shape).numel():
        raise ValueError(f"KV pool holds {tensor.numel()} elements, expected shape {spec.shape}")
    return tensor.view(spec.shape)
