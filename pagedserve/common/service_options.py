"""Settings every service shares: metrics port, internal token, TLS of its port and of its calls.

Service config dataclasses inherit from ServiceOptions, so each field is one
flag and one PAGEDSERVE_* variable like their own fields (PAGEDSERVE_INTERNAL_TOKEN
is the same variable for every service, which is what `pagedserve up` relies on).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from pagedserve.common import security
from pagedserve.common.config import option, require


@dataclass
class ServiceOptions:
    metrics_port: int = option(0, "port of the Prometheus /metrics endpoint (0: off)")
    internal_token: str = option(
        "",
        "shared secret of the internal services: required on this port (health excepted; "
        "the gateway takes --public-token instead) and presented on internal calls",
    )
    tls_cert: str = option("", "PEM certificate: serve TLS on this service's port")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_client_ca: str = option("", "PEM CA: require client certificates signed by it (mTLS)")
    tls_ca: str = option("", "PEM CA verifying the internal services called (empty: plaintext)")
    tls_client_cert: str = option("", "PEM client certificate presented to internal services")
    tls_client_key: str = option("", "PEM private key of --tls-client-cert")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials of this service's port, None for plaintext; FileNotFoundError."""
        return security.server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for calling internal services, None for plaintext; FileNotFoundError."""
        return security.channel_credentials(self.tls_ca, self.tls_client_cert, self.tls_client_key)

    def validate_service_options(self) -> None:
        require(0 <= self.metrics_port <= 65535, "metrics_port", "must be in 0..65535")
        require(
            bool(self.tls_cert) == bool(self.tls_key),
            "tls_key",
            "give both --tls-cert and --tls-key",
        )
        require(
            bool(self.tls_client_cert) == bool(self.tls_client_key),
            "tls_client_key",
            "give both --tls-client-cert and --tls-client-key",
        )
        require(not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca", "needs --tls-cert")
