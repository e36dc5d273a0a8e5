"""Which partition a profile belongs to: a stable hash, the same in every process and release.

Python's ``hash()`` is salted per process, so it must never be used for this. Changing this
function re-homes every profile; it is part of the wire contract.
"""

from __future__ import annotations

import hashlib


def partition_for(profile_id: str, partitions: int) -> int:
    digest = hashlib.blake2b(profile_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions
