# Compiles as Python 3; uses Python 2 dict methods and builtins (like the
# star leaders' repo_metadata.py).


class Tally(object):
    def __init__(self):
        self.counts = {}
        self.initials = {}

    def add(self, name, n, initial):
        if self.counts.has_key(name):
            self.counts[name] += n
        else:
            self.counts[name] = n
        self.initials[name] = unichr(initial)

    def total(self):
        return long(sum(self.counts.itervalues()))

    def names(self):
        return sorted(self.counts.iterkeys())

    def report(self):
        parts = []
        for name, n in sorted(self.counts.iteritems()):
            assert isinstance(name, basestring)
            parts.append(u"%s=%d" % (name, n))
        return u",".join(parts)


def squares(n):
    return [i * i for i in xrange(n)]


INTERACTIVE = callable(raw_input)
