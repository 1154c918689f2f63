"""Reproducible randomness: every draw comes from a generator keyed by (run seed, purpose, round, client).

Because no draw depends on which process runs a client, or on what ran before it, results do not depend on the
number of processes and a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*keys: object) -> int:
    """A 63-bit seed that depends only on ``keys`` (stable across processes, platforms and Python runs)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(*keys: object) -> torch.Generator:
    """A CPU generator seeded from ``keys``; see :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(*keys))
