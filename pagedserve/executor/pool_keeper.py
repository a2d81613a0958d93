"""`pagedserve kvpool`: creates one device's KV pool, registers it, and keeps it alive.

The keeper owns the pool memory so that an executor that exits (or crashes)
does not take the pool with it, and several executors can attach to one pool.
It registers the pool with the block manager, serves grpc health, and on
SIGTERM releases the memory and exits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve.common.config import option, require
from pagedserve.common.metrics import serve_metrics
from pagedserve.common.security import warn_if_exposed
from pagedserve.common.server import (
    add_health_and_reflection,
    aio_server,
    bind,
    serve_until_signal,
)
from pagedserve.common.service_main import run_service
from pagedserve.common.service_options import ServiceOptions
from pagedserve.executor.blockmgr_link import BlockManagerLink
from pagedserve.executor.kv_pool import PoolSpec, create_pool, dtype_from_name
from pagedserve.executor.model_config import load_model_config
from pagedserve.executor.model_store import resolve_model_path

_AUTO_CPU_GIB = 0.5
# Share of the GPU's free memory the pool takes when not told; the rest is for
# the executors' weights and activations.
_AUTO_GPU_FRACTION = 0.5


@dataclass
class PoolKeeperConfig(ServiceOptions):
    blockmgr: str = option("127.0.0.1:50061", "block manager address")
    model: str = option(
        "default", "model folder (sizes the pool); 'default' is SmolLM2-135M-Instruct"
    )
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda if available)")
    dtype: str = option(
        "auto", "KV dtype: float32, bfloat16, float16, or auto (float32 on cpu, bfloat16 on cuda)"
    )
    block_size: int = option(16, "tokens per KV block")
    num_blocks: int = option(0, "KV blocks; 0 sizes the pool from --kv-cache-gib")
    kv_cache_gib: float = option(0.0, "pool size in GiB when --num-blocks is 0; 0 means auto")
    num_swap_blocks: int = option(0, "host blocks for preemption by swapping (0: none)")
    host: str = option("127.0.0.1", "address for the health endpoint")
    port: int = option(50081, "port of the health endpoint (0 picks one)")

    def validate(self) -> None:
        require(
            self.block_size in (8, 16, 32, 64, 128), "block_size", "must be 8, 16, 32, 64 or 128"
        )
        require(self.num_blocks >= 0, "num_blocks", "must be >= 0")
        require(self.kv_cache_gib >= 0, "kv_cache_gib", "must be >= 0")
        require(self.num_swap_blocks >= 0, "num_swap_blocks", "must be >= 0")
        self.validate_service_options()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return dtype_from_name(name)


def _num_blocks(config: PoolKeeperConfig, spec: PoolSpec, device: torch.device) -> int:
    if config.num_blocks:
        return config.num_blocks
    if config.kv_cache_gib:
        budget_bytes = config.kv_cache_gib * 2**30
    elif device.type == "cuda":
        free_bytes, _total = torch.cuda.mem_get_info(device)
        budget_bytes = free_bytes * _AUTO_GPU_FRACTION
    else:
        budget_bytes = _AUTO_CPU_GIB * 2**30
    return max(1, int(budget_bytes // spec.bytes_per_block))


async def _serve(config: PoolKeeperConfig, log) -> None:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    model_path = resolve_model_path(config.model)
    model = load_model_config(model_path)
    spec = PoolSpec(
        model.num_layers, 0, config.block_size, model.num_kv_heads, model.head_dim, dtype
    )
    spec = spec.with_num_blocks(_num_blocks(config, spec, device))
    pool = create_pool(spec, device)
    swap_pool = (
        create_pool(spec.with_num_blocks(config.num_swap_blocks), torch.device("cpu"))
        if config.num_swap_blocks
        else None
    )
    link = BlockManagerLink(
        config.blockmgr, token=config.internal_token, credentials=config.channel_credentials()
    )
    try:
        link.wait_ready(timeout_s=60)
        pool_id = link.register_pool(
            spec,
            device.type,
            device.index or 0,
            pool.handle,
            model_key=model.name,
            num_swap_blocks=config.num_swap_blocks,
            swap_handle=swap_pool.handle if swap_pool else b"",
        )
        log.info(
            "KV pool %s: %s %s, %d blocks of %d tokens (%.2f GiB), %d swap blocks, model %s",
            pool_id,
            device,
            dtype,
            spec.num_blocks,
            spec.block_size_tokens,
            spec.num_blocks * spec.bytes_per_block / 2**30,
            config.num_swap_blocks,
            model.name,
        )
        server = aio_server(config.internal_token)
        health = add_health_and_reflection(server, ["pagedserve.kvpool"])
        warn_if_exposed(config.host, config.internal_token, "pool keeper")
        port = bind(server, config.host, config.port, config.server_credentials())
        serve_metrics(config.host, config.metrics_port, "kvpool")
        await server.start()
        log.info("pool keeper health on %s:%d", config.host, port)
        await serve_until_signal(server, lambda: None, grace_s=1.0)
        del health
    finally:
        pool.release()
        if swap_pool:
            swap_pool.release()
        link.close()


def main(argv: list[str] | None = None) -> int:
    return run_service("kvpool", PoolKeeperConfig, argv, __doc__.splitlines()[0], _serve)
