"""Prefix-cache keys: chained block hashes and what a cached block remembers.

A full block's hash is a 128-bit BLAKE2b digest of its parent block's hash,
its own token ids and an extra key (model_key plus the request's cache salt),
so equal hashes mean equal prefixes. Lookups do not trust the hash alone: a
cached block stores its tokens, its extra key and its parent's hash, and a
candidate is accepted only if all three match. A collision at one position can
therefore never serve another prompt's KV; the parent chain is as strong as the
digest (a collision needs ~2**64 blocks). Tests inject weak hash functions to
show the verification at work.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable

# Hash of (parent block hash or None for the first block, token ids, extra key).
ChainHashFn = Callable[[bytes | None, tuple[int, ...], str], bytes]

_FIRST_BLOCK_PARENT = b"\x00" * 16


def chain_hash(parent_hash: bytes | None, token_ids: tuple[int, ...], extra_key: str) -> bytes:
    """BLAKE2b-128 of parent hash, tokens (uint32 each) and extra key."""
    digest = hashlib.blake2b(
        _FIRST_BLOCK_PARENT if parent_hash is None else parent_hash, digest_size=16
    )
    digest.update(array("I", token_ids).tobytes())
    digest.update(extra_key.encode())
    return digest.digest()


def extra_key_for(model_key: str, cache_salt: str) -> str:
    """The extra key mixed into every block hash of a sequence."""
    return f"{model_key}\x00{cache_salt}"


class CacheEntry:
    """What the prefix cache knows about one registered block."""

    __slots__ = ("block_hash", "parent_hash", "token_ids", "extra_key")

    def __init__(
        self,
        block_hash: bytes,
        parent_hash: bytes | None,
        token_ids: tuple[int, ...],
        extra_key: str,
    ) -> None:
        self.block_hash = block_hash
        self.parent_hash = parent_hash
        self.token_ids = token_ids
        self.extra_key = extra_key

    def matches(
        self, parent_hash: bytes | None, token_ids: tuple[int, ...], extra_key: str
    ) -> bool:
        """True when this entry holds exactly these tokens after this parent."""
        return (
            self.token_ids == token_ids
            and self.parent_hash == parent_hash
            and self.extra_key == extra_key
        )
