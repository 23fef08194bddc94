# Python 3 code: must behave exactly as without the compatibility layer.
import struct

try:
    unicode
except NameError:
    unicode = str
    PROBE = "python 3"
else:
    PROBE = "python 2"

try:
    text_type = basestring
except Exception:
    text_type = None


class Bag(object):
    def iteritems(self):
        return ["custom iteritems"]

    def has_key(self, key):
        return "custom has_key %s" % key

    def next(self):
        return "custom next"


def bag_methods():
    bag = Bag()
    return bag.iteritems(), bag.has_key("k"), bag.next()


def views():
    d = {"a": 1}
    keys = d.keys()
    items = d.items()
    d["b"] = 2
    # live views, not lists: they see the new key
    return type(keys).__name__, sorted(keys), type(items).__name__, len(items), type(range(3))


def missing_attribute():
    return {}.no_such_method


def no_iteritems_on_list():
    return [].iteritems


def bad_pack():
    return struct.pack(">I", "not a number")


def xrange(n):
    return "module-level xrange %d" % n


def uses_module_xrange():
    return xrange(2)


def local_ord(payload):
    ord = len
    return ord(payload)
