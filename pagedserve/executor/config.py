"""Settings of one executor process."""

from __future__ import annotations

from dataclasses import dataclass

from pagedserve.common.config import option, require
from pagedserve.common.service_options import ServiceOptions


@dataclass
class ExecutorConfig(ServiceOptions):
    blockmgr: str = option("127.0.0.1:50061", "block manager address")
    pool_id: str = option("", "KV pool to attach to; empty takes the only registered pool")
    model: str = option(
        "default", "model folder (HF Llama-family checkpoint); 'default' is SmolLM2-135M-Instruct"
    )
    dtype: str = option("auto", "weights dtype: auto (the pool's), float32, bfloat16, float16")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(50071, "port to listen on (0 picks one)")
    executor_id: str = option("", "id at the block manager; empty lets it assign one")
    max_num_seqs: int = option(256, "most sequences in one step")
    max_num_batched_tokens: int = option(
        2048, "most tokens in one forward pass (prefill chunk size)"
    )
    preemption_mode: str = option(
        "recompute", "when KV blocks run out: recompute or swap (needs kvpool --num-swap-blocks)"
    )
    startup_wait_s: float = option(
        60.0, "how long to wait for the block manager and the pool at start"
    )
    shutdown_grace_s: float = option(30.0, "on SIGTERM, how long in-flight requests may run on")
    warm_up: bool = option(
        True,
        "before serving, compile the kernels and run a few made-up requests through the engine",
    )
    cuda_graphs: bool = option(
        True,
        "on CUDA, capture steps in CUDA graphs before serving and replay them: decode "
        "steps of up to --max-num-seqs sequences (512 at most), other steps of up to "
        "--max-num-batched-tokens tokens (2048 at most); ignored on CPU",
    )

    def validate(self) -> None:
        require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            "must be auto, float32, bfloat16 or float16",
        )
        require(self.max_num_seqs >= 1, "max_num_seqs", "must be >= 1")
        require(self.max_num_batched_tokens >= 16, "max_num_batched_tokens", "must be >= 16")
        require(
            self.preemption_mode in ("recompute", "swap"),
            "preemption_mode",
            "must be recompute or swap",
        )
        require(
            self.max_num_batched_tokens >= self.max_num_seqs,
            "max_num_batched_tokens",
            "must be >= --max-num-seqs, so every running sequence can decode each step",
        )
        require(self.startup_wait_s > 0, "startup_wait_s", "must be > 0")
        require(self.shutdown_grace_s >= 0, "shutdown_grace_s", "must be >= 0")
        self.validate_service_options()
