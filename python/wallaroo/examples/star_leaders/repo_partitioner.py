"""Consistent hashing of repository names onto the 10 state partitions.

Same shape as the original example's partitioner (an object with
``.partition(event)`` and a ``partitions`` list), written for Python 3 with
``hashlib`` instead of the ``hash_ring`` package.
"""

from __future__ import annotations

import bisect
import hashlib


class RepoPartitioner:
    """Maps ``event['repo']['name']`` to one of ``partitions`` via a hash ring."""

    def __init__(self, count: int = 10, replicas: int = 64) -> None:
        self.partitions = list(range(count))
        ring = []
        for key in self.partitions:
            for replica in range(replicas):
                ring.append((self._hash(f"{key}-{replica}"), key))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._keys = [key for _, key in ring]

    @staticmethod
    def _hash(text: str) -> int:
        return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big")

    def partition_of(self, repo_name: str) -> int:
        """The partition key of a repository name."""
        index = bisect.bisect(self._points, self._hash(repo_name)) % len(self._points)
        return self._keys[index]

    def partition(self, event: dict) -> int:
        """The partition key of an event (by its repository's name)."""
        return self.partition_of(event["repo"]["name"])
