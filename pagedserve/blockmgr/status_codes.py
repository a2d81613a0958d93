"""The one table between core errors and gRPC status codes.

The service maps a raised error to its code; the client maps a received code
back to the same error class, so callers on both sides catch the same types.
"""

from __future__ import annotations

import grpc

from pagedserve.blockmgr.errors import (
    AlreadyExistsError,
    BlockManagerError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

STATUS_BY_ERROR: dict[type[BlockManagerError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
}
ERROR_BY_STATUS = {code: error_class for error_class, code in STATUS_BY_ERROR.items()}


def status_for(error: BlockManagerError) -> grpc.StatusCode:
    """The status code of a core error (UNKNOWN for the bare base class)."""
    return STATUS_BY_ERROR.get(type(error), grpc.StatusCode.UNKNOWN)


def error_for(code: grpc.StatusCode, message: str) -> BlockManagerError | None:
    """The core error a status code stands for, or None for transport-level codes
    (UNAVAILABLE, DEADLINE_EXCEEDED, ...) that the caller should see as they are."""
    error_class = ERROR_BY_STATUS.get(code)
    return None if error_class is None else error_class(message)
