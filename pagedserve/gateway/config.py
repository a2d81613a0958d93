"""Settings of the gateway process."""

from __future__ import annotations

from dataclasses import dataclass

from pagedserve.common.config import option, require
from pagedserve.common.service_options import ServiceOptions


@dataclass
class GatewayConfig(ServiceOptions):
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(50051, "port to listen on (0 picks one)")
    executors: str = option("127.0.0.1:50071", "executor addresses, comma separated")
    model: str = option("default", "model folder, for its tokenizer; must be the executors' model")
    max_n: int = option(16, "largest sampling.n accepted")
    max_beam_width: int = option(16, "largest sampling.beam_width accepted")
    startup_wait_s: float = option(300.0, "how long to wait for the executors at start")
    shutdown_grace_s: float = option(30.0, "on SIGTERM, how long in-flight requests may run on")
    max_queued_requests: int = option(
        0, "requests in flight beyond this get RESOURCE_EXHAUSTED at once (0: no limit)"
    )
    max_prompt_tokens: int = option(0, "longest prompt accepted, in tokens (0: the context length)")
    max_requests_per_connection: int = option(
        0, "requests one client connection may have in flight (0: no limit)"
    )
    public_token: str = option(
        "", "token clients must present (authorization: Bearer <token>); empty: none"
    )

    def executor_addresses(self) -> list[str]:
        return [address.strip() for address in self.executors.split(",") if address.strip()]

    def validate(self) -> None:
        require(bool(self.executor_addresses()), "executors", "name at least one executor")
        require(self.max_n >= 1, "max_n", "must be >= 1")
        require(self.max_beam_width >= 1, "max_beam_width", "must be >= 1")
        require(self.max_queued_requests >= 0, "max_queued_requests", "must be >= 0")
        require(self.max_prompt_tokens >= 0, "max_prompt_tokens", "must be >= 0")
        require(
            self.max_requests_per_connection >= 0, "max_requests_per_connection", "must be >= 0"
        )
        self.validate_service_options()
