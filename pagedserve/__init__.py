"""pagedserve: LLM serving with PagedAttention, split into gRPC services."""

__version__ = "0.1.0"
