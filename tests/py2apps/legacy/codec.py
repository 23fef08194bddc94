# Compiles as Python 3. Python 2 byte-string idioms: ord() of an item of
# the payload, struct.pack with str for an "s" field.
import struct
from struct import pack

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    fields = bs.split()
    return {"name": unicode(fields[0]), "count": fields[1], "initial": ord(bs[0])}


@wallaroo.encoder
def encode(out):
    # One record: a 4-byte big-endian length, then "NAME TOTAL INITIAL REPORT".
    text = "%s %d %d %s" % (out["name"], out["total"], out["initial"], out["report"])
    body = pack("%ds" % len(text), text)
    return struct.pack(">I", len(body)) + body
