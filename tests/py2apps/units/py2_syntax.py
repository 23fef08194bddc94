# Python 2 only: translated by fissix (full fixer set), then the compat layer.
import sys
from StringIO import StringIO


def printed():
    out = StringIO()
    print >>out, "a", 1,
    print >>out, "b"
    return out.getvalue()


def caught():
    try:
        raise ValueError, "boom"
    except ValueError, e:
        return str(e)


def literals():
    return 0755, 10L, ur"\d", `42`


def not_equal(a, b):
    return a <> b


def executed():
    namespace = {}
    exec "x = 6 * 7" in namespace
    return namespace["x"]


def dict_methods():
    d = {"a": 1, "b": 2}
    keys = d.keys()          # a list in Python 2 (fix_dict)
    keys.sort()
    return keys, sorted(d.iteritems()), d.has_key("a"), isinstance(d.items(), list)


def numbers():
    return [i for i in xrange(3)], unicode(5), isinstance(3, (int, long))


def first_byte(payload):
    return ord(payload[0])


def python_version():
    return sys.version_info[0]
