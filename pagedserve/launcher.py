"""`pagedserve up`: every service as its own OS process, started in order and supervised.

Order of start: block manager, pool keeper, executor(s), gateway; each must
report SERVING on grpc health before the next starts. With --tls-cert every
port serves TLS, and the services verify each other with --tls-ca (and, with
--tls-client-ca, present --tls-client-cert to each other: mutual TLS on the
internal ports; the gateway's public port asks clients for no certificate). If any process exits,
the others are stopped and `up` exits non-zero. On SIGTERM or Ctrl-C the
services stop in reverse order (gateway first, so no new request arrives while
executors drain; block manager and pool keeper last).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pagedserve.common import security
from pagedserve.common.config import flag_name, log_config, option, parse_config, require
from pagedserve.common.logs import setup_logging
from pagedserve.common.service_options import ServiceOptions
from pagedserve.common.tracing import init_tracing, shutdown_tracing

log = logging.getLogger("pagedserve.up")


@dataclass
class UpConfig(ServiceOptions):
    """`up`'s settings; the TLS fields (ServiceOptions') go to every service."""

    host: str = option("127.0.0.1", "address every service binds to")
    port: int = option(50051, "gateway port")
    blockmgr_port: int = option(50061, "block manager port")
    executor_port: int = option(50071, "first executor's port; executor i listens on this + i")
    kvpool_port: int = option(50081, "pool keeper's health port")
    num_executors: int = option(1, "executor processes attached to the one pool")
    model: str = option("default", "model folder; 'default' is SmolLM2-135M-Instruct")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto")
    dtype: str = option(
        "auto", "float32, bfloat16, float16, or auto (float32 on cpu, bfloat16 on cuda)"
    )
    block_size: int = option(16, "tokens per KV block")
    num_blocks: int = option(0, "KV blocks (0: from --kv-cache-gib)")
    kv_cache_gib: float = option(0.0, "KV pool size in GiB (0: auto)")
    num_swap_blocks: int = option(0, "host swap blocks for preemption by swapping")
    preemption_mode: str = option("recompute", "when KV blocks run out: recompute or swap")
    max_num_seqs: int = option(256, "most sequences per executor step")
    max_num_batched_tokens: int = option(2048, "most tokens per executor forward pass")
    startup_timeout_s: float = option(600.0, "how long each service may take to become healthy")
    shutdown_grace_s: float = option(30.0, "how long in-flight requests may run on after SIGTERM")
    metrics_port: int = option(
        0,
        "base of the /metrics ports: gateway on it, blockmgr +1, kvpool +2, executor i +3+i (0: off)",
    )
    internal_token: str = option(
        "", "shared secret of the internal services (given to each through its environment)"
    )
    public_token: str = option("", "token clients must present to the gateway")
    max_queued_requests: int = option(0, "gateway: requests in flight beyond this are refused")
    max_prompt_tokens: int = option(0, "gateway: longest prompt accepted (0: the context length)")
    max_requests_per_connection: int = option(
        0, "gateway: requests in flight per client connection (0: no limit)"
    )
    tls_cert: str = option("", "PEM certificate every service serves TLS with (gateway included)")
    tls_ca: str = option("", "PEM CA the services verify each other's certificates with")
    tls_client_ca: str = option(
        "", "PEM CA: the internal ports require client certificates signed by it (mutual TLS)"
    )
    tls_client_cert: str = option("", "PEM client certificate the services present to each other")

    def validate(self) -> None:
        require(self.num_executors >= 1, "num_executors", "must be >= 1")
        require(self.startup_timeout_s > 0, "startup_timeout_s", "must be > 0")
        self.validate_service_options()
        require(
            bool(self.tls_cert) == bool(self.tls_ca),
            "tls_ca",
            "give --tls-ca with --tls-cert: the services call each other over TLS",
        )
        require(
            bool(self.tls_client_ca) == bool(self.tls_client_cert),
            "tls_client_cert",
            "give --tls-client-cert with --tls-client-ca: internal ports then require one",
        )

    def tls_server_flags(self, internal: bool) -> list[str]:
        """A service's flags for its own port; internal ports also ask for client certificates."""
        client_ca = self.tls_client_ca if internal else ""
        return flags(**_set(tls_cert=self.tls_cert, tls_key=self.tls_key, tls_client_ca=client_ca))

    def tls_client_flags(self) -> list[str]:
        """A service's flags for calling the internal services."""
        return flags(
            **_set(
                tls_ca=self.tls_ca,
                tls_client_cert=self.tls_client_cert,
                tls_client_key=self.tls_client_key,
            )
        )


def _set(**settings: str) -> dict[str, str]:
    return {name: value for name, value in settings.items() if value}


def wait_healthy(
    address: str,
    process: subprocess.Popen,
    timeout_s: float,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Polls grpc health until SERVING; raises RuntimeError if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{' '.join(process.args[3:5])} exited with code {process.returncode}"
            )
        if _is_serving(address, credentials):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{address} not healthy after {timeout_s:.0f} s")


def _is_serving(address: str, credentials: grpc.ChannelCredentials | None) -> bool:
    """One health check on a connection of its own. A service binds its port
    before it starts serving: a TLS handshake begun in between waits for gRPC's
    20 s connect timeout, so each attempt gets a fresh connection instead."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with security.open_channel(address, credentials, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def flags(**settings) -> list[str]:
    """flags(max_num_seqs=8) -> ["--max-num-seqs", "8"]: the services' own flag names."""
    return [item for name, value in settings.items() for item in (flag_name(name), str(value))]


class Supervisor:
    def __init__(self, config: UpConfig):
        self.config = config
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self._stopping = False
        self._credentials = config.channel_credentials()  # FileNotFoundError names the file
        # Secrets go to the services through their environment, not their command lines.
        self._environment = dict(os.environ)
        for name, value in (
            ("PAGEDSERVE_INTERNAL_TOKEN", config.internal_token),
            ("PAGEDSERVE_PUBLIC_TOKEN", config.public_token),
        ):
            if value:
                self._environment[name] = value

    def metrics_port(self, offset: int) -> int:
        return self.config.metrics_port + offset if self.config.metrics_port else 0

    def start(self, name: str, args: list[str], port: int) -> None:
        command = [sys.executable, "-m", "pagedserve.cli", *args]
        # Own process group: Ctrl-C reaches `up` alone, which then stops services in order.
        process = subprocess.Popen(command, start_new_session=True, env=self._environment)
        self.processes.append((name, process))
        address = f"{self.config.host}:{port}"
        wait_healthy(address, process, self.config.startup_timeout_s, self._credentials)
        log.info("%s is up on %s:%d (pid %d)", name, self.config.host, port, process.pid)

    def start_all(self) -> None:
        c = self.config
        blockmgr = f"{c.host}:{c.blockmgr_port}"
        self.start(
            "blockmgr",
            [
                "blockmgr",
                *flags(host=c.host, port=c.blockmgr_port, metrics_port=self.metrics_port(1)),
                *c.tls_server_flags(internal=True),
            ],
            c.blockmgr_port,
        )
        kvpool_flags = flags(
            blockmgr=blockmgr,
            model=c.model,
            device=c.device,
            dtype=c.dtype,
            block_size=c.block_size,
            num_blocks=c.num_blocks,
            kv_cache_gib=c.kv_cache_gib,
            num_swap_blocks=c.num_swap_blocks,
            host=c.host,
            port=c.kvpool_port,
            metrics_port=self.metrics_port(2),
        )
        kvpool_flags += c.tls_server_flags(internal=True) + c.tls_client_flags()
        self.start("kvpool", ["kvpool", *kvpool_flags], c.kvpool_port)
        executor_addresses = []
        for index in range(c.num_executors):
            port = c.executor_port + index
            executor_flags = flags(
                blockmgr=blockmgr,
                model=c.model,
                host=c.host,
                port=port,
                max_num_seqs=c.max_num_seqs,
                max_num_batched_tokens=c.max_num_batched_tokens,
                preemption_mode=c.preemption_mode,
                shutdown_grace_s=c.shutdown_grace_s,
                metrics_port=self.metrics_port(3 + index),
            )
            executor_flags += c.tls_server_flags(internal=True) + c.tls_client_flags()
            self.start(f"executor-{index}", ["executor", *executor_flags], port)
            executor_addresses.append(f"{c.host}:{port}")
        gateway_flags = flags(
            host=c.host,
            port=c.port,
            executors=",".join(executor_addresses),
            model=c.model,
            shutdown_grace_s=c.shutdown_grace_s,
            metrics_port=self.metrics_port(0),
            max_queued_requests=c.max_queued_requests,
            max_prompt_tokens=c.max_prompt_tokens,
            max_requests_per_connection=c.max_requests_per_connection,
        )
        gateway_flags += c.tls_server_flags(internal=False) + c.tls_client_flags()
        self.start("gateway", ["gateway", *gateway_flags], c.port)

    def watch(self) -> int:
        """Returns when a service exits on its own (1) or a stop was asked for (0)."""
        while not self._stopping:
            for name, process in self.processes:
                if process.poll() is not None:
                    log.error(
                        "%s exited with code %s; stopping the others", name, process.returncode
                    )
                    return 1
            time.sleep(0.2)
        return 0

    def request_stop(self, *_args) -> None:
        self._stopping = True

    def stop_all(self) -> None:
        """Gateway first, block manager last; each gets the grace period, then SIGKILL."""
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.config.shutdown_grace_s + 5)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in time; killing it", name)
                    process.kill()
                    process.wait()
            log.info("%s stopped", name)


def main(argv: list[str] | None = None) -> int:
    setup_logging("up")
    config = parse_config(UpConfig, argv, "pagedserve up", __doc__.splitlines()[0])
    log_config(log, config)
    init_tracing("up")
    try:
        supervisor = Supervisor(config)
    except FileNotFoundError as error:
        log.error("start failed: %s", error)
        return 1
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    code = 0
    try:
        supervisor.start_all()
        log.info("serving on %s:%d; Ctrl-C stops every service", config.host, config.port)
        code = supervisor.watch()
    except RuntimeError as error:
        log.error("start failed: %s", error)
        code = 1
    finally:
        supervisor.stop_all()
        shutdown_tracing()
    return code
