# Consistent hashing of repository names onto the state partitions (the
# original used the hash_ring package; this is the same idea in plain Python 2).

import bisect
import hashlib


class RepoPartitioner(object):

    def __init__(self, count=10, replicas=64):
        self.partitions = range(count)
        ring = []
        for key in self.partitions:
            for replica in xrange(replicas):
                ring.append((self._hash("%d-%d" % (key, replica)), key))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._keys = [key for _, key in ring]

    @staticmethod
    def _hash(text):
        return long(hashlib.md5(text.encode("utf-8")).hexdigest()[:16], 16)

    def partition(self, event):
        name = event["repo"]["name"]
        index = bisect.bisect(self._points, self._hash(name)) % len(self._points)
        return self._keys[index]
