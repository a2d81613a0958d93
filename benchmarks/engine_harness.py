"""An executor's engine in this process for benchmarks: a block manager in its
own process on loopback (as deployed), a KV pool on the device, a model built
from a config with random weights (the weights are never read)."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.blockmgr_process import start_blockmgr_process, stop_blockmgr_process
from pagedserve.blockmgr.extents import DEFAULT_EXTENT_BLOCKS
from pagedserve.executor.blockmgr_link import BlockManagerLink
from pagedserve.executor.engine import Engine
from pagedserve.executor.kv_pool import CreatedPool, PoolSpec, create_pool
from pagedserve.executor.model_config import ModelConfig, load_model_config
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
    extent_blocks: int = DEFAULT_EXTENT_BLOCKS  # the block manager's placement runs


@dataclass
class EngineResources:
    """What an engine built here runs on, stopped together after it: the block
    manager's process, the engine's link to it, and a pool it created itself."""

    blockmgr: subprocess.Popen
    link: BlockManagerLink
    heartbeat_stop: threading.Event
    own_pool: CreatedPool | None

    def stop(self) -> None:
        self.heartbeat_stop.set()
        self.link.close()
        stop_blockmgr_process(self.blockmgr)
        if self.own_pool is not None:
            self.own_pool.release()  # the shared-memory file of a CPU pool


def pool_spec(config: ModelConfig, settings: EngineSettings) -> PoolSpec:
    """The KV pool of `settings.num_blocks` blocks for this model."""
    return PoolSpec(
        config.num_layers,
        settings.num_blocks,
        BLOCK_SIZE_TOKENS,
        config.num_kv_heads,
        config.head_dim,
        settings.dtype,
    )


def build_engine(
    model_folder: Path,
    device: torch.device,
    settings: EngineSettings,
    pool: CreatedPool | None = None,
):
    """(engine, EngineResources); keep the second referenced while the engine
    runs, and stop it after the engine. `pool`: one made by create_pool with
    pool_spec's shape, for runs one after another (an exported CUDA pool is
    never freed while its process lives, so each run creating its own leaks);
    the caller releases it."""
    config = load_model_config(model_folder)
    blockmgr, blockmgr_target = start_blockmgr_process(
        "--extent-blocks", str(settings.extent_blocks)
    )
    spec = pool_spec(config, settings)
    own_pool = None if pool else create_pool(spec, device)
    pool = pool or own_pool
    link = BlockManagerLink(blockmgr_target)
    pool_id = link.register_pool(spec, device.type, 0, pool.handle, "benchmark")
    registered = link.register_executor(pool_id)
    heartbeat_stop = link.start_heartbeat(registered.executor_id, 1.0)
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
    engine = Engine(scheduler, runner, config.vocab_size, config.max_context_tokens)
    return engine, EngineResources(blockmgr, link, heartbeat_stop, own_pool)
