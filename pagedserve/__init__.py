"""pagedserve: LLM serving with PagedAttention, split into gRPC services."""

from pagedserve.common.grpc_core import prefer_low_latency_io

# Before any module of the package imports grpc (see common/grpc_core.py).
prefer_low_latency_io()

__version__ = "0.1.0"
