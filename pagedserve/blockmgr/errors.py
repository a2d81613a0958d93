"""Typed errors of the block manager core.

The core raises only these; `service.py` maps each class to one gRPC status
code in a single table, so a new error kind is a new class plus one line there.
Every error leaves the manager's state exactly as it was before the call.
"""

from __future__ import annotations


class BlockManagerError(Exception):
    """Base class: a request the block manager refused as a whole."""


class NotFoundError(BlockManagerError):
    """An executor, pool or sequence named in the request does not exist
    (never existed, was freed, or its executor's lease expired)."""


class AlreadyExistsError(BlockManagerError):
    """A sequence id that must be new is already live for this executor."""


class FailedPreconditionError(BlockManagerError):
    """The request is well formed but the named object is in the wrong state
    (e.g. appending to a swapped-out sequence, computed count going backwards)."""


class InvalidArgumentError(BlockManagerError):
    """The request is malformed regardless of state (empty token list, a prompt
    longer than the whole pool, an op with no kind set, bad pool geometry)."""


def op_error(
    error_class: type[BlockManagerError], op_index: int, message: str
) -> BlockManagerError:
    """Builds an error whose message names the failing op, e.g. `ops[3].append: ...`."""
    return error_class(f"ops[{op_index}]: {message}")
