# Compiles as Python 3; Python 2 idioms that fail on Python 3 at run time.
import struct
import struct as st
import sys
from struct import pack, pack_into
from struct import pack as p2


def dict_methods(d):
    return (
        sorted(d.iteritems()),
        sorted(d.iterkeys()),
        sorted(d.itervalues()),
        d.has_key("a"),
        d.has_key("zz"),
        sorted(d.viewkeys()),
        sorted(d.viewitems()),
        sorted(dict.iteritems(d)),
    )


def builtins_():
    return (
        list(xrange(3)),
        unicode(b"caf\xc3\xa9"),
        unicode(7),
        long("12"),
        isinstance(b"x", basestring),
        isinstance(u"x", basestring),
        isinstance(3, basestring),
        isinstance(u"x", unicode),
        unichr(233),
        reduce(lambda a, b: a * b, [1, 2, 3, 4]),
        intern("abc"),
        cmp(1, 2),
        callable(raw_input),
    )


def first_byte(payload):
    return ord(payload[0]), ord("A"), ord(b"B")


def packed(text):
    buf = bytearray(8)
    pack_into(">4s", buf, 0, text)
    return (
        struct.pack(">H3s", 7, text),
        st.pack("2s", text),
        pack("4s", text),
        p2("c", "z"),
        struct.Struct(">3s").pack(text),
        bytes(buf),
        struct.unpack(">H", b"\x00\x05"),
    )


def iterator_next():
    it = iter([1, 2])
    return it.next(), it.next()


MAXINT = sys.maxint


def shadowed(xrange=None):
    # a local name is never replaced
    return xrange


class Holder(object):
    unicode = "class attribute"
    value = unicode
