"""An executor's engine in this process for benchmarks: a block manager on
loopback, a KV pool on the device, a model built from a config with random
weights (the weights are never read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pagedserve.blockmgr.config import BlockManagerConfig
from pagedserve.blockmgr.service import serve
from pagedserve.executor.blockmgr_link import BlockManagerLink
from pagedserve.executor.engine import Engine
from pagedserve.executor.kv_pool import PoolSpec, create_pool
from pagedserve.executor.model_config import load_model_config
from pagedserve.executor.model_loader import load_model
from pagedserve.executor.model_runner import ModelRunner
from pagedserve.executor.scheduler import Scheduler, SchedulerConfig

BLOCK_SIZE_TOKENS = 16


@dataclass
class EngineSettings:
    num_blocks: int = 8192
    dtype: torch.dtype = torch.float32
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048


def build_engine(model_folder: Path, device: torch.device, settings: EngineSettings):
    """(engine, block manager server); keep the server referenced while the engine runs."""
    config = load_model_config(model_folder)
    blockmgr = serve(BlockManagerConfig(port=0))
    spec = PoolSpec(
        config.num_layers,
        settings.num_blocks,
        BLOCK_SIZE_TOKENS,
        config.num_kv_heads,
        config.head_dim,
        settings.dtype,
    )
    pool = create_pool(spec, device)
    link = BlockManagerLink(f"127.0.0.1:{blockmgr.port}")
    pool_id = link.register_pool(spec, device.type, 0, pool.handle, "benchmark")
    registered = link.register_executor(pool_id)
    link.start_heartbeat(registered.executor_id, 1.0)
    model = load_model(config, None, device, settings.dtype)
    scheduler = Scheduler(
        SchedulerConfig(
            settings.max_num_seqs,
            settings.max_num_batched_tokens,
            BLOCK_SIZE_TOKENS,
            settings.num_blocks,
            settings.num_blocks // 100,
        ),
        registered.executor_id,
        link.step,
    )
    runner = ModelRunner(model, pool.tensor, BLOCK_SIZE_TOKENS)
    return Engine(scheduler, runner, config.vocab_size, config.max_context_tokens), blockmgr
