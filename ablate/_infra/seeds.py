"""Seeds that stay the same across processes and machines."""

from __future__ import annotations

import hashlib

__all__ = ["model_key"]


def model_key(name: str) -> int:
    """A stable 64-bit number for a name, to seed random draws per architecture (Python's hash()
    is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
